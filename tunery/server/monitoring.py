"""`GET /metrics` (admin key) and the middleware that counts error responses by status and code."""

from __future__ import annotations

import json

from fastapi import Request, Response

from tunery.platform.metrics import CONTENT_TYPE, ServerMetrics


def metrics_response(metrics: ServerMetrics) -> Response:
    return Response(content=metrics.render(), media_type=CONTENT_TYPE)


class ErrorCounter:
    """ASGI middleware: every 4xx/5xx response increments `tunery_errors{status, code}` (code from its JSON)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400:
                self.metrics.errors.labels(str(status), _error_code(message.get("body", b""))).inc()
                status = 0  # count once, on the first body chunk
            await send(message)

        return await self.app(scope, receive, watch)


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"] or "none")
    except (ValueError, KeyError, TypeError):
        return "none"


def state_metrics(request: Request) -> ServerMetrics:
    return request.app.state.tunery.metrics
