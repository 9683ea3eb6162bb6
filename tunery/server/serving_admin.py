"""Handlers for models, adapters (admin), API keys (admin) and feedback."""

from __future__ import annotations

import asyncio

from tunery.errors import NotFoundError
from tunery.platform.models import list_fine_tuned
from tunery.server.auth import Caller
from tunery.server.protocol import CreateKeyRequest, FeedbackRequest, LoadAdapterRequest, ModelCard, ModelList
from tunery.server.state import ServerState
from tunery.store import create_key, list_keys, revoke_key
from tunery.store.owners import Actor
from tunery.store.requests import record_feedback


def list_models(state: ServerState, caller: Caller | None = None) -> ModelList:
    """The base, the adapters loaded at start, and the fine-tuned job models the caller may use."""
    cards = [ModelCard(id=state.base_name, created=state.started_at)]
    for name in state.engine.adapter_names():
        if not name.startswith("ft:"):
            cards.append(ModelCard(id=name, created=state.adapter_created.get(name, state.started_at),
                                   parent=state.base_name))
    if caller is not None:
        for model in list_fine_tuned(state.store, Actor(caller.key_id, caller.admin)):
            if model.base == state.base_name:
                cards.append(ModelCard(id=model.name, created=model.created, parent=state.base_name))
    return ModelList(data=cards)


def get_model(state: ServerState, model_id: str, caller: Caller | None = None) -> ModelCard:
    for card in list_models(state, caller).data:
        if card.id == model_id:
            return card
    raise NotFoundError(f"no model named {model_id!r} is served", code="model_not_found")


async def load_adapter(state: ServerState, req: LoadAdapterRequest) -> dict:
    run_dir = state.find_run(req.run)
    # Reading weights takes a moment: keep the event loop (and other clients' streams) moving.
    await asyncio.to_thread(state.load_adapter, req.name, run_dir)
    return {"object": "adapter", "id": req.name, "parent": state.base_name, "loaded": True}


async def unload_adapter(state: ServerState, name: str) -> dict:
    await asyncio.to_thread(state.engine.unload_adapter, name)
    state.adapter_created.pop(name, None)
    return {"object": "adapter", "id": name, "deleted": True}


def list_adapters(state: ServerState) -> dict:
    return {"object": "list", "data": [{"object": "adapter", "id": n, "parent": state.base_name}
                                       for n in state.engine.adapter_names()]}


def submit_feedback(state: ServerState, req: FeedbackRequest, caller: Caller) -> dict:
    feedback = record_feedback(state.store, caller, req.completion_id, req.rating, req.correction, req.comment)
    return {"object": "feedback", "completion_id": feedback.completion_id, "rating": feedback.rating,
            "correction": feedback.correction, "comment": feedback.comment, "updated_at": feedback.updated_at}


def _key_card(key) -> dict:
    return {"object": "api_key", "id": key.id, "name": key.name, "admin": key.admin,
            "created_at": key.created_at, "revoked_at": key.revoked_at}


def create_api_key(state: ServerState, req: CreateKeyRequest) -> dict:
    record, secret = create_key(state.store, req.name, admin=req.admin)
    return {**_key_card(record), "key": secret}


def list_api_keys(state: ServerState) -> dict:
    return {"object": "list", "data": [_key_card(k) for k in list_keys(state.store)]}


def revoke_api_key(state: ServerState, key_id: str) -> dict:
    return _key_card(revoke_key(state.store, key_id))
