"""Scoring what is served: greedy completions through the serving engine, with the weights and the
decode backend `tunery serve --weights W` would answer with (int4 through the compiled fast lane).

`tunery eval/compare --weights W` use this instead of Hugging Face `generate`, so a gate scores
the configuration that will serve. Knows the engine's submit/callback surface; nothing of metrics.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from tunery.errors import EvaluationError
from tunery.evaluation.generation import Generation, encode_prompts
from tunery.inference import SamplingParams
from tunery.inference.loaded_engine import load_engine

IN_FLIGHT = 128  # requests queued at once (the engine refuses more than its queue holds)


def load_served(model_ref: str, *, weights: str, dtype: str, batch_size: int):
    """The engine `tunery serve` builds for `model_ref` with these weights (not started)."""
    return load_engine(model_ref, dtype=dtype, weights=weights, max_batch_size=max(batch_size, 1))


def serve_texts(loaded, prompts: list[list[dict]], *, max_new_tokens: int) -> list[Generation]:
    """Greedy completions of chat prompts through the engine (its LoRA run's adapter, if any), in order."""
    engine = loaded.engine.start()
    encoded = encode_prompts(loaded.tokenizer, prompts)
    results: list[Generation | None] = [None] * len(encoded)
    room, finished = threading.BoundedSemaphore(IN_FLIGHT), threading.Event()
    left = [len(encoded)]
    lock = threading.Lock()

    def sink(index: int, limit: int):
        pieces: list[str] = []
        started = time.perf_counter()

        def on_event(event) -> None:
            pieces.append(event.text)
            if event.finish_reason is None:
                return
            stopped = event.finish_reason == "stop"
            # The engine counts the stop token; `generate`'s path counts the tokens before it.
            results[index] = Generation(text="".join(pieces).strip(), num_tokens=event.completion_tokens - stopped,
                                        truncated=event.finish_reason == "length" and event.completion_tokens >= limit,
                                        prompt_tokens=event.prompt_tokens, latency_s=time.perf_counter() - started)
            room.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()
        return on_event

    try:
        for index, ids in enumerate(encoded):
            limit = max(1, min(max_new_tokens, engine.max_context - len(ids)))
            room.acquire()
            engine.submit(ids, SamplingParams(max_new_tokens=limit, temperature=0.0), sink(index, limit), loaded.adapter)
        if encoded:
            finished.wait()
    finally:
        engine.stop()
    failed = [i for i, r in enumerate(results) if r is None]
    if failed:
        raise EvaluationError(f"the serving engine returned no completion for {len(failed)} prompts")
    return [r for r in results if r is not None]  # none is, after the check above


@contextmanager
def served_model(loaded):
    """The engine's torch model with its LoRA run's adapter routed to every row (for the loss)."""
    backend = loaded.engine.backend
    if loaded.adapter is not None:
        backend.slots.routing.groups = [(loaded.engine.adapters[loaded.adapter].slot, None)]
    try:
        yield loaded.engine.model
    finally:
        backend.slots.routing.groups = []
