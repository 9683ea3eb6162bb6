"""Embeddings from the served model: a text's last hidden states, mean-pooled and scaled to length 1.

What `/v1/embeddings` answers, so a RAG client needs one endpoint. Runs on the engine's thread
(`Engine.embed`), with the request's adapter routed as for a prompt; knows nothing of HTTP.
"""

from __future__ import annotations

import torch

from tunery.inference.lora import AdapterSlots
from tunery.inference.torch_backend import route


def embed_ids(model, slots: AdapterSlots, ids: list[int], slot: int = 0) -> list[float]:
    """The unit-length mean of the final hidden states over `ids` (the model's last norm applied)."""
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    route(slots, [slot], device)
    with torch.inference_mode():
        hidden = decoder(input_ids=torch.tensor([ids], device=device), use_cache=False).last_hidden_state
    return torch.nn.functional.normalize(hidden[0].float().mean(dim=0), dim=0).tolist()
