"""What the engine asks of a decode backend, and which backend serves a model.

A backend holds the model's weights, its adapters and every running sequence's KV cache, and runs
forward passes; the engine (`engine.py`) decides what each pass carries. Two backends implement
this: `TorchBackend` (any model, through torch) and `LaneBackend` (int4 Llama-family decoders,
compiled passes). Knows nothing of requests, sampling or stops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tunery.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from tunery.inference.lora import AdapterSlots

DECODE_CHOICES = ("auto", "torch", "lane")
DECODE_HELP = ("auto (default: the compiled fast lane where it applies, else torch), torch, or lane (refused, with "
               "the reason, where the lane does not apply). Default from TUNERY_DECODE.")


@dataclass(frozen=True)
class Prompt:
    """A new sequence's whole prompt, prefilled in one pass with others."""

    key: int
    ids: list[int]
    slot: int  # adapter slot, 0 for none
    reserve: int  # cache positions to reserve up front (caches grow past it)


@dataclass(frozen=True)
class Row:
    """A sequence's tokens in one step: `tokens` at positions `start`, `start + 1`, ... Whatever the
    sequence's cache held at or past `start` is replaced. Logits come back for its last `logits`
    positions (a draft wants all, a decode token one, a prompt chunk that does not end it none)."""

    key: int
    tokens: list[int]
    start: int
    slot: int
    logits: int = 1
    reserve: int = 0  # as Prompt.reserve, for a sequence whose first row this is (a chunked prompt)


class Backend(Protocol):
    name: str  # "torch" or "lane"
    max_rows: int | None  # token rows one step takes (None: any number)
    chunked_prefill: bool  # a prompt may be fed in chunks by `step`, beside other sequences' tokens
    slots: AdapterSlots  # the adapters installed on the model, by slot
    draft_lengths: tuple[int, int]  # prompt-lookup drafts: first and longest length (its cost per token)
    max_context: int

    def describe(self) -> str:
        """A few words for the start banner (threads, build)."""

    def prefill(self, prompts: list[Prompt]) -> torch.Tensor:
        """Run the prompts as new sequences; logits [len(prompts), vocab] of each one's last position."""

    def step(self, rows: list[Row]) -> torch.Tensor:
        """One pass; logits [sum of rows' `logits`, vocab], in row order."""

    def rewind(self, key: int, length: int) -> None:
        """Keep only the first `length` positions of a sequence's cache (after a partly accepted draft)."""

    def free(self, keys: list[int]) -> None:
        """Forget these sequences' caches."""

    def clear(self) -> None:
        """Forget every sequence (after a failed step)."""

    def load_adapter(self, weights) -> int:
        """Install a LoRA adapter (`lora.LoraWeights`); returns its slot. Refuses what it cannot apply."""

    def unload_adapter(self, slot: int) -> None:
        """Remove an adapter no running sequence uses any more."""


def decode_choice(decode: str | None) -> str:
    """`decode`, else TUNERY_DECODE, else auto; checked."""
    choice = (decode or os.environ.get("TUNERY_DECODE") or "auto").strip().lower()
    if choice not in DECODE_CHOICES:
        source = "--decode" if decode else "TUNERY_DECODE"
        raise ConfigError(f"{source} {choice!r} is not one of {', '.join(DECODE_CHOICES)}", code="bad_decode")
    return choice


def open_backend(model, max_context: int, decode: str | None = None, *, small_decode_threads: int | None = None,
                 library=None) -> tuple[Backend, str]:
    """The backend `decode` asks for, and why it runs: `auto` takes the lane where it applies."""
    from tunery.inference.fastlane import FastLaneUnavailable
    from tunery.inference.lane_backend import LaneBackend
    from tunery.inference.torch_backend import TorchBackend

    choice = decode_choice(decode)
    if choice == "torch":
        return TorchBackend(model, max_context, small_decode_threads=small_decode_threads), "asked for (--decode torch)"
    try:
        lane = LaneBackend(model, max_context, library=library)
    except FastLaneUnavailable as exc:
        if choice == "lane":
            raise ConfigError(f"--decode lane: the fast lane does not apply: {exc}", code="lane_unavailable",
                              hint="use --decode auto (falls back to torch) or --decode torch") from None
        return TorchBackend(model, max_context, small_decode_threads=small_decode_threads), \
            f"the fast lane does not apply: {exc}"
    return lane, "asked for (--decode lane)" if choice == "lane" else "int4 weights on a decoder the lane computes"
