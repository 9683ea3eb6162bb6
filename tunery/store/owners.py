"""Who may touch a row: every object that belongs to an API key is read and written only through
queries scoped to the acting key (completions and feedback now; files, jobs and models alike).

The rule, in one place: a non-admin `Actor` matches only rows whose `key_id` is its own, so another
key's object answers exactly like a missing one (NotFoundError, HTTP 404) and ids cannot be probed;
an admin `Actor` matches every row, and each change it makes to a row another key owns is written
to the audit log with the admin's key id. The local CLI acts as `LOCAL_OWNER` (admin, no key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from tunery.store.db import Store, utc_now


@dataclass(frozen=True)
class Actor:
    """The identity a store query runs as: an API key id (None for the local owner) and its rights."""

    key_id: str | None
    admin: bool = False


LOCAL_OWNER = Actor(key_id=None, admin=True)


def owned_by(actor: Actor, column: str = "key_id") -> tuple[str, tuple]:
    """The raw-SQL condition (and its parameters) that limits a query to the rows `actor` may touch."""
    if actor.admin:
        return "1 = 1", ()
    return f"{column} = ?", (actor.key_id,)


def visible(column: sa.ColumnElement, actor: Actor) -> sa.ColumnElement:
    """The same rule for SQLAlchemy Core queries (files, jobs, models)."""
    return sa.true() if actor.admin else column == actor.key_id


def audit(store: Store, actor: Actor, action: str, object_type: str, object_id: str, owner_key_id: str | None,
          detail: dict | None = None) -> None:
    """Record who did what to whose object (admin acts on other keys' objects, key management)."""
    store.execute(
        "INSERT INTO audit_log (at, actor_key_id, action, object_type, object_id, owner_key_id, detail_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (utc_now(), actor.key_id, action, object_type, object_id, owner_key_id, json.dumps(detail or {})),
    )


def audit_if_foreign(store: Store, actor: Actor, action: str, object_type: str, object_id: str,
                     owner_key_id: str | None) -> None:
    """Audit an admin's change to an object that belongs to another key (or to no key)."""
    if actor.admin and owner_key_id != actor.key_id:
        audit(store, actor, action, object_type, object_id, owner_key_id)


def list_audit(store: Store, limit: int = 100) -> list[dict]:
    rows = store.query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", (limit,))
    return [dict(row) for row in rows]
