"""The job queue and file rows on both backends: migration from the first SQLite store, the schema,
ownership, pagination, claims that never hand one job to two workers, leases, cancel and pause."""

import hashlib
import json
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from tunery.errors import ConfigError, NotFoundError, StoreError
from tunery.store import create_key, open_store, verify_key
from tunery.store.files import delete_file, get_file, insert_file, list_files
from tunery.store.job_history import add_checkpoint, list_checkpoints, list_events
from tunery.store.jobs import (
    claim_job,
    finish_job,
    get_job,
    heartbeat,
    insert_job,
    list_jobs,
    register_worker,
    request_stop,
    resume_job,
)
from tunery.store.migrations import MIGRATIONS
from tunery.store.owners import Actor
from tunery.store.schema import metadata

ALICE, BOB = Actor("alice"), Actor("bob")


def job_row(owner: Actor, **extra) -> dict:
    return {"owner": owner.key_id, "model": "tiny", "training_file": "file-x", "seed": 1,
            "method_json": json.dumps({"type": "supervised"}), "tunery_json": "{}", "hyperparameters_json": "{}",
            "status": "queued", **extra}


def test_a_database_made_by_the_first_store_migrates_with_nothing_lost(tmp_path):
    path = tmp_path / "old.db"
    # Exactly what the first SQLite store did: migration 1 by hand, recorded as version 1.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    conn.execute("BEGIN IMMEDIATE")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, '2026-01-01T00:00:00.000000Z')")
    conn.execute("COMMIT")
    conn.close()
    # Rows as the first store wrote them.
    v1 = sqlite3.connect(path, isolation_level=None)
    v1.execute("INSERT INTO api_keys VALUES ('k1', 'ci', ?, 1, '2026-01-01T00:00:00Z', NULL)",
               (hashlib.sha256(b"tny_k1_secret").hexdigest(),))
    v1.execute("INSERT INTO completions VALUES ('c1', '2026-01-01T00:00:00Z', 'k1', 'base', 'chat', '[]', '[\"4\"]',"
               " 'stop', 5, 1, 3)")
    v1.execute("INSERT INTO feedback VALUES ('c1', 1, 'four', NULL, 'k1', '2026-01-01', '2026-01-01')")
    v1.close()
    store = open_store(path)
    assert store.schema_version == len(MIGRATIONS)
    assert verify_key(store, "tny_k1_secret").id == "k1"
    assert json.loads(store.query_one("SELECT outputs_json FROM completions WHERE id = 'c1'")["outputs_json"]) == ["4"]
    assert store.query_one("SELECT correction FROM feedback")["correction"] == "four"
    assert store.query_one("SELECT applied_at FROM schema_migrations WHERE version = 1")["applied_at"].startswith("2026")
    insert_job(store, job_row(ALICE))  # the new tables work on the migrated file
    store.close()


def test_the_schema_objects_match_the_migrated_database(store):
    inspector = sa.inspect(store.engine)
    for table in metadata.tables.values():
        columns = {c["name"] for c in inspector.get_columns(table.name, schema=store.schema)}
        assert {c.name for c in table.columns} <= columns, table.name


def test_another_keys_rows_are_not_found_and_admins_see_all(store):
    job = insert_job(store, job_row(ALICE))
    stored = insert_file(store, ALICE, filename="a.jsonl", purpose="fine-tune", bytes=3, sha256="ab", status="processed")
    with pytest.raises(NotFoundError):
        get_job(store, BOB, job["id"])
    with pytest.raises(NotFoundError):
        get_file(store, BOB, stored["id"])
    with pytest.raises(NotFoundError):
        list_events(store, BOB, job["id"])
    with pytest.raises(NotFoundError):
        request_stop(store, BOB, job["id"], "cancel")
    with pytest.raises(NotFoundError):
        delete_file(store, BOB, stored["id"])
    assert list_jobs(store, BOB) == ([], False) and list_files(store, BOB) == ([], False)
    assert get_job(store, Actor("root", admin=True), job["id"])["owner"] == "alice"
    assert [r["id"] for r in list_files(store, ALICE)[0]] == [stored["id"]]
    assert delete_file(store, ALICE, stored["id"])[1] is True  # its blob is no longer used


def read_all_pages(list_page) -> tuple[list[str], int]:
    """Every id `list_page(after)` gives, page after page, and how many pages it took."""
    seen, after, pages = [], None, 0
    while True:
        rows, more = list_page(after)
        seen += [r["id"] for r in rows]
        pages += 1
        if not more:
            return seen, pages
        after = rows[-1]["id"]


