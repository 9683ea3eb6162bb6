"""Who is looking at a console page: the session's API key, checked again on every request.

`viewer` answers a page request (or sends the browser to sign in), `admin_viewer` also needs an
admin key, and `form_viewer` / `posted_viewer` check the CSRF token of a form or a script call.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tunery.server.auth import Caller
from tunery.store import list_keys
from tunery.web.session import ANONYMOUS, SESSION_COOKIE, check_csrf, csrf_token, read_session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, scripts get a 401."""


class Forbidden(Exception):
    """Signed in, but this page or action needs an admin key (or a valid CSRF token)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Viewer:
    key_id: str | None  # None on a --no-auth server
    name: str
    admin: bool
    csrf: str
    nonce: str

    @property
    def caller(self) -> Caller:
        """The same identity the HTTP API uses, for handlers shared with it."""
        return Caller(key_id=self.key_id, admin=self.admin)

    @property
    def owner(self) -> str | None:
        """The owner filter for listings: None (everything) for admins, the key id otherwise."""
        return None if self.admin else self.key_id


def _state(request: Request):
    return request.app.state.tunery


def viewer(request: Request) -> Viewer:
    """FastAPI dependency: the signed-in viewer, or SignInRequired."""
    secret = request.app.state.console_secret
    session = read_session(secret, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired()
    state = _state(request)
    token = csrf_token(secret, session.nonce)
    if session.key_id == ANONYMOUS:
        if not state.settings.no_auth:
            raise SignInRequired()
        return Viewer(key_id=None, name="local (no auth)", admin=True, csrf=token, nonce=session.nonce)
    key = next((k for k in list_keys(state.store) if k.id == session.key_id), None)
    if key is None or key.revoked_at is not None:
        raise SignInRequired()
    return Viewer(key_id=key.id, name=key.name or key.id, admin=key.admin, csrf=token, nonce=session.nonce)


def admin_viewer(request: Request) -> Viewer:
    """FastAPI dependency: a viewer with an admin key, or Forbidden."""
    who = viewer(request)
    if not who.admin:
        raise Forbidden("this page needs an admin key")
    return who


async def _check_posted_token(request: Request, who: Viewer) -> None:
    presented: object = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        presented = (await request.form()).get(CSRF_FIELD)
    if not check_csrf(request.app.state.console_secret, who.nonce, presented):
        raise Forbidden("the form's security token is missing or stale: reload the page and try again")


async def posted_viewer(request: Request) -> Viewer:
    """FastAPI dependency for a POST: the viewer, whose form or header carries the session's CSRF token."""
    who = viewer(request)
    await _check_posted_token(request, who)
    return who


async def posted_admin(request: Request) -> Viewer:
    """FastAPI dependency for an admin POST: admin key and CSRF token."""
    who = admin_viewer(request)
    await _check_posted_token(request, who)
    return who
