"""Sign in with an API key or a one-time link from `tunery ui-login`, sign out, the start page."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from tunery.store import list_keys, verify_key
from tunery.web.app import NAV, UI, render
from tunery.web.auth import CSRF_FIELD, Viewer, posted_viewer, viewer
from tunery.web.session import (
    ANONYMOUS,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL_S,
    check_csrf,
    consume_login_link,
    csrf_token,
    issue_session,
)

router = APIRouter()


def _cookie_args(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https", "path": UI}


def signed_in(request: Request, key_id: str) -> RedirectResponse:
    """Redirect to the start page with a fresh session cookie (and no sign-in form cookie)."""
    response = RedirectResponse(f"{UI}/", status_code=303)
    response.set_cookie(SESSION_COOKIE, issue_session(request.app.state.console_secret, key_id),
                        max_age=SESSION_TTL_S, **_cookie_args(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=UI)
    return response


def _login_form(request: Request, error: str | None = None, status_code: int = 200):
    nonce = secrets.token_urlsafe(16)
    response = render(request, "login.html", None, status_code=status_code, error=error,
                      csrf=csrf_token(request.app.state.console_secret, nonce),
                      no_auth=request.app.state.tunery.settings.no_auth)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, max_age=3600, **_cookie_args(request))
    return response


@router.get("/")
def index(who: Viewer = Depends(viewer)):
    first = next(item for item in NAV if who.admin or not item.admin_only)
    return RedirectResponse(first.href, status_code=303)


@router.get("/login")
def login_page(request: Request):
    return _login_form(request)


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not check_csrf(request.app.state.console_secret, nonce, form.get(CSRF_FIELD)):
        return _login_form(request, "The sign-in form expired: please try again.", status_code=403)
    state = request.app.state.tunery
    if state.settings.no_auth:
        return signed_in(request, ANONYMOUS)
    key = verify_key(state.store, str(form.get("api_key", "")).strip())
    if key is None:
        return _login_form(request, "That API key is not valid or has been revoked.", status_code=401)
    return signed_in(request, key.id)


@router.get("/login/{token}")
def login_with_link(token: str, request: Request):
    key_id = consume_login_link(token)
    if not any(k.id == key_id and k.revoked_at is None for k in list_keys(request.app.state.tunery.store)):
        return _login_form(request, "The key this link was made for has been revoked.", status_code=401)
    return signed_in(request, key_id)


@router.post("/logout")
def logout(_: Viewer = Depends(posted_viewer)):
    response = RedirectResponse(f"{UI}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=UI)
    return response
