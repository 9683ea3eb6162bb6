"""The store on both backends: migrations, hashed keys, request log, feedback upserts, retention, export."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from tunery.errors import ConfigError, NotFoundError, StoreError
from tunery.store import Store, create_key, list_keys, revoke_key, verify_key
from tunery.store.feedback_export import export_feedback
from tunery.store.migrations import MIGRATIONS
from tunery.store.owners import LOCAL_OWNER
from tunery.store.requests import (
    LoggedCompletion,
    count_completions,
    get_completion,
    prune_completions,
    record_feedback,
)


def make_entry(cid, answer="4", model="base", created_at="", kind="chat"):
    return LoggedCompletion(id=cid, model=model, kind=kind,
                            messages=[{"role": "user", "content": f"question {cid}"}], outputs=[answer],
                            finish_reason="stop", prompt_tokens=5, completion_tokens=1, latency_ms=3,
                            created_at=created_at)


def test_store_records_migrations_once(store):
    if store.dialect == "sqlite":
        assert store.query_one("PRAGMA journal_mode")["journal_mode"] == "wal"
    assert store.schema_version == len(MIGRATIONS)
    again = Store(store.url, schema=store.schema)  # reopening applies nothing twice
    assert again.schema_version == len(MIGRATIONS)
    assert len(again.query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)
    again.close()


def test_store_refuses_a_newer_schema(store):
    store.execute("INSERT INTO schema_migrations VALUES (?, ?)", (len(MIGRATIONS) + 1, "x"))
    with pytest.raises(StoreError, match="newer"):
        Store(store.url, schema=store.schema)


def test_keys_are_stored_hashed_and_verified(store):
    record, secret = create_key(store, "ci", admin=True)
    raw = [dict(row) for row in store.query("SELECT * FROM api_keys")]
    assert secret not in repr(raw) and secret.split("_", 2)[2] not in repr(raw)
    found = verify_key(store, secret)
    assert found is not None and found.id == record.id and found.admin
    assert verify_key(store, secret + "x") is None
    assert verify_key(store, "tny_" + record.id + "_wrong") is None
    assert verify_key(store, "not-a-key") is None
    assert [k.id for k in list_keys(store)] == [record.id]


def test_revoked_key_no_longer_verifies(store):
    record, secret = create_key(store, "old")
    revoke_key(store, record.id)
    assert verify_key(store, secret) is None
    assert list_keys(store)[0].revoked_at is not None
    with pytest.raises(NotFoundError):
        revoke_key(store, "nope")


def test_feedback_upserts_and_unknown_ids_are_not_found(store):
    store_entry = make_entry("c1")
    from tunery.store.requests import log_completion
    log_completion(store, store_entry)
    assert get_completion(store, LOCAL_OWNER, "c1").outputs == ["4"]
    record_feedback(store, LOCAL_OWNER, "c1", 1)
    updated = record_feedback(store, LOCAL_OWNER, "c1", -1, correction="four")
    assert updated.rating == -1 and updated.correction == "four"
    assert len(store.query("SELECT * FROM feedback")) == 1
    with pytest.raises(NotFoundError):
        record_feedback(store, LOCAL_OWNER, "missing", 1)
    with pytest.raises(ConfigError):
        record_feedback(store, LOCAL_OWNER, "c1", 2)


def test_retention_prunes_old_rows_with_their_feedback(store):
    from tunery.store.requests import log_completion
    old = (datetime.now(timezone.utc) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    log_completion(store, make_entry("old", created_at=old))
    log_completion(store, make_entry("new"))
    record_feedback(store, LOCAL_OWNER, "old", 1)
    assert prune_completions(store, retention_days=7) == 1
    assert count_completions(store, LOCAL_OWNER) == 1
    assert store.query("SELECT * FROM feedback") == []


def test_export_follows_the_feedback_rules(store, tmp_path):
    from tunery.store.requests import log_completion
    for cid in ("good", "fixed", "bad", "unrated"):
        log_completion(store, make_entry(cid, answer=f"answer {cid}", model="m2" if cid == "unrated" else "m1"))
    record_feedback(store, LOCAL_OWNER, "good", 1)
    record_feedback(store, LOCAL_OWNER, "fixed", -1, correction="the right answer")
    record_feedback(store, LOCAL_OWNER, "bad", -1, comment="wrong")
    summary = export_feedback(store, LOCAL_OWNER, tmp_path / "out.jsonl", pairs_out=tmp_path / "pairs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert summary.examples == 2 and summary.pairs == 1 and summary.skipped == 1
    log_completion(store, make_entry("good-again", answer="answer good"))
    store.execute("UPDATE completions SET messages_json = ? WHERE id = 'good-again'",
                  (json.dumps([{"role": "user", "content": "question good"}]),))
    record_feedback(store, LOCAL_OWNER, "good-again", 1)
    assert export_feedback(store, LOCAL_OWNER, tmp_path / "dedup.jsonl").examples == 2  # an identical example counts once
    answers = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows}
    assert answers == {"question good": "answer good", "question fixed": "the right answer"}
    pair = json.loads((tmp_path / "pairs.jsonl").read_text())
    assert pair["preferred_output"][0]["content"] == "the right answer"
    assert pair["non_preferred_output"][0]["content"] == "answer fixed"
    assert pair["input"]["messages"] == [{"role": "user", "content": "question fixed"}]
    assert export_feedback(store, LOCAL_OWNER, tmp_path / "m2.jsonl", model="m2").examples == 0
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert export_feedback(store, LOCAL_OWNER, tmp_path / "later.jsonl", since=tomorrow).examples == 0
    with pytest.raises(ConfigError):
        export_feedback(store, LOCAL_OWNER, tmp_path / "x.jsonl", since="last tuesday")
