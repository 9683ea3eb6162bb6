"""The feedback review queue on both backends: pending until reviewed, approved items (with edited
corrections) are what a reviewed loop trains on, rejected ones never are; admins only, audited."""

from __future__ import annotations

import pytest

from tunery.errors import NotFoundError
from tunery.store import create_key
from tunery.store.feedback_reviews import apply_reviews, review_feedback, review_queue
from tunery.store.owners import Actor, list_audit
from tunery.store.requests import LoggedCompletion, list_rated_completions, log_completion, record_feedback


def _rated(store, key_id: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        entry = LoggedCompletion(id=f"chatcmpl-{key_id}-{i}", model="helpdesk", kind="chat",
                                 messages=[{"role": "user", "content": f"question {i}, mail me at ann@example.com"}],
                                 outputs=[f"answer {i}"], finish_reason="stop", prompt_tokens=3, completion_tokens=2,
                                 latency_ms=5, key_id=key_id)
        log_completion(store, entry)
        record_feedback(store, Actor(key_id), entry.id, -1 if i % 2 else 1, f"better answer {i}" if i % 2 else None)
        ids.append(entry.id)
    return ids


def test_review_decides_what_a_reviewed_loop_trains_on(store):
    user, _ = create_key(store, "alice")
    admin_key, _ = create_key(store, "lead", admin=True)
    admin = Actor(admin_key.id, admin=True)
    ids = _rated(store, user.id, 4)
    assert [i.completion.id for i in review_queue(store, admin)] == ids
    review_feedback(store, admin, ids[0], "approved")
    review_feedback(store, admin, ids[1], "approved", correction="the reviewed answer 1")
    review_feedback(store, admin, ids[2], "rejected")
    assert [i.completion.id for i in review_queue(store, admin)] == [ids[3]]
    assert [i.completion.id for i in review_queue(store, admin, "approved")] == ids[:2]
    kept = apply_reviews(store, list_rated_completions(store, admin))
    assert [(c.id, f.correction) for c, f in kept] == [(ids[0], None), (ids[1], "the reviewed answer 1")]
    review_feedback(store, admin, ids[2], "approved")  # a second decision replaces the first
    assert len(apply_reviews(store, list_rated_completions(store, admin))) == 3
    actions = [a["action"] for a in list_audit(store) if a["object_type"] == "feedback"]
    assert actions.count("feedback.approved") == 3 and actions.count("feedback.rejected") == 1


def test_only_admins_review_and_only_existing_feedback(store):
    user, _ = create_key(store, "alice")
    ids = _rated(store, user.id, 1)
    with pytest.raises(NotFoundError):
        review_queue(store, Actor(user.id))
    with pytest.raises(NotFoundError):
        review_feedback(store, Actor(user.id), ids[0], "approved")
    with pytest.raises(NotFoundError):
        review_feedback(store, Actor(None, admin=True), "chatcmpl-missing", "approved")
