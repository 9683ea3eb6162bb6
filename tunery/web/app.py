"""The console's FastAPI sub-application, mounted at /ui by the server: pages, static files, errors.

It knows the server's state (engine, store) and renders; what it shows comes from the same
library functions the CLI and the HTTP API call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.errors import TuneryError
from tunery.server.errors import ApiError, error_headers, scrub_paths, tunery_error_status
from tunery.web.auth import Forbidden, SignInRequired, Viewer
from tunery.web.session import console_secret

log = logging.getLogger("tunery.web")
UI = "/ui"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _when(epoch) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(epoch))) + " UTC" if epoch else ""


def _filesize(size) -> str:
    size = float(size or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


templates.env.filters.update(duration=_duration, when=_when, filesize=_filesize)
# Scripts only from our own files; inline styles allowed for the chart library's layout.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'")


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str
    admin_only: bool = False


NAV: list[NavItem] = [
    NavItem("jobs", "Jobs", f"{UI}/jobs"),
    NavItem("new-job", "New job", f"{UI}/jobs/new"),
    NavItem("datasets", "Datasets", f"{UI}/datasets"),
    NavItem("models", "Models", f"{UI}/models"),
    NavItem("playground", "Playground", f"{UI}/playground"),
    NavItem("feedback", "Feedback review", f"{UI}/feedback", admin_only=True),
    NavItem("keys", "Keys", f"{UI}/keys", admin_only=True),
]


def nav_for(who: Viewer) -> list[NavItem]:
    return [item for item in NAV if who.admin or not item.admin_only]


def render(request: Request, name: str, who: Viewer | None, *, active: str = "", status_code: int = 200,
           **context) -> HTMLResponse:
    """Render a page with the layout's context: the viewer, its CSRF token and the navigation."""
    base = {"viewer": who, "csrf": who.csrf if who else context.pop("csrf", ""), "active": active,
            "nav": nav_for(who) if who else [], "ui": UI}
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def _is_script_call(request: Request) -> bool:
    return bool(request.headers.get("hx-request")) or "application/json" in request.headers.get("accept", "")


def error_page(request: Request, status: int, message: str, hint: str | None = None,
               headers: dict[str, str] | None = None):
    if _is_script_call(request):
        return JSONResponse({"error": {"message": message, "hint": hint}}, status_code=status, headers=headers)
    response = render(request, "error.html", None, status_code=status, status=status, message=message, hint=hint)
    response.headers.update(headers or {})
    return response


def _install_error_pages(console: FastAPI) -> None:
    @console.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired):
        if _is_script_call(request):
            return JSONResponse({"error": {"message": "sign in first"}}, status_code=401,
                                headers={"HX-Redirect": f"{UI}/login"})
        return RedirectResponse(f"{UI}/login", status_code=303)

    @console.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return error_page(request, 403, exc.message)

    @console.exception_handler(TuneryError)
    async def _tunery_error(request: Request, exc: TuneryError):
        return error_page(request, tunery_error_status(exc), scrub_paths(exc.message),
                          scrub_paths(exc.hint) if exc.hint else None, headers=error_headers(exc))

    @console.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_page(request, exc.status, exc.message)

    @console.exception_handler(RequestValidationError)
    @console.exception_handler(ValidationError)
    async def _invalid(request: Request, exc):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "form", "query"))
        return error_page(request, 400, f"{where + ': ' if where else ''}{first.get('msg', 'invalid value')}")

    @console.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("console error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
        return error_page(request, 500, "Something went wrong on the server; the details are in its log.")

    @console.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        messages = {404: "There is no such page.", 405: "That action is not allowed here."}
        return error_page(request, exc.status_code, messages.get(exc.status_code, "Request refused."))


def create_console(state) -> FastAPI:
    """The console app over a server's state; `tunery.server.app.create_app` mounts it at /ui."""
    from tunery.web import (
        pages_auth,
        pages_datasets,
        pages_feedback,
        pages_jobs,
        pages_keys,
        pages_models,
        pages_playground,
    )

    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.tunery = state
    console.state.console_secret = console_secret()
    console.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _install_error_pages(console)
    for module in (pages_auth, pages_keys, pages_playground, pages_datasets, pages_models, pages_jobs,
                   pages_feedback):
        console.include_router(module.router)

    @console.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(f"{UI}/static"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return console
