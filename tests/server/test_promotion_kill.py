"""The server killed (SIGKILL) during a promotion, after the gates ran and while the alias move waits on
the database: after a restart it serves exactly the old version, the audit shows no move that did not
happen, and the same promotion then goes through (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from db_backends import BACKENDS, postgres_schema

from tests.inference.conftest import save_lora_run
from tests.server.conftest import free_port
from tunery.platform.registry import describe, register_run, resolve_version
from tunery.store import open_store

TASKS = [{"prompt": f"Say {word}", "reference": word} for word in ("yes", "no", "ok")]


@contextmanager
def database(backend, tmp_path):
    """(store, url for the server's TUNERY_DATABASE_URL, a function holding the alias row's lock)."""
    if backend == "sqlite":
        url = str(tmp_path / "tunery.db")
        store = open_store(url)

        @contextmanager
        def hold_alias():
            conn = sqlite3.connect(url, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")  # the write lock: the promoter's move waits behind it
            try:
                yield
            finally:
                conn.rollback()
                conn.close()

        yield store, url, hold_alias
        store.close()
        return
    with postgres_schema() as (base, schema):
        url = f"{base.replace('+psycopg', '')}?options=-csearch_path%3D{schema}"
        store = open_store(url)

        @contextmanager
        def hold_alias():
            with store.engine.connect() as conn, conn.begin():
                conn.exec_driver_sql("SELECT * FROM model_aliases WHERE name = 'desk' FOR UPDATE")
                yield

        yield store, url, hold_alias
        store.close()


def start_serve(tiny_model_dir, url, port, tmp_path, log_name):
    env = dict(os.environ, TUNERY_DATABASE_URL=url, TMPDIR=str(tmp_path / "server-tmp"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(sys.path))
    (tmp_path / "server-tmp").mkdir(exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "tunery", "serve", "--model", str(tiny_model_dir), "--no-auth",
                                "--port", str(port), "--dtype", "fp32", "--workers", "0"], env=env,
                               stdout=(tmp_path / log_name).open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / log_name).read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)


def served_version(port) -> str:
    reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
        "model": "desk", "messages": [{"role": "user", "content": "Reset VPN"}], "max_tokens": 2, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return reply.json()["model"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_killed_mid_promotion_serves_one_consistent_version(backend, tiny_model_dir, tmp_path):
    with database(backend, tmp_path) as (store, url, hold_alias):
        register_run(store, save_lora_run(tiny_model_dir, tmp_path / "run1", seed=1), "desk", alias="production")
        register_run(store, save_lora_run(tiny_model_dir, tmp_path / "run2", seed=2), "desk")
        port = free_port()
        server = start_serve(tiny_model_dir, url, port, tmp_path, "serve1.log")
        try:
            assert served_version(port) == "desk@1"
            with hold_alias():
                request = threading.Thread(target=lambda: _swallow(lambda: httpx.post(
                    f"http://127.0.0.1:{port}/v1/registry/promote", timeout=600,
                    json={"version": "desk@2", "tasks": TASKS, "gates": ["no-regression:1"]})), daemon=True)
                request.start()
                # The gates have run (their summary is written) and the promotion now waits on the alias.
                deadline = time.monotonic() + 900
                while not list((tmp_path / "server-tmp").glob("tunery-promote-*/reports/tasks-0/summary.json")):
                    assert time.monotonic() < deadline and server.poll() is None
                    time.sleep(0.05)
                if backend == "postgresql":
                    while not store.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND query LIKE 'UPDATE model_aliases%'"):
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                server.send_signal(signal.SIGKILL)
                server.wait(60)
            request.join(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(60)
        # The move never committed: the alias and the audit agree on the old version.
        assert resolve_version(store, "desk").version == 1
        history = describe(store, "desk")["history"]
        assert [(m["action"], m["outcome"], m["to_version"]) for m in history] == [("register", "moved", 1)]
        server = start_serve(tiny_model_dir, url, port, tmp_path, "serve2.log")
        try:
            assert served_version(port) == "desk@1"  # after the restart, one consistent version
            again = httpx.post(f"http://127.0.0.1:{port}/v1/registry/promote", timeout=900,
                               json={"version": "desk@2", "tasks": TASKS, "gates": ["no-regression:1"]})
            assert again.status_code == 200, again.text
            assert served_version(port) == "desk@2"
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(120)
        history = describe(store, "desk")["history"]
        assert [(m["action"], m["outcome"], m["from_version"], m["to_version"]) for m in history] == [
            ("register", "moved", None, 1), ("promote", "moved", 1, 2)]
        assert json.dumps(history[-1]["gate"]) and history[-1]["gate"]["passed"] is True


def _swallow(call) -> None:
    try:
        call()
    except httpx.HTTPError:  # the server was killed under it
        pass
