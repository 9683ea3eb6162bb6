"""Keys (admin): create (the secret shown once), list, revoke; the functions `tunery keys` calls."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from tunery.store import create_key, list_keys, revoke_key
from tunery.web.app import UI, render
from tunery.web.auth import Viewer, admin_viewer, posted_admin

router = APIRouter()
MAX_NAME_CHARS = 200


def _page(request: Request, who: Viewer, **context):
    return render(request, "keys.html", who, active="keys", keys=list_keys(request.app.state.tunery.store),
                  **context)


@router.get("/keys")
def keys_page(request: Request, who: Viewer = Depends(admin_viewer)):
    return _page(request, who)


@router.post("/keys")
def create(request: Request, name: str = Form("", max_length=MAX_NAME_CHARS), admin: bool = Form(False),
           who: Viewer = Depends(posted_admin)):
    record, secret = create_key(request.app.state.tunery.store, name.strip(), admin=admin)
    return _page(request, who, created=record, secret=secret)


@router.post("/keys/{key_id}/revoke")
def revoke(key_id: str, request: Request, _: Viewer = Depends(posted_admin)):
    revoke_key(request.app.state.tunery.store, key_id)
    return RedirectResponse(f"{UI}/keys", status_code=303)
