"""`tunery ui-login`: print a one-time link that signs a browser in to the console at /ui."""

from __future__ import annotations

import os

import typer

from tunery.cli import app
from tunery.cli.output import err_console, handle_errors
from tunery.store import open_store
from tunery.web.session import LINK_TTL_S, create_login_link, login_link_key


@app.command("ui-login")
@handle_errors
def ui_login(
    key_id: str | None = typer.Option(None, "--key-id", help="Sign in as this key (default: the oldest active "
                                      "admin key; one named 'console' is created when there is none)."),
    url: str | None = typer.Option(None, "--url", help="The server's address (default: TUNERY_URL, else "
                                   "http://127.0.0.1:8000)."),
):
    """Print a link that signs in to the web console once, within 10 minutes, without typing a key."""
    key, created = login_link_key(open_store(), key_id)
    if created:
        err_console.print(f"created admin key {key.id} ('console') for the console; "
                          "revoke it with `tunery keys revoke` when done")
    base = (url or os.environ.get("TUNERY_URL") or "http://127.0.0.1:8000").rstrip("/").removesuffix("/v1")
    token = create_login_link(key.id)
    err_console.print(f"signs in as key {key.id} ({'admin' if key.admin else 'user'}); works once, "
                      f"for {LINK_TTL_S // 60} minutes:")
    print(f"{base}/ui/login/{token}")
