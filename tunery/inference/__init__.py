"""The generation engine: KV cache, step-level batching, many LoRA adapters on one base.

Knows tokens, tensors and adapters; nothing about HTTP, keys or logs.
"""

from tunery.inference.engine import Engine, GenerationEvent
from tunery.inference.sampling import SamplingParams

__all__ = ["Engine", "GenerationEvent", "SamplingParams"]