def test_a_thousand_jobs_paginate_newest_first_without_gaps(store):
    with store.transaction() as conn:
        from tunery.store.schema import jobs
        conn.execute(jobs.insert(), [{"id": f"ftjob-{i:04d}", "created_at": 1, "result_files_json": "[]",
                                      **job_row(ALICE, metadata_json=json.dumps({"batch": str(i % 3)}))}
                                     for i in range(1000)])
    seen, pages = read_all_pages(lambda after: list_jobs(store, ALICE, after=after, limit=97))
    assert seen == [f"ftjob-{i:04d}" for i in reversed(range(1000))] and pages == 11
    tagged, _ = list_jobs(store, ALICE, metadata={"batch": "1"}, limit=1000)
    assert len(tagged) == 333 and all(json.loads(r["metadata_json"])["batch"] == "1" for r in tagged)
    with pytest.raises(NotFoundError):
        list_jobs(store, BOB, after="ftjob-0001")


def test_a_thousand_files_paginate_newest_first_without_gaps(store):
    with store.transaction() as conn:
        from tunery.store.schema import files
        conn.execute(files.insert(), [{"id": f"file-{i:04d}", "owner": ALICE.key_id, "filename": f"{i}.jsonl",
                                       "purpose": "fine-tune" if i % 2 else "batch", "bytes": 1, "sha256": "ab",
                                       "status": "processed", "created_at": 1} for i in range(1000)])
    seen, pages = read_all_pages(lambda after: list_files(store, ALICE, after=after, limit=97))
    assert seen == [f"file-{i:04d}" for i in reversed(range(1000))] and pages == 11
    tuning, more = list_files(store, ALICE, purpose="fine-tune", after="file-0500", limit=1000)
    assert [r["id"] for r in tuning] == [f"file-{i:04d}" for i in reversed(range(1, 500, 2))] and not more
    with pytest.raises(NotFoundError) as caught:
        list_files(store, BOB, after="file-0001")  # another key's file is no cursor
    assert caught.value.code == "file_not_found"


def test_threads_racing_to_claim_take_each_job_exactly_once(store):
    ids = [insert_job(store, job_row(ALICE))["id"] for _ in range(20)]
    claimed: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        register_worker(store, name, "host", 1)
        mine = claimed.setdefault(name, [])
        while (job := claim_job(store, name, lease_s=60)) is not None:
            mine.append(job["id"])
            assert finish_job(store, job["id"], name, "succeeded", event="done")

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for got in claimed.values() for j in got]
    assert sorted(everything) == sorted(ids)  # each once: none twice, none left
    assert all(get_job(store, ALICE, i)["attempts"] == 1 for i in ids)


def test_a_job_whose_worker_stops_heartbeating_is_queued_again(store):
    job = insert_job(store, job_row(ALICE))
    register_worker(store, "dead", "host", 1)
    register_worker(store, "alive", "host", 2)
    assert claim_job(store, "dead", lease_s=0.05)["id"] == job["id"]
    time.sleep(0.1)
    again = claim_job(store, "alive", lease_s=60)
    assert again["id"] == job["id"] and again["attempts"] == 2 and again["worker_id"] == "alive"
    assert heartbeat(store, job["id"], "dead", 60) is None  # the old worker has lost it
    assert not finish_job(store, job["id"], "dead", "failed", event="late")
    messages = [e["message"] for e in list_events(store, ALICE, job["id"], limit=50)[0]]
    assert any("stopped sending heartbeats" in m for m in messages)
    assert heartbeat(store, job["id"], "alive", 60, step=3)["step"] == 3


def test_cancel_pause_and_resume_follow_the_job_states(store):
    queued = insert_job(store, job_row(ALICE))
    assert request_stop(store, ALICE, queued["id"], "cancel")["status"] == "cancelled"
    with pytest.raises(ConfigError, match="cannot be cancelled"):
        request_stop(store, ALICE, queued["id"], "cancel")
    running = insert_job(store, job_row(ALICE))
    register_worker(store, "w", "host", 1)
    claim_job(store, "w", lease_s=60)
    assert request_stop(store, ALICE, running["id"], "pause")["stop_request"] == "pause"
    assert heartbeat(store, running["id"], "w", 60)["stop_request"] == "pause"
    finish_job(store, running["id"], "w", "paused", event="paused at step 2")
    assert resume_job(store, ALICE, running["id"])["status"] == "queued"
    with pytest.raises(ConfigError, match="only a paused job"):
        resume_job(store, ALICE, running["id"])
    assert add_checkpoint(store, running["id"], 2, {"train_loss": 1.0})
    assert not add_checkpoint(store, running["id"], 2, {"train_loss": 1.0})
    assert [c["step"] for c in list_checkpoints(store, ALICE, running["id"])[0]] == [2]


def test_a_locked_sqlite_database_is_waited_for_not_failed(tmp_path):
    store = open_store(tmp_path / "t.db")
    blocker = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: blocker.execute("COMMIT"))
    release.start()
    record, _ = create_key(store, "waited")  # blocks on the lock, then goes through
    release.join()
    assert store.query_one("SELECT name FROM api_keys WHERE id = ?", (record.id,))["name"] == "waited"
    blocker.close()
    store.close()


def test_an_unreachable_database_is_a_clear_error():
    with pytest.raises(StoreError, match="cannot open the database"):
        open_store("postgresql://nobody:secret@127.0.0.1:1/none")
