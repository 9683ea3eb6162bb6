"""The request log and feedback: one row per completion, at most one feedback row per completion.

Every read and write carries the acting key (`tunery.store.owners`): feedback on a completion that
is not in the log, or that another key made, is the same NotFoundError; a second rating replaces
the first. Retention pruning (a server-wide policy) deletes old completions with their feedback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from tunery.errors import ConfigError, NotFoundError
from tunery.store.db import Store, utc_now
from tunery.store.owners import Actor, audit_if_foreign, owned_by


@dataclass(frozen=True)
class LoggedCompletion:
    """What the server logs about one completion (`messages` is the prompt as sent)."""

    id: str
    model: str
    kind: str  # "chat" or "text"
    messages: list
    outputs: list[str]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    key_id: str | None = None
    created_at: str = ""


@dataclass(frozen=True)
class Feedback:
    completion_id: str
    rating: int
    correction: str | None
    comment: str | None
    created_at: str
    updated_at: str


def log_completion(store: Store, entry: LoggedCompletion) -> None:
    store.execute(
        "INSERT INTO completions (id, created_at, key_id, model, kind, messages_json, outputs_json, finish_reason,"
        " prompt_tokens, completion_tokens, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry.id, entry.created_at or utc_now(), entry.key_id, entry.model, entry.kind,
         json.dumps(entry.messages, ensure_ascii=False), json.dumps(entry.outputs, ensure_ascii=False),
         entry.finish_reason, entry.prompt_tokens, entry.completion_tokens, entry.latency_ms),
    )


def _row_to_completion(row) -> LoggedCompletion:
    return LoggedCompletion(
        id=row["id"], model=row["model"], kind=row["kind"], messages=json.loads(row["messages_json"]),
        outputs=json.loads(row["outputs_json"]), finish_reason=row["finish_reason"],
        prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
        latency_ms=row["latency_ms"], key_id=row["key_id"], created_at=row["created_at"],
    )


def get_completion(store: Store, actor: Actor, completion_id: str) -> LoggedCompletion:
    """The completion `actor` may see; another key's completion is as missing as an unknown id."""
    condition, params = owned_by(actor)
    row = store.query_one(f"SELECT * FROM completions WHERE id = ? AND {condition}", (completion_id, *params))
    if row is None:
        raise NotFoundError("no logged completion with this id",
                            hint="feedback needs the id of a completion this server logged for your key")
    return _row_to_completion(row)


def count_completions(store: Store, actor: Actor) -> int:
    condition, params = owned_by(actor)
    rows = store.query(f"SELECT COUNT(*) AS n FROM completions WHERE {condition}", params)
    return int(rows[0]["n"])


def record_feedback(store: Store, actor: Actor, completion_id: str, rating: int, correction: str | None = None,
                    comment: str | None = None) -> Feedback:
    """Insert or replace the feedback on a completion `actor` may see; admins' changes to others' are audited."""
    if rating not in (1, -1):
        raise ConfigError(f"rating must be 1 or -1, got {rating!r}")
    completion = get_completion(store, actor, completion_id)
    now = utc_now()
    store.execute(
        "INSERT INTO feedback (completion_id, rating, correction, comment, key_id, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(completion_id) DO UPDATE SET rating = excluded.rating,"
        " correction = excluded.correction, comment = excluded.comment, key_id = excluded.key_id,"
        " updated_at = excluded.updated_at",
        (completion_id, rating, correction, comment, actor.key_id, now, now),
    )
    audit_if_foreign(store, actor, "feedback.record", "completion", completion_id, completion.key_id)
    row = store.query_one("SELECT * FROM feedback WHERE completion_id = ?", (completion_id,))
    assert row is not None, completion_id  # written just above
    return Feedback(completion_id=row["completion_id"], rating=row["rating"], correction=row["correction"],
                    comment=row["comment"], created_at=row["created_at"], updated_at=row["updated_at"])


def list_rated_completions(store: Store, actor: Actor, since: str | None = None,
                           model: str | None = None) -> list[tuple[LoggedCompletion, Feedback]]:
    """Completions `actor` may see that have feedback, oldest first, filtered by creation time and model.

    Only feedback given by the completion's own key (or by an admin) counts, so no row another key
    wrote before ownership was enforced can reach a training set.
    """
    condition, params = owned_by(actor, "c.key_id")
    sql = ("SELECT c.*, f.rating, f.correction, f.comment, f.created_at AS f_created, f.updated_at AS f_updated"
           " FROM completions c JOIN feedback f ON f.completion_id = c.id"
           f" WHERE {condition} AND (f.key_id IS NOT DISTINCT FROM c.key_id OR f.key_id IS NULL"
           "  OR f.key_id IN (SELECT id FROM api_keys WHERE admin = 1))")
    args = list(params)
    if since:
        sql += " AND c.created_at >= ?"
        args.append(since)
    if model:
        sql += " AND c.model = ?"
        args.append(model)
    rows = store.query(sql + " ORDER BY c.created_at, c.id", tuple(args))
    return [(_row_to_completion(r), Feedback(completion_id=r["id"], rating=r["rating"], correction=r["correction"],
                                             comment=r["comment"], created_at=r["f_created"],
                                             updated_at=r["f_updated"])) for r in rows]


def prune_completions(store: Store, retention_days: float, now: datetime | None = None) -> int:
    """Delete completions (and their feedback) older than `retention_days`; returns rows deleted."""
    if retention_days <= 0:
        raise ConfigError(f"retention must be a positive number of days, got {retention_days}")
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    return store.execute("DELETE FROM completions WHERE created_at < ?",
                         (cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
