"""Feedback review (admin): rated answers waiting for the next loop, shown PII-scrubbed, each to
approve (optionally with an edited correction) or reject. A loop with review on trains only on
approved items."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request

from tunery.platform.pii import Scrubber
from tunery.store.feedback_reviews import QUEUES, review_feedback, review_queue
from tunery.web.app import render, templates
from tunery.web.auth import Viewer, admin_viewer, posted_admin

router = APIRouter()


def scrubbed(item) -> dict:
    """The prompt, answer and correction of one item, scrubbed together (one placeholder table)."""
    messages = [m for m in item.completion.messages if isinstance(m.get("content"), str)]
    answer = item.completion.outputs[0] if item.completion.outputs else ""
    correction = (item.review.correction if item.review and item.review.correction else item.feedback.correction) or ""
    texts = Scrubber().scrub_example([m["content"] for m in messages] + [answer, correction]).texts
    return {"messages": [{"role": m["role"], "content": t} for m, t in zip(messages, texts, strict=False)],
            "answer": texts[len(messages)], "correction": texts[len(messages) + 1]}


@router.get("/feedback")
def feedback_page(request: Request, queue: str = "pending", who: Viewer = Depends(admin_viewer)):
    items = review_queue(request.app.state.tunery.store, who.caller, queue)
    counts = {name: len(review_queue(request.app.state.tunery.store, who.caller, name)) for name in QUEUES}
    return render(request, "feedback.html", who, active="feedback", queue=queue, queues=QUEUES, counts=counts,
                  items=[{"item": item, **scrubbed(item)} for item in items])


@router.post("/feedback/{completion_id}")
def review(completion_id: str, request: Request, decision: str = Form(...), correction: str = Form(""),
           who: Viewer = Depends(posted_admin)):
    done = review_feedback(request.app.state.tunery.store, who.caller, completion_id, decision, correction)
    return templates.TemplateResponse(request, "_review_done.html", {"review": done})
