"""What a job leaves behind in the store: its events and its checkpoints, paged like OpenAI's lists.

Reads check the job's owner first (another key's job is NotFound); writes come from the worker.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from tunery.errors import NotFoundError
from tunery.store.db import Store
from tunery.store.jobs import get_job, new_id
from tunery.store.owners import Actor
from tunery.store.schema import job_checkpoints, job_events


def list_events(store: Store, actor: Actor, job_id: str, *, after: str | None = None, limit: int = 20,
                oldest_first: bool = False) -> tuple[list[dict], bool]:
    """Newest first (OpenAI's order); `oldest_first` suits a follower. `after` is an event id."""
    get_job(store, actor, job_id)
    return _page(store, job_events, job_id, after, limit, oldest_first, "event")


def add_checkpoint(store: Store, job_id: str, step: int, metrics: dict) -> bool:
    """Record a checkpoint once per (job, step); False when it was already there."""
    def work(conn) -> bool:
        exists = conn.execute(sa.select(job_checkpoints.c.id).where(
            job_checkpoints.c.job_id == job_id, job_checkpoints.c.step == step)).first()
        if exists:
            return False
        conn.execute(job_checkpoints.insert().values(id=new_id("ftckpt"), job_id=job_id, step=step,
                                                     metrics_json=json.dumps(metrics), created_at=int(time.time())))
        return True

    return store.retrying(work)


def list_checkpoints(store: Store, actor: Actor, job_id: str, *, after: str | None = None,
                     limit: int = 10) -> tuple[list[dict], bool]:
    get_job(store, actor, job_id)
    return _page(store, job_checkpoints, job_id, after, limit, False, "checkpoint")


def drop_checkpoints_after(store: Store, job_id: str, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: their records go (they come back as it runs)."""
    store.retrying(lambda conn: conn.execute(job_checkpoints.delete().where(
        job_checkpoints.c.job_id == job_id, job_checkpoints.c.step > step)))


def _page(store: Store, table: sa.Table, job_id: str, after: str | None, limit: int, oldest_first: bool,
          what: str) -> tuple[list[dict], bool]:
    query = sa.select(table).where(table.c.job_id == job_id)

    def read(conn) -> list[dict]:
        page = query
        if after:
            cursor = conn.execute(sa.select(table.c.seq).where(table.c.id == after, table.c.job_id == job_id)).scalar()
            if cursor is None:
                raise NotFoundError(f"no {what} with id {after!r} in job {job_id}", code=f"{what}_not_found")
            page = page.where(table.c.seq > cursor if oldest_first else table.c.seq < cursor)
        order = table.c.seq.asc() if oldest_first else table.c.seq.desc()
        return [dict(r) for r in conn.execute(page.order_by(order).limit(limit + 1)).mappings()]

    rows = store.retrying(read, write=False)
    return rows[:limit], len(rows) > limit
