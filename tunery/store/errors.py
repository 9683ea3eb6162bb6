"""Database failures (SQLite, and PostgreSQL through psycopg) as StoreErrors that name the real cause.

Knows nothing about the schema; `Store` and the CLI boundary call `store_error` on what escapes.
"""

from __future__ import annotations

from pathlib import Path

from tunery.errors import StoreError

_CAUSES = (
    (("locked", "busy"), "locked by another process past the busy timeout",
     "another tunery process holds a long write; retry, or stop it"),
    (("not a database", "malformed", "disk image", "file is encrypted", "unsupported file format"),
     "corrupt or truncated, or not a tunery database",
     "restore it from a backup, or move it aside and tunery creates an empty one"),
    (("readonly", "read-only"), "read-only", "check the permissions of the database file and its folder"),
    (("unable to open", "could not connect", "connection refused", "connection failed"), "unreachable",
     "check TUNERY_HOME (or TUNERY_DATABASE_URL) and the permissions of its folder"),
    (("disk is full", "no space"), "the disk is full", "free some space"),
)


def store_error(exc: BaseException, where: str | Path | None = None, *, opening: bool = False) -> StoreError:
    """A StoreError naming the database and the underlying cause of a database exception."""
    inner = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error with the SQL and its values
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    lowered = text.lower()
    name = f"the database {where}" if where else "the database"
    prefix = f"cannot open {name}" if opening else f"{name} failed"
    for needles, reason, hint in _CAUSES:
        if any(needle in lowered for needle in needles):
            return StoreError(f"{prefix}: {reason} ({text})", code="store_error", hint=hint)
    return StoreError(f"{prefix}: {text}", code="store_error",
                      hint="check TUNERY_DATABASE_URL (or TUNERY_HOME) and that the database is running")
