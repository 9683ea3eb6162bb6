"""The one place that turns exceptions into OpenAI-shaped error JSON with a 4xx (or 5xx) status.

Messages come from our own exception texts or validation locations, never from request values,
so keys, file paths and tracebacks are never echoed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.errors import (
    ConfigError,
    ModelError,
    NotFoundError,
    ResourceError,
    RetrievalError,
    StoreError,
    TuneryError,
)

log = logging.getLogger("tunery.server")
_PATH = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:)?/[\w.\-]+(?:/[\w.\-]*)+")


def scrub_paths(text: str) -> str:
    """Library messages name files for the CLI user; a remote client gets `<path>` instead."""
    return _PATH.sub("<path>", text)


REQUEST_BODY_KEY = "tunery.request_body"  # where the body-size middleware leaves the (bounded) body


def request_values(request: Request) -> set[str]:
    """Every string value the client sent: path and query parameters and the JSON body's strings."""
    values = {str(v) for v in request.path_params.values()} | set(request.query_params.values())
    body = request.scope.get(REQUEST_BODY_KEY)
    if body:
        try:
            stack = [json.loads(body)]
        except ValueError:
            stack = []
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                values.add(item)
            elif isinstance(item, dict):  # keys are field names, not values
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return {v for v in values if v}


GIVEN = "(the given value)"


def without_request_values(message: str, values: set[str], names: Collection[str] = ()) -> str:
    """Library messages name values for the CLI user; a remote client never gets its own values back
    (they may be 5,000 characters, or another user's id): quoted ones, and long ones anywhere, go; so
    do shorter ones wherever they stand as a word of the message, unless they are a plain lowercase
    word ("user", "production") that our own wording may use; NAME of a NAME@VERSION too. `names` (the
    path's parameters, such as a registry reference) go as words whatever they look like."""
    words = {part for v in values for part in (v, v.partition("@")[0])
             if len(part) >= 4 and not (part.isascii() and part.isalpha() and part.islower())}
    words |= {part for v in names for part in (v, v.partition("@")[0]) if len(part) >= 2}
    for value in sorted(values | words, key=len, reverse=True):
        message = message.replace(repr(value), GIVEN)
        if len(value) >= 16:
            message = message.replace(value, GIVEN)
        elif value in words:
            message = re.sub(rf"(?<![\w.-]){re.escape(value)}(?![\w-])", GIVEN, message)
    return message


class ApiError(Exception):
    """An error raised by the server layer itself (auth, caps, body size)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


STORE_RETRY_AFTER_S = 5  # a lock held past the busy timeout, or a database restarting, clears in seconds


def error_headers(exc: TuneryError) -> dict[str, str]:
    """Retry-After on a database failure: the request was fine, the store was not (yet)."""
    return {"Retry-After": str(STORE_RETRY_AFTER_S)} if isinstance(exc, StoreError) else {}


CONFLICTS = ("gate_failed", "promotion_conflict", "loop_running")  # the request was fine; the state refused it


def tunery_error_status(exc: TuneryError) -> int:
    if isinstance(exc, NotFoundError) or exc.code == "model_not_found":
        return 404
    if exc.code in CONFLICTS:
        return 409
    if isinstance(exc, ResourceError | StoreError):  # the server's own failure, not the request's
        return 503
    if isinstance(exc, RetrievalError):  # requests name served models, never index folders: the server's index
        return 503
    if isinstance(exc, ConfigError | ModelError):
        return 400
    return 400


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown or unsupported field"
    count = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {message}{count}" if param else f"{message}{count}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(TuneryError)
    async def _tunery_error(request: Request, exc: TuneryError):
        status = tunery_error_status(exc)
        type_ = {404: "not_found_error", 409: "conflict_error", 503: "server_error"}.get(status, "invalid_request_error")
        if isinstance(exc, StoreError):  # the cause is logged; the client learns only that the store failed
            log.error("store error: %s", exc.message)
            message = "the server's database is unavailable; retry later"
        else:
            said = exc.hint and exc.hint in exc.message  # a key's "did you mean" is in both
            message = scrub_paths(exc.message + (f" ({exc.hint})" if exc.hint and not said else ""))
        message = without_request_values(message, request_values(request),
                                         {str(v) for v in request.path_params.values()})
        response = error_body(message, type_, exc.code, exc.param)
        gate = getattr(exc, "public_report", None)
        if gate is not None:  # a refused promotion: the gates' numbers, no paths
            response["gate"] = gate
        return JSONResponse(response, status_code=status, headers=error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = _describe_validation(exc)
        return error_response(400, message, "invalid_request_error", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        messages = {404: "no such route", 405: "method not allowed for this route"}
        return error_response(exc.status_code, messages.get(exc.status_code, "request refused"),
                              "invalid_request_error", code=str(exc.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.error("unexpected server error: %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal server error", "server_error")
