"""What the engine tracks: a request (its prompt, what is fed and generated, its sampling and stop
state), a loaded adapter, and how arriving prompts are grouped into prefill passes. Knows nothing
of backends or threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunery.inference.backend import Row
from tunery.inference.logits import RowShaper
from tunery.inference.params import GenerationEvent, SamplingParams
from tunery.inference.speculation import DraftState
from tunery.inference.stops import TextTracker


@dataclass
class Sequence:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    slot: int
    on_event: Callable[[GenerationEvent], None]
    tracker: TextTracker
    generator: torch.Generator
    draft: DraftState
    fed: int = 0  # tokens already in the backend's cache
    last_token: int = -1
    history: list[int] = field(default_factory=list)  # prompt + generated tokens (drafts come from it)
    generated: int = 0
    aborted: bool = False
    done: bool = False
    shaper: RowShaper | None = None  # logit_bias, penalties, grammar mask, logprobs (inference/logits.py)
    logprobs: list[dict] = field(default_factory=list)  # entries not yet sent with an event

    def next_row(self) -> Row:
        return Row(self.id, [self.last_token], self.fed, self.slot)


def group_by_length(seqs: list[Sequence], max_tokens: int) -> list[list[Sequence]]:
    """Consecutive groups (by prompt length) whose padded size stays within `max_tokens`."""
    groups: list[list[Sequence]] = []
    for seq in sorted(seqs, key=lambda s: len(s.prompt_ids)):
        group = groups[-1] if groups else None
        if group and len(seq.prompt_ids) * (len(group) + 1) <= max_tokens \
                and len(seq.prompt_ids) <= 2 * len(group[0].prompt_ids):
            group.append(seq)
        else:
            groups.append([seq])
    return groups


@dataclass
class LoadedAdapter:
    slot: int
    source: Path
    last_used_s: float = field(default_factory=time.monotonic)
