"""Plain data crossing the engine's boundary: what a request asks for, and what comes back.

No torch here, so the server can import these without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the sampler and when it must stop."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # benchmarks only: generate exactly max_new_tokens
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: not asked; N: the picked token's log-probability and the top N
    grammar: str | None = None  # an llguidance grammar (inference/grammar.py) the output must match


@dataclass(frozen=True)
class GenerationEvent:
    """`text` is new output; `finish_reason` is set on the last event ("stop", "length", "abort", "error")."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[dict, ...] = ()  # OpenAI logprobs entries of the tokens since the previous event
