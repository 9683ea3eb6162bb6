"""Real `tunery worker` processes on one store: two racing over queued jobs run each exactly once;
a worker killed with SIGKILL mid-job loses it to another, which resumes from the checkpoint and
ends with the same adapter as an uninterrupted run; cancel and pause stop a running job."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from db_backends import postgres_schema
from platform_data import chat_lines, tiny_job_body

from tunery.platform import jobs
from tunery.platform.files import save_upload
from tunery.store import open_store
from tunery.store.owners import LOCAL_OWNER


@contextmanager
def shared_store(backend, tmp_path):
    """(store, env) where env points child processes at the same database."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    if backend == "sqlite":
        env["TUNERY_DATABASE_URL"] = str(tmp_path / "tunery.db")
        store = open_store(env["TUNERY_DATABASE_URL"])
        yield store, env
        store.close()
        return
    with postgres_schema() as (url, schema):
        env["TUNERY_DATABASE_URL"] = f"{url.replace('+psycopg', '')}?options=-csearch_path%3D{schema}"
        store = open_store(env["TUNERY_DATABASE_URL"])
        yield store, env
        store.close()


def start_worker(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunery", "worker", "--poll-s", "0.1", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(*workers: subprocess.Popen) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()
    for w in workers:
        w.wait(120)


def wait_until(condition, timeout_s: float = 2400, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_done(store, ids):
    states = [jobs.get_job(store, LOCAL_OWNER, i)["status"] for i in ids]
    return all(s in ("succeeded", "failed", "cancelled", "paused") for s in states)


@pytest.mark.timeout(3600)
def test_two_workers_racing_run_each_job_exactly_once(tmp_path, tiny_model_dir):
    # PostgreSQL is the shared queue of many machines; SQLite's claim races in tests/store (threads).
    with shared_store("postgresql", tmp_path) as (store, env):
        file = save_upload(store, LOCAL_OWNER, [chat_lines()], filename="t.jsonl", purpose="fine-tune")
        body = tiny_job_body(str(tiny_model_dir), file["id"])
        body["tunery"]["train"].update(max_steps=1, save_every_steps=None)
        ids = [jobs.create_job(store, LOCAL_OWNER, body)["id"] for _ in range(20)]
        workers = [start_worker(env), start_worker(env)]
        try:
            wait_until(lambda: all_done(store, ids), timeout_s=3600, what="20 jobs")
        finally:
            stop(*workers)
        finished = [jobs.get_job(store, LOCAL_OWNER, i) for i in ids]
        assert [j["status"] for j in finished] == ["succeeded"] * 20
        assert all(j["tunery"]["attempts"] == 1 for j in finished)
        starts = [e for i in ids for e in jobs.list_events(store, LOCAL_OWNER, i, limit=100)["data"]
                  if e["message"] == "Fine-tuning job started"]
        assert len(starts) == 20  # one start per job: none ran twice
        runs = [json.loads((jobs.run_dir_of(i) / "run.json").read_text()) for i in ids]
        assert all(r["status"] == "completed" and r["steps"] == 1 for r in runs)


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_worker_s_job_resumes_elsewhere_and_ends_like_an_uninterrupted_run(backend, tmp_path,
                                                                                       tiny_model_dir):
    import torch

    with shared_store(backend, tmp_path) as (store, env):
        file = save_upload(store, LOCAL_OWNER, [chat_lines(24)], filename="t.jsonl", purpose="fine-tune")
        body = tiny_job_body(str(tiny_model_dir), file["id"], seed=3)
        # Long enough that the kill lands mid-run, not after the run finished on its own.
        # One precision for both jobs: `auto` measures each run afresh, and on a busy machine the tiny model's
        # bf16/fp32 ratio can fall on either side of the threshold (a resume keeps its run's own choice).
        body["tunery"]["train"].update(max_steps=120, save_every_steps=4, batch_size=2, precision="fp32")
        killed_job = jobs.create_job(store, LOCAL_OWNER, body)["id"]
        first = start_worker(env, "--lease-s", "3")
        try:
            wait_until(lambda: jobs.list_checkpoints(store, LOCAL_OWNER, killed_job)["data"], what="a checkpoint")
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        finally:
            stop(first)
        straight_job = jobs.create_job(store, LOCAL_OWNER, body)["id"]
        second = start_worker(env, "--lease-s", "3")
        try:
            wait_until(lambda: all_done(store, [killed_job, straight_job]), what="both jobs")
        finally:
            stop(second)
        killed = jobs.get_job(store, LOCAL_OWNER, killed_job)
        assert killed["status"] == "succeeded" and killed["tunery"]["attempts"] == 2, killed["error"]
        messages = [e["message"] for e in jobs.list_events(store, LOCAL_OWNER, killed_job, limit=200)["data"]]
        assert any("stopped sending heartbeats" in m for m in messages)
        assert any(m.startswith("Resuming from the last checkpoint") for m in messages)
        run = json.loads((jobs.run_dir_of(killed_job) / "run.json").read_text())
        assert run["status"] == "completed" and run["steps"] == 120
        resumed, straight = adapter_tensors(jobs.run_dir_of(killed_job)), adapter_tensors(jobs.run_dir_of(straight_job))
        assert resumed.keys() == straight.keys()
        for name in straight:
            torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0)


@pytest.mark.timeout(2400)
def test_cancel_and_pause_stop_a_running_job_and_resume_continues_it(tmp_path, tiny_model_dir):
    with shared_store("sqlite", tmp_path) as (store, env):
        file = save_upload(store, LOCAL_OWNER, [chat_lines(24)], filename="t.jsonl", purpose="fine-tune")
        body = tiny_job_body(str(tiny_model_dir), file["id"])
        # Far more steps than the test waits for, so the job is still running when it is cancelled on any machine.
        body["tunery"]["train"].update(max_steps=100_000, save_every_steps=50)
        job_id = jobs.create_job(store, LOCAL_OWNER, body)["id"]
        worker = start_worker(env)
        try:
            running = lambda: (jobs.get_job(store, LOCAL_OWNER, job_id)["tunery"]["step"] or 0) >= 1  # noqa: E731
            wait_until(running, what="the first step")
            jobs.pause_job(store, LOCAL_OWNER, job_id)
            paused = wait_until(lambda: jobs.get_job(store, LOCAL_OWNER, job_id)["status"] == "paused", what="pause")
            assert paused
            step = json.loads((jobs.run_dir_of(job_id) / "run.json").read_text())["steps"]
            assert (jobs.run_dir_of(job_id) / "checkpoints" / f"step-{step}").is_dir()
            jobs.resume_job(store, LOCAL_OWNER, job_id)
            wait_until(lambda: (jobs.get_job(store, LOCAL_OWNER, job_id)["tunery"]["step"] or 0) > step,
                       what="progress after resume")
            jobs.cancel_job(store, LOCAL_OWNER, job_id)
            wait_until(lambda: jobs.get_job(store, LOCAL_OWNER, job_id)["status"] == "cancelled", what="cancel")
        finally:
            stop(worker)
        messages = [e["message"] for e in jobs.list_events(store, LOCAL_OWNER, job_id, limit=500)["data"]]
        assert any(m.startswith("Job paused at step") for m in messages)
        assert any(m.startswith("Job cancelled at step") for m in messages)
        assert any(m.startswith("Resuming from the last checkpoint") for m in messages)
