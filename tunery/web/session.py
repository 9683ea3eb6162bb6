"""Console sessions: a signed cookie naming the API key, a CSRF token bound to it, one-time links.

The cookie holds the key's id, an expiry and a random nonce, signed with HMAC-SHA256 under a
secret kept owner-only in TUNERY_HOME; the key itself never leaves the sign-in form. The key is
checked again on every request, so revoking it ends its sessions. One-time sign-in links are
files named by the token's hash, consumed by an atomic rename: a link works once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import NotFoundError
from tunery.paths import tunery_home
from tunery.store import create_key, list_keys

SESSION_COOKIE = "tunery_session"
LOGIN_CSRF_COOKIE = "tunery_login_csrf"
SESSION_TTL_S = 12 * 3600
LINK_TTL_S = 10 * 60
ANONYMOUS = "-"  # the key id of a session on a --no-auth server


@dataclass(frozen=True)
class Session:
    key_id: str
    expires: int
    nonce: str


def _console_dir() -> Path:
    path = tunery_home() / "console"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def console_secret() -> bytes:
    """The signing secret, created once (owner-only) and shared by every server on this home."""
    path = _console_dir() / "secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def issue_session(secret: bytes, key_id: str, now: float | None = None) -> str:
    """The cookie value for a new session of `key_id`."""
    expires = int((now or time.time()) + SESSION_TTL_S)
    payload = f"v1.{key_id}.{expires}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_sign(secret, payload)}"


def read_session(secret: bytes, value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value carries, or None when it is absent, forged or expired."""
    if not value or value.count(".") != 4:
        return None
    payload, _, signature = value.rpartition(".")
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    _, key_id, expires, nonce = payload.split(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    return Session(key_id=key_id, expires=int(expires), nonce=nonce)


def csrf_token(secret: bytes, nonce: str) -> str:
    """The CSRF token of a session (or of a sign-in form's nonce): derived, so nothing is stored."""
    return _sign(secret, f"csrf.{nonce}")


def check_csrf(secret: bytes, nonce: str, presented: object) -> bool:
    """`presented` as a header or form field gives it: a file part in its place is refused, not a crash."""
    return isinstance(presented, str) and bool(presented) and hmac.compare_digest(csrf_token(secret, nonce), presented)


def _link_path(token: str) -> Path:
    return _console_dir() / "links" / (hashlib.sha256(token.encode("utf-8")).hexdigest() + ".json")


def create_login_link(key_id: str, now: float | None = None) -> str:
    """A one-time token that signs in as `key_id` within LINK_TTL_S; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    path = _link_path(token)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    record = {"key_id": key_id, "expires": int((now or time.time()) + LINK_TTL_S)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)
    return token


def consume_login_link(token: str, now: float | None = None) -> str:
    """The key id of a one-time link, which is used up; NotFoundError when unknown, used or expired."""
    gone = NotFoundError("this sign-in link is unknown, used or expired",
                         hint="run `tunery ui-login` for a new one, or sign in with an API key")
    if not token or len(token) > 100:
        raise gone
    path = _link_path(token)
    claimed = path.with_suffix(f".used-{secrets.token_hex(4)}")
    try:
        os.rename(path, claimed)  # atomic: of two requests with the same link, one wins
    except OSError:
        raise gone from None
    try:
        record = json.loads(claimed.read_text(encoding="utf-8"))
    finally:
        claimed.unlink(missing_ok=True)
    if int(record.get("expires", 0)) < (now or time.time()):
        raise gone
    return str(record["key_id"])


def login_link_key(store, key_id: str | None = None):
    """The key a one-time link signs in as: `key_id`, else the oldest active admin key, else a new
    admin key named "console". Returns (key, created)."""
    active = [k for k in list_keys(store) if k.revoked_at is None]
    if key_id is not None:
        key = next((k for k in active if k.id == key_id), None)
        if key is None:
            raise NotFoundError(f"no active API key with id {key_id!r}", hint="see `tunery keys list`")
        return key, False
    admin = next((k for k in active if k.admin), None)
    if admin is not None:
        return admin, False
    return create_key(store, "console", admin=True)[0], True
