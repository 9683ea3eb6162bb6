"""Batched, deterministic greedy generation for evaluation: chat template, left padding, KV cache.

Prompts are encoded with `tunery.data.template.encode_prompt`, the same tokens training and
serving see. This is the evaluation path only; the serving engine lives in `tunery.inference`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from tunery.data.template import encode_prompt, stop_token_ids


@dataclass(frozen=True)
class Generation:
    """One completion: its text, how many tokens it took, and whether it hit the length limit."""

    text: str
    num_tokens: int
    truncated: bool
    prompt_tokens: int = 0
    latency_s: float = 0.0  # wall time of the batch it was generated in (all its rows finish together)


def encode_prompts(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    return [list(encode_prompt(tokenizer, messages, add_generation_prompt=True)) for messages in prompts]


def generate_texts(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256,
                   batch_size: int = 8, encoded: list[list[int]] | None = None) -> list[Generation]:
    """Greedy completions of chat prompts, in input order.

    Prompts are batched longest first, so each batch pads little; greedy decoding makes the
    result independent of batch order up to floating-point noise in the padded positions.
    `encoded`: the prompts' token ids when the caller has them already.
    """
    encoded = encoded if encoded is not None else encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    results: list[Generation | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        started = time.perf_counter()
        generations = generate_batch(model, tokenizer, [encoded[i] for i in batch], max_new_tokens=max_new_tokens)
        took_s = time.perf_counter() - started
        for index, generation in zip(batch, generations):
            results[index] = replace(generation, prompt_tokens=len(encoded[index]), latency_s=took_s)
    done = [r for r in results if r is not None]
    assert len(done) == len(results), "every prompt is in exactly one batch"
    return done


def generate_batch(model, tokenizer, batch_ids: list[list[int]], *, max_new_tokens: int) -> list[Generation]:
    """One left-padded batch through `model.generate` (greedy, with its KV cache)."""
    import torch
    from transformers import GenerationConfig


    stops = list(stop_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    device = next(model.parameters()).device
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops,
                              pad_token_id=pad_id, use_cache=True)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=config)
    return [cut_generation(tokenizer, row[width:].tolist(), set(stops), max_new_tokens) for row in output]


def cut_generation(tokenizer, new_ids: list[int], stops: set[int], max_new_tokens: int) -> Generation:
    """Decode the tokens before the first stop token; padding after it is dropped."""
    kept: list[int] = []
    stopped = False
    for token in new_ids:
        if token in stops:
            stopped = True
            break
        kept.append(token)
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Generation(text=text, num_tokens=len(kept), truncated=not stopped and len(kept) >= max_new_tokens)
