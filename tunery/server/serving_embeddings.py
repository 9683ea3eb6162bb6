"""`/v1/embeddings`: the served model's (or an adapter's) mean-pooled hidden states in OpenAI's shape.

Texts are tokenized as literal text (no chat template), ids are taken as given; each input must be
non-empty and fit the model's context. The pooling itself is `tunery.inference.embedding`.
"""

from __future__ import annotations

import asyncio
import base64
import struct

from tunery.data.template import encode_text
from tunery.server.errors import ApiError
from tunery.server.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from tunery.server.state import ServerState

MAX_INPUTS = 2048  # as OpenAI's limit on one request


async def create_embeddings(state: ServerState, req: EmbeddingRequest) -> EmbeddingList:
    adapter = state.adapter_for(req.model)
    if req.dimensions is not None:
        raise ApiError(400, "dimensions is not supported: the embedding has the model's hidden size",
                       param="dimensions")
    token_lists = _token_lists(state, req.input)
    vectors = await asyncio.to_thread(state.engine.embed, token_lists, adapter)
    data = [Embedding(index=i, embedding=_encoded(vector, req.encoding_format)) for i, vector in enumerate(vectors)]
    used = sum(len(ids) for ids in token_lists)
    return EmbeddingList(data=data, model=req.model, usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used))


def _token_lists(state: ServerState, inputs) -> list[list[int]]:
    if isinstance(inputs, str) or (inputs and all(isinstance(x, int) for x in inputs)):
        inputs = [inputs]
    if not inputs or len(inputs) > MAX_INPUTS:
        raise ApiError(400, f"input must hold 1 to {MAX_INPUTS} items", param="input")
    vocab = state.engine.model.config.vocab_size
    token_lists = []
    for index, item in enumerate(inputs):
        ids = encode_text(state.tokenizer, item) if isinstance(item, str) else list(item)
        if not ids:
            raise ApiError(400, f"input[{index}] is empty", param="input")
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"input[{index}] holds a token id outside the vocabulary (0-{vocab - 1})",
                           param="input")
        if len(ids) > state.engine.max_context:
            raise ApiError(400, f"input[{index}] is {len(ids)} tokens, more than the model's context of "
                                f"{state.engine.max_context}", param="input", code="context_length_exceeded")
        token_lists.append(ids)
    return token_lists


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
