"""The generation engine: KV cache, step-level batching, many LoRA adapters on one base.

Knows tokens, tensors and adapters; nothing about HTTP, keys or logs. `Engine` is imported on
first use so that `tunery.inference.params` stays free of torch.
"""

from tunery.inference.params import GenerationEvent, SamplingParams

__all__ = ["Engine", "GenerationEvent", "SamplingParams"]


def __getattr__(name: str):
    if name == "Engine":
        from tunery.inference.engine import Engine

        return Engine
    raise AttributeError(name)
