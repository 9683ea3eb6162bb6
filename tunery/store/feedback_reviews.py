"""Reviews of feedback before it trains: approved (with an optional edited correction) or rejected.

Feedback without a review is pending. A loop run with review on trains only on approved feedback,
an edited correction in place of the one given (`apply_reviews`). Reviewing reads other keys'
feedback, so it needs an admin; each decision is written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunery.errors import ConfigError, NotFoundError
from tunery.store.db import Store, utc_now
from tunery.store.owners import Actor, audit
from tunery.store.requests import Feedback, LoggedCompletion, list_rated_completions

DECISIONS = ("approved", "rejected")
QUEUES = ("pending", "approved", "rejected")


@dataclass(frozen=True)
class Review:
    completion_id: str
    status: str
    correction: str | None
    reviewer_key_id: str | None
    reviewed_at: str


@dataclass(frozen=True)
class ReviewItem:
    completion: LoggedCompletion
    feedback: Feedback
    review: Review | None

    @property
    def status(self) -> str:
        return self.review.status if self.review else "pending"


def _require_admin(actor: Actor) -> None:
    if not actor.admin:
        raise NotFoundError("the feedback review queue needs an admin key", code="admin_required")


def _reviews(store: Store) -> dict[str, Review]:
    rows = store.query("SELECT * FROM feedback_reviews")
    return {r["completion_id"]: Review(r["completion_id"], r["status"], r["correction"], r["reviewer_key_id"],
                                       r["reviewed_at"]) for r in rows}


def review_queue(store: Store, actor: Actor, status: str = "pending", model: str | None = None) -> list[ReviewItem]:
    """Rated completions in one queue (pending, approved or rejected), oldest first."""
    _require_admin(actor)
    if status not in QUEUES:
        raise ConfigError(f"unknown review queue {status!r}", hint=f"one of: {', '.join(QUEUES)}")
    reviews = _reviews(store)
    items = [ReviewItem(c, f, reviews.get(c.id)) for c, f in list_rated_completions(store, actor, model=model)]
    return [item for item in items if item.status == status]


def review_feedback(store: Store, actor: Actor, completion_id: str, decision: str,
                    correction: str | None = None) -> Review:
    """Approve (optionally replacing the correction) or reject the feedback on one completion."""
    _require_admin(actor)
    if decision not in DECISIONS:
        raise ConfigError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    rated = {c.id: (c, f) for c, f in list_rated_completions(store, actor)}
    if completion_id not in rated:
        raise NotFoundError(f"no feedback on completion {completion_id!r}")
    completion, feedback = rated[completion_id]
    edited = (correction or "").strip() or None
    if edited == (feedback.correction or None):
        edited = None  # unchanged: keep only what the reviewer added
    now = utc_now()
    store.execute("DELETE FROM feedback_reviews WHERE completion_id = ?", (completion_id,))
    store.execute("INSERT INTO feedback_reviews (completion_id, status, correction, reviewer_key_id, reviewed_at)"
                  " VALUES (?, ?, ?, ?, ?)", (completion_id, decision, edited if decision == "approved" else None,
                                              actor.key_id, now))
    audit(store, actor, f"feedback.{decision}", "feedback", completion_id, completion.key_id,
          {"edited": edited is not None})
    return Review(completion_id, decision, edited, actor.key_id, now)


def apply_reviews(store: Store, rated: list[tuple[LoggedCompletion, Feedback]]) -> list[tuple[LoggedCompletion, Feedback]]:
    """Only the approved items of `rated`, each with the reviewer's edited correction where there is one."""
    reviews = _reviews(store)
    kept = []
    for completion, feedback in rated:
        review = reviews.get(completion.id)
        if review is None or review.status != "approved":
            continue
        kept.append((completion, replace(feedback, correction=review.correction) if review.correction else feedback))
    return kept
