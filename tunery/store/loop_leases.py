"""Loop leases: one row per model NAME while a loop pass runs, so two loops never run at once for one
NAME on any machine that shares the store (PostgreSQL or SQLite alike).

A lease is renewed while its pass runs; one that was not renewed in time (its holder died) is taken
over by the next loop. Knows nothing of what a loop does.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tunery.store.db import Store
from tunery.store.schema import loop_leases

# Both dialects' INSERT ... ON CONFLICT builders (a dict of the two functions types as their common base).
INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def take_lease(store: Store, name: str, holder: str, *, host: str, pid: int, lease_s: float) -> dict:
    """Take NAME's lease for `holder` unless someone else holds an unexpired one; returns the row that holds it."""
    def work(conn: Connection) -> dict:
        now = time.time()
        conn.execute(loop_leases.delete().where(loop_leases.c.name == name, loop_leases.c.expires_at < now))
        conn.execute(INSERTS[store.dialect](loop_leases).values(
            name=name, holder=holder, host=host, pid=pid, acquired_at=now, expires_at=now + lease_s)
            .on_conflict_do_nothing(index_elements=["name"]))
        return dict(conn.execute(sa.select(loop_leases).where(loop_leases.c.name == name)).mappings().one())

    return store.retrying(work)


def renew_lease(store: Store, name: str, holder: str, lease_s: float) -> bool:
    """Extend the holder's lease; False when it is no longer the holder's (it expired and was taken)."""
    return bool(store.retrying(lambda conn: conn.execute(
        loop_leases.update().where(loop_leases.c.name == name, loop_leases.c.holder == holder)
        .values(expires_at=time.time() + lease_s)).rowcount))


def release_lease(store: Store, name: str, holder: str) -> None:
    store.retrying(lambda conn: conn.execute(
        loop_leases.delete().where(loop_leases.c.name == name, loop_leases.c.holder == holder)))


def lease_of(store: Store, name: str) -> dict | None:
    """The row holding NAME's lease now (expired or not), if any."""
    row = store.retrying(lambda conn: conn.execute(sa.select(loop_leases).where(loop_leases.c.name == name))
                         .mappings().first(), write=False)
    return dict(row) if row is not None else None
