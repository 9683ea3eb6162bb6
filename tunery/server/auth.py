"""API key checks for routes: a bearer key from the store, admin where the route needs it.

The Authorization header is read here and nowhere else, and never logged or echoed.
"""

from __future__ import annotations

from fastapi import Request

from tunery.server.errors import ApiError
from tunery.store import verify_key
from tunery.store.owners import Actor

# The caller of a route is the identity its store queries run as (see tunery.store.owners).
Caller = Actor
ANONYMOUS_ADMIN = Caller(key_id=None, admin=True)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_key(request: Request) -> Caller:
    """FastAPI dependency: the calling key, or a 401."""
    state = request.app.state.tunery
    if state.settings.no_auth:
        return ANONYMOUS_ADMIN
    token = _bearer(request)
    if token is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    key = verify_key(state.store, token)
    if key is None:
        raise ApiError(401, "invalid or revoked API key", code="invalid_api_key")
    return Caller(key_id=key.id, admin=key.admin)


def require_admin(request: Request) -> Caller:
    """FastAPI dependency: an admin key, or a 401/403."""
    caller = require_key(request)
    if not caller.admin:
        raise ApiError(403, "this route needs an admin key", type_="permission_error", code="admin_required")
    return caller
