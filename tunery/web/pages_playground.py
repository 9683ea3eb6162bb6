"""Playground: chat with any served model, one or two side by side, and rate or correct answers.

Answers stream through the API's own chat handler and are logged like any API request; ratings
and corrections go through the handler behind /v1/feedback.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, ConfigDict, Field

from tunery.server import serving_admin, serving_chat
from tunery.server.protocol import ChatCompletionRequest, ChatMessage, FeedbackRequest
from tunery.web.app import render, templates
from tunery.web.auth import Viewer, posted_viewer, viewer

router = APIRouter()


class PlaygroundChat(BaseModel):
    """What the playground's script posts: a model, the conversation so far and two settings."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=8192)


def served_models(state, who: Viewer) -> list[str]:
    """What /v1/models lists for this key: the base, adapters and the key's fine-tuned models."""
    return [card.id for card in serving_admin.list_models(state, who.caller).data]


@router.get("/playground")
def playground_page(request: Request, model: str | None = None, who: Viewer = Depends(viewer)):
    models = served_models(request.app.state.tunery, who)
    if model and model not in models:
        models.append(model)  # a fine-tuned model loads on first use, as over the API
    return render(request, "playground.html", who, active="playground", models=models, selected=model)


@router.post("/api/chat")
async def chat(body: PlaygroundChat, request: Request, who: Viewer = Depends(posted_viewer)):
    req = ChatCompletionRequest(model=body.model, messages=body.messages, temperature=body.temperature,
                                max_tokens=body.max_tokens, stream=True)
    state = request.app.state.tunery
    await asyncio.to_thread(state.use_fine_tuned, req.model, who.caller)  # as /v1/chat/completions does
    return await serving_chat.create_chat_completion(state, req, who.caller, request)


@router.post("/api/feedback")
def feedback(request: Request, completion_id: str = Form(..., max_length=200), rating: int = Form(...),
             correction: str = Form("", max_length=100_000), who: Viewer = Depends(posted_viewer)):
    req = FeedbackRequest(completion_id=completion_id, rating=rating, correction=correction.strip() or None)
    recorded = serving_admin.submit_feedback(request.app.state.tunery, req, who.caller)
    return templates.TemplateResponse(request, "_feedback_done.html", {"feedback": recorded})
