"""Fine-tuning job rows: the queue (claim, lease, heartbeat, requeue), state changes and pagination.

Every read a client can reach is scoped to an `Actor` (another key's job is NotFound, like a
missing one). The worker's calls (claim, heartbeat, finish) carry the worker id instead: a worker
whose lease was taken over changes nothing. Knows no HTTP and no training; rows are plain dicts.
"""

from __future__ import annotations

import json
import secrets
import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from tunery.errors import ConfigError, NotFoundError
from tunery.store.db import Store
from tunery.store.owners import Actor, visible
from tunery.store.pages import newest_first_page
from tunery.store.schema import job_events, jobs, workers

ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def add_event(conn: Connection, job_id: str, message: str, *, level: str = "info", type_: str = "message",
              data: dict | None = None, at: float | None = None) -> str:
    event_id = new_id("ftevent")
    conn.execute(job_events.insert().values(
        id=event_id, job_id=job_id, created_at=int(at or time.time()), level=level, type=type_, message=message,
        data_json=json.dumps(data) if data is not None else None))
    return event_id


def insert_job(store: Store, row: dict, *, message: str = "Validating training file") -> dict:
    """Insert a new job (its id is made here) with its first event; returns the row."""
    row = {"id": new_id("ftjob"), "created_at": int(time.time()), "result_files_json": "[]", **row}

    def work(conn: Connection) -> dict:
        conn.execute(jobs.insert().values(**row))
        add_event(conn, row["id"], f"Created fine-tuning job: {row['id']}")
        if message:
            add_event(conn, row["id"], message)
        return _written(conn, row["id"])

    return store.retrying(work)


def get_job(store: Store, actor: Actor, job_id: str) -> dict:
    row = store.retrying(lambda conn: _one(conn, sa.and_(jobs.c.id == job_id, visible(jobs.c.owner, actor))),
                         write=False)
    if row is None:
        raise NotFoundError(f"no fine-tuning job with id {job_id!r}", code="job_not_found")
    return row


def job_by_model(store: Store, actor: Actor, fine_tuned_model: str) -> dict | None:
    """The succeeded job whose `fine_tuned_model` is this name, if `actor` may use it."""
    return store.retrying(lambda conn: _one(conn, sa.and_(jobs.c.fine_tuned_model == fine_tuned_model,
                                                           visible(jobs.c.owner, actor))), write=False)


def list_jobs(store: Store, actor: Actor, *, after: str | None = None, limit: int = 20,
              metadata: dict[str, str] | None = None, status: str | None = None) -> tuple[list[dict], bool]:
    """Newest first; `after` is the id of the last job of the previous page. Returns (rows, has_more)."""
    query = sa.select(jobs).where(visible(jobs.c.owner, actor))
    if status:
        query = query.where(jobs.c.status == status)
    for key, value in (metadata or {}).items():
        query = query.where(_metadata_value(store.dialect, key) == value)

    missing = NotFoundError(f"no fine-tuning job with id {after!r} (the `after` cursor)", code="job_not_found")
    return newest_first_page(store, jobs, query, actor, after=after, limit=limit, missing=missing)


def _metadata_value(dialect: str, key: str) -> sa.ColumnElement:
    if not key or '"' in key or "\\" in key or len(key) > 64:
        raise ConfigError(f"metadata key {key!r} cannot be filtered on", code="invalid_metadata",
                          hint="metadata keys are at most 64 characters, without quotes or backslashes")
    if dialect == "postgresql":
        return sa.cast(jobs.c.metadata_json, postgresql.JSONB)[key].astext
    return sa.func.json_extract(jobs.c.metadata_json, f'$."{key}"')


def update_job(store: Store, job_id: str, *, event: str | None = None, level: str = "info",
               event_data: dict | None = None, **fields) -> None:
    """Set fields of a job (worker and service internals: no owner check), with an optional event."""
    def work(conn: Connection) -> None:
        if fields:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(**fields))
        if event:
            add_event(conn, job_id, event, level=level, data=event_data)

    store.retrying(work)


def request_stop(store: Store, actor: Actor, job_id: str, kind: str) -> dict:
    """Cancel or pause: a job not yet running stops at once; a running one at its next step."""
    target = {"cancel": "cancelled", "pause": "paused"}[kind]

    def work(conn: Connection) -> dict:
        row = _one(conn, sa.and_(jobs.c.id == job_id, visible(jobs.c.owner, actor)))
        if row is None:
            raise NotFoundError(f"no fine-tuning job with id {job_id!r}", code="job_not_found")
        status = row["status"]
        allowed = ("validating_files", "queued", "running", "paused") if kind == "cancel" else ("queued", "running")
        if status not in allowed:
            raise ConfigError(f"job {job_id} is {status}: it cannot be {target}", code=f"job_not_{kind}able"
                              if kind == "pause" else "job_not_cancellable")
        if status == "running":
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(stop_request=kind))
            add_event(conn, job_id, f"{'Cancellation' if kind == 'cancel' else 'Pause'} requested: the run stops "
                                    "after its current step and keeps its last checkpoint")
        else:
            values: dict[str, object] = {"status": target, "stop_request": None}
            if target == "cancelled":
                values["finished_at"] = int(time.time())
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
            add_event(conn, job_id, f"Job {target}")
        return _written(conn, job_id)

    return store.retrying(work)


