"""The database goes away mid-job (PostgreSQL connections killed, as in a restart; SQLite locked
past its busy timeout): the worker retries, and the job finishes once, with nothing lost."""

import sqlite3
import threading
import time

import pytest
from platform_data import chat_lines

from tunery.platform import jobs
from tunery.platform.files import save_upload
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store.owners import LOCAL_OWNER


def disturb_postgres(store, stop: threading.Event) -> None:
    import sqlalchemy as sa
    from db_backends import postgres_url

    from tunery.store.db import database_url

    admin = sa.create_engine(database_url(postgres_url()))
    while not stop.is_set():
        with admin.begin() as conn:  # what a server restart does to every client connection
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE application_name = 'tunery-{store.schema}'")
        stop.wait(1.0)
    admin.dispose()


def disturb_sqlite(store, stop: threading.Event) -> None:
    while not stop.is_set():
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # longer than the busy timeout: the store must retry
        stop.wait(6.0)
        blocker.execute("COMMIT")
        blocker.close()
        stop.wait(0.5)


def test_a_job_survives_the_database_going_away(store, tiny_job):
    file = save_upload(store, LOCAL_OWNER, [chat_lines()], filename="t.jsonl", purpose="fine-tune")
    body = tiny_job(file["id"])
    body["tunery"]["train"].update(max_steps=12, save_every_steps=4, keep_checkpoints=5)
    job = jobs.create_job(store, LOCAL_OWNER, body)
    stop = threading.Event()
    disturb = disturb_postgres if store.dialect == "postgresql" else disturb_sqlite
    worker = Worker(store, WorkerSettings(heartbeat_s=0.2, lease_s=120))
    runner = threading.Thread(target=worker.run_one)
    runner.start()
    time.sleep(1.0)
    troublemaker = threading.Thread(target=disturb, args=(store, stop))
    troublemaker.start()
    runner.join(900)
    stop.set()
    troublemaker.join(30)
    assert not runner.is_alive()
    done = jobs.get_job(store, LOCAL_OWNER, job["id"])
    assert done["status"] == "succeeded" and done["tunery"]["attempts"] == 1, done["error"]
    steps = [c["step_number"] for c in jobs.list_checkpoints(store, LOCAL_OWNER, job["id"])["data"]]
    assert steps == [12, 8, 4]
    started = [e for e in jobs.list_events(store, LOCAL_OWNER, job["id"], limit=200)["data"]
               if e["message"] == "Fine-tuning job started"]
    assert len(started) == 1


pytestmark = pytest.mark.timeout(1800)
