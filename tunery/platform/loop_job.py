"""The loop's candidate as a job on the queue: its training file uploaded, a job that continues the
production adapter, and the wait for a worker (`tunery worker`, `tunery serve --workers N`) to run
it, reporting the job's events as they come.

Events, cancel, pause and resume apply as to any job; a loop interrupted while waiting cancels its
job. Knows nothing of gates or promotion.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

from tunery.config import apply_override, validate_train_config
from tunery.errors import ConfigError
from tunery.platform import jobs
from tunery.platform.files import save_upload
from tunery.store import jobs as job_rows
from tunery.store.db import Store
from tunery.store.owners import LOCAL_OWNER
from tunery.store.registry import Version

FINISHED = set(job_rows.FINISHED)
LOOP_DEFAULTS = {"data": {"val_fraction": 0}}  # the loop holds out its own feedback task


def job_settings(overrides: list[str]) -> dict:
    """`--set KEY=VALUE` overrides as the job's `tunery` block, checked now (a typo fails before any upload)."""
    raw = copy.deepcopy(LOOP_DEFAULTS)
    for item in overrides:
        apply_override(raw, item)
    validate_train_config(copy.deepcopy(raw), source="--set")
    return raw


def submit_candidate(store: Store, name: str, production: Version, train_path: Path, *, overrides: list[str],
                     seed: int) -> dict:
    """Upload the loop's training file and queue a job that continues production's adapter on it."""
    settings = job_settings(overrides)
    file = save_upload(store, LOCAL_OWNER, [train_path.read_bytes()], filename=f"{name}-loop-train.jsonl",
                       purpose="fine-tune")
    body = {"model": production.base_model, "training_file": file["id"], "seed": seed, "tunery": settings,
            "metadata": {"tunery_loop": name, "production": production.ref}}
    return jobs.create_job(store, LOCAL_OWNER, body, init_from=production.run_dir)


def wait_for_job(store: Store, job_id: str, *, on_event: Callable[[dict], None] | None = None,
                 poll_s: float = 1.0, timeout_s: float | None = None) -> dict:
    """Follow the job until it succeeds, fails or is cancelled; each new event goes to `on_event`.

    Interrupted (Ctrl-C, a timeout, the loop's own failure), the job is cancelled: a candidate nobody
    waits for is not trained."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    seen: str | None = None
    try:
        while True:
            job = jobs.get_job(store, LOCAL_OWNER, job_id)  # before the events: a finished job's last one is read
            events = jobs.list_events(store, LOCAL_OWNER, job_id, after=seen, limit=100, oldest_first=True)
            for event in events["data"]:
                seen = event["id"]
                if on_event is not None:
                    on_event(event)
            if job["status"] in FINISHED and not events["has_more"]:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ConfigError(f"job {job_id} did not finish within {timeout_s:g} s ({job['status']})",
                                  code="candidate_timeout", hint="is a worker running? `tunery worker`")
            if not events["has_more"]:
                time.sleep(poll_s)
    except BaseException:
        _cancel_quietly(store, job_id)
        raise


def _cancel_quietly(store: Store, job_id: str) -> None:
    try:
        if jobs.get_job(store, LOCAL_OWNER, job_id)["status"] not in FINISHED:
            jobs.cancel_job(store, LOCAL_OWNER, job_id)
    except Exception:  # the store may be the reason we are here; the job's own lease ends it then
        pass