def resume_job(store: Store, actor: Actor, job_id: str) -> dict:
    """A paused job goes back to the queue; its next run continues from its last checkpoint."""
    def work(conn: Connection) -> dict:
        row = _one(conn, sa.and_(jobs.c.id == job_id, visible(jobs.c.owner, actor)))
        if row is None:
            raise NotFoundError(f"no fine-tuning job with id {job_id!r}", code="job_not_found")
        if row["status"] != "paused":
            raise ConfigError(f"job {job_id} is {row['status']}: only a paused job can be resumed",
                              code="job_not_resumable")
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(status="queued", stop_request=None))
        add_event(conn, job_id, "Job resumed: queued again, continuing from its last checkpoint")
        return _written(conn, job_id)

    return store.retrying(work)


def requeue_expired(conn: Connection, now: float) -> list[str]:
    """Jobs whose worker stopped sending heartbeats go back to the queue, each with an event."""
    lost = [dict(r) for r in conn.execute(sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.step).where(
        jobs.c.status == "running", jobs.c.lease_expires_at < now)).mappings()]
    for row in lost:
        conn.execute(jobs.update().where(jobs.c.id == row["id"], jobs.c.status == "running",
                                         jobs.c.worker_id == row["worker_id"])
                     .values(status="queued", worker_id=None, lease_expires_at=None))
        add_event(conn, row["id"], f"Worker {row['worker_id']} stopped sending heartbeats; the job is queued "
                                   f"again and resumes from its last checkpoint (step {row['step'] or 0})",
                  level="warn")
    return [r["id"] for r in lost]


def claim_job(store: Store, worker_id: str, lease_s: float) -> dict | None:
    """Atomically take the oldest queued job (FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock on SQLite)."""
    def work(conn: Connection) -> dict | None:
        now = time.time()
        requeue_expired(conn, now)
        oldest = (sa.select(jobs.c.seq).where(jobs.c.status == "queued").order_by(jobs.c.seq).limit(1)
                  .with_for_update(skip_locked=True).scalar_subquery())
        claimed = conn.execute(
            jobs.update().where(jobs.c.seq == oldest, jobs.c.status == "queued")
            .values(status="running", worker_id=worker_id, heartbeat_at=now, lease_expires_at=now + lease_s,
                    attempts=jobs.c.attempts + 1, started_at=sa.func.coalesce(jobs.c.started_at, int(now)))
            .returning(jobs.c.id)).scalar()
        if claimed is None:
            return None
        conn.execute(workers.update().where(workers.c.id == worker_id).values(job_id=claimed, last_seen=now))
        return _one(conn, jobs.c.id == claimed)

    return store.retrying(work)


def heartbeat(store: Store, job_id: str, worker_id: str, lease_s: float, **progress) -> dict | None:
    """Extend the lease (and record progress); None when the job is no longer this worker's."""
    def work(conn: Connection) -> dict | None:
        now = time.time()
        changed = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.worker_id == worker_id,
                                                   jobs.c.status == "running")
                               .values(heartbeat_at=now, lease_expires_at=now + lease_s, **progress)).rowcount
        conn.execute(workers.update().where(workers.c.id == worker_id).values(last_seen=now))
        return _one(conn, jobs.c.id == job_id) if changed else None

    return store.retrying(work)


def finish_job(store: Store, job_id: str, worker_id: str, status: str, *, event: str, level: str = "info",
               **fields) -> bool:
    """Record the end of this worker's run of a job; False when the job was no longer its own."""
    def work(conn: Connection) -> bool:
        values = {"status": status, "worker_id": None, "lease_expires_at": None, "stop_request": None, **fields}
        if status in FINISHED:
            values["finished_at"] = int(time.time())
        changed = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.worker_id == worker_id,
                                                   jobs.c.status == "running").values(**values)).rowcount
        if changed:
            add_event(conn, job_id, event, level=level)
        conn.execute(workers.update().where(workers.c.id == worker_id).values(job_id=None, last_seen=time.time()))
        return bool(changed)

    return store.retrying(work)


def register_worker(store: Store, worker_id: str, host: str, pid: int) -> None:
    now = time.time()
    store.retrying(lambda conn: conn.execute(workers.insert().values(
        id=worker_id, host=host, pid=pid, started_at=int(now), last_seen=now)))


def list_workers(store: Store) -> list[dict]:
    return store.retrying(lambda conn: [dict(r) for r in conn.execute(
        sa.select(workers).order_by(workers.c.started_at)).mappings()], write=False)


def _one(conn: Connection, condition) -> dict | None:
    row = conn.execute(sa.select(jobs).where(condition)).mappings().first()
    return dict(row) if row is not None else None


def _written(conn: Connection, job_id: str) -> dict:
    """A job this transaction has just inserted or updated (so it exists)."""
    row = _one(conn, jobs.c.id == job_id)
    assert row is not None, job_id
    return row
