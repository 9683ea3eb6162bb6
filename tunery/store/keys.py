"""API keys: created once and shown once, stored only as a SHA-256 hash, checked in constant time.

Keys are 256-bit random secrets, so a plain SHA-256 is enough (a slow KDF protects guessable
passwords, not random tokens). A key reads `tny_<id>_<secret>`; the id finds the row.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from tunery.errors import NotFoundError
from tunery.store.db import Store, utc_now

KEY_PREFIX = "tny_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: str
    revoked_at: str | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: Store, name: str = "", *, admin: bool = False) -> tuple[ApiKey, str]:
    """Create a key; returns its record and the secret (the only time the secret exists in clear)."""
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(id=key_id, name=name, admin=admin, created_at=utc_now())
    store.execute(
        "INSERT INTO api_keys (id, name, key_sha256, admin, created_at) VALUES (?, ?, ?, ?, ?)",
        (record.id, record.name, hash_key(secret), int(admin), record.created_at),
    )
    return record, secret


def _row_to_key(row) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], admin=bool(row["admin"]), created_at=row["created_at"],
                  revoked_at=row["revoked_at"])


def list_keys(store: Store) -> list[ApiKey]:
    return [_row_to_key(r) for r in store.query("SELECT * FROM api_keys ORDER BY created_at")]


def revoke_key(store: Store, key_id: str) -> ApiKey:
    """Revoke by id (the part after `tny_`); revoked keys stay listed for the audit trail."""
    changed = store.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                            (utc_now(), key_id))
    row = store.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    if row is None:
        raise NotFoundError("no API key with this id", hint="see `tunery keys list`")
    if not changed and row["revoked_at"] is None:
        raise NotFoundError("the API key could not be revoked")
    return _row_to_key(row)


def verify_key(store: Store, presented: str) -> ApiKey | None:
    """The active key matching `presented`, or None. The hash comparison is constant-time."""
    if not isinstance(presented, str) or not presented.startswith(KEY_PREFIX):
        return None
    key_id = presented[len(KEY_PREFIX):].split("_", 1)[0]
    row = store.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    # Compare against a dummy hash when the id is unknown so timing does not reveal valid ids.
    expected = row["key_sha256"] if row is not None else hash_key(secrets.token_hex(16))
    matches = hmac.compare_digest(expected, hash_key(presented))
    if row is None or not matches or row["revoked_at"] is not None:
        return None
    return _row_to_key(row)
