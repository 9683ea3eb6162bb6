"""The FastAPI app: thin routes over the handlers, a body-size guard, and `create_app(settings)`.

Routes hold no SQL and no torch; nothing heavy runs at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import Depends, FastAPI, Request

from tunery.platform.metrics import ServerMetrics
from tunery.server import monitoring, serving_admin, serving_chat, serving_embeddings, serving_registry
from tunery.server.auth import Caller, require_admin, require_key
from tunery.server.errors import REQUEST_BODY_KEY, error_body, install_error_handlers
from tunery.server.platform_routes import add_platform_routes
from tunery.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CreateKeyRequest,
    EmbeddingRequest,
    FeedbackRequest,
    LoadAdapterRequest,
)
from tunery.server.settings import ServerSettings
from tunery.server.state import ServerState, build_state
from tunery.store.requests import prune_completions

log = logging.getLogger("tunery.server")
PRUNE_EVERY_S = 3600
# Uploads stream to disk under their own cap (--max-upload-mb): the API's and the console's.
UPLOAD_PATHS = frozenset({"/v1/files", "/ui/datasets", "/ui/datasets/check"})


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get a 413 before any handler reads them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS):
            return await self.app(scope, receive, send)  # uploads stream to disk under their own cap
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        messages, size = [], 0
        while True:  # buffer the (bounded) body so chunked uploads are counted too
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body"):
                break

        scope[REQUEST_BODY_KEY] = b"".join(m.get("body", b"") for m in messages)  # for the no-echo rule in errors.py

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(error_body(f"request body larger than {self.max_bytes} bytes", "invalid_request_error",
                                     "body_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def state_of(request: Request) -> ServerState:
    return request.app.state.tunery


def create_app(settings: ServerSettings, state: ServerState | None = None) -> FastAPI:
    """Build the engine and the store (unless `state` is given) and the routes over them."""
    state = state or build_state(settings)
    state.metrics = ServerMetrics(state.store, state.engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        retention_days = settings.log_retention_days
        pruner = asyncio.create_task(_prune_forever(state, retention_days)) if retention_days else None
        try:
            yield
        finally:
            if pruner is not None:
                pruner.cancel()
            state.engine.stop()

    app = FastAPI(title="tunery", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunery = state
    install_error_handlers(app)
    _add_routes(app)
    add_platform_routes(app)
    _mount_console(app, state)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(monitoring.ErrorCounter, metrics=state.metrics)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request):
        return {"status": "ok", "models": len(state_of(request).model_names())}

    @app.get("/metrics")
    async def metrics(request: Request, _: Caller = Depends(require_admin)):
        return monitoring.metrics_response(state_of(request).metrics)

    @app.get("/v1/registry/models")
    async def registry_list(request: Request, _: Caller = Depends(require_admin)):
        return serving_registry.list_versions(state_of(request))

    @app.get("/v1/registry/models/{ref}")
    async def registry_show(ref: str, request: Request, _: Caller = Depends(require_admin)):
        return serving_registry.show_version(state_of(request), ref)

    @app.post("/v1/registry/promote")
    def registry_promote(body: serving_registry.PromoteRequest, request: Request,
                         caller: Caller = Depends(require_admin)):
        # a sync route: the gates generate with both versions in a worker thread, not on the event loop
        return serving_registry.promote(state_of(request), body, caller)

    @app.post("/v1/registry/models/{name}/rollback")
    async def registry_rollback(name: str, body: serving_registry.RollbackRequest, request: Request,
                                caller: Caller = Depends(require_admin)):
        return serving_registry.rollback(state_of(request), name, body, caller)

    @app.get("/v1/models")
    async def models(request: Request, caller: Caller = Depends(require_key)):
        return serving_admin.list_models(state_of(request), caller)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request, caller: Caller = Depends(require_key)):
        return serving_admin.get_model(state_of(request), model_id, caller)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request, caller: Caller = Depends(require_key)):
        await asyncio.to_thread(state_of(request).use_fine_tuned, body.model, caller)
        body.model = await asyncio.to_thread(state_of(request).use_registered, body.model)
        return await serving_chat.create_chat_completion(state_of(request), body, caller, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, caller: Caller = Depends(require_key)):
        await asyncio.to_thread(state_of(request).use_fine_tuned, body.model, caller)
        body.model = await asyncio.to_thread(state_of(request).use_registered, body.model)
        return await serving_chat.create_completion(state_of(request), body, caller, request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request, caller: Caller = Depends(require_key)):
        await asyncio.to_thread(state_of(request).use_fine_tuned, body.model, caller)
        body.model = await asyncio.to_thread(state_of(request).use_registered, body.model)
        return await serving_embeddings.create_embeddings(state_of(request), body)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, request: Request, caller: Caller = Depends(require_key)):
        return serving_admin.submit_feedback(state_of(request), body, caller)

    @app.get("/v1/adapters")
    async def adapters(request: Request, _: Caller = Depends(require_admin)):
        return serving_admin.list_adapters(state_of(request))

    @app.post("/v1/adapters")
    async def load_adapter(body: LoadAdapterRequest, request: Request, _: Caller = Depends(require_admin)):
        return await serving_admin.load_adapter(state_of(request), body)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str, request: Request, _: Caller = Depends(require_admin)):
        return await serving_admin.unload_adapter(state_of(request), name)

    @app.get("/v1/keys")
    async def keys(request: Request, _: Caller = Depends(require_admin)):
        return serving_admin.list_api_keys(state_of(request))

    @app.post("/v1/keys")
    async def create_key(body: CreateKeyRequest, request: Request, _: Caller = Depends(require_admin)):
        return serving_admin.create_api_key(state_of(request), body)

    @app.delete("/v1/keys/{key_id}")
    async def revoke_key(key_id: str, request: Request, _: Caller = Depends(require_admin)):
        return serving_admin.revoke_api_key(state_of(request), key_id)


def _mount_console(app: FastAPI, state: ServerState) -> None:
    # The web console is an entry point beside this API; imported here so the API stays importable alone.
    from tunery.web.app import UI, create_console

    app.mount(UI, create_console(state))


async def _prune_forever(state: ServerState, retention_days: float) -> None:
    while True:
        try:
            deleted = await asyncio.to_thread(prune_completions, state.store, retention_days)
            if deleted:
                log.info("pruned %d logged completions older than %s days", deleted, retention_days)
        except Exception as exc:  # keep serving; try again next round
            log.warning("log pruning failed: %s", type(exc).__name__)
        await asyncio.sleep(PRUNE_EVERY_S)
