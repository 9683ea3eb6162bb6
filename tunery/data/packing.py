"""Turn tokenized examples into model batches: padding-free packing or padded rows.

Packing concatenates a micro-batch's examples into one row whose position ids restart at 0 for
each example; transformers then builds a block-diagonal causal mask from those positions (sdpa,
eager and flash attention alike), so no token attends across examples. Targets are shifted here,
per example, so an example's last token never learns to predict the next example's first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunery.data.template import IGNORE_INDEX
from tunery.types import TokenizedExample


@dataclass
class Batch:
    """Model inputs for one micro-batch.

    `targets[b, i]` is the token position i must predict (already shifted), or -100.
    `attention_mask` is None for packed rows (positions carry the boundaries).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None
    num_examples: int
    filler_tokens: int = 0  # a packed row's trailing filler example (pad_packed_row)

    @property
    def num_trained_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        """Real (non-padding, non-filler) tokens in the batch."""
        if self.attention_mask is None:
            return int(self.input_ids.numel()) - self.filler_tokens
        return int(self.attention_mask.sum())


def shift_targets(labels: list[int]) -> list[int]:
    """targets[i] = labels[i + 1]; the last position predicts nothing."""
    return list(labels[1:]) + [IGNORE_INDEX]


def pack_examples(examples: list[TokenizedExample]) -> Batch:
    """One row holding every example back to back, positions restarting per example."""
    if not examples:
        raise ValueError("cannot pack an empty list of examples")
    input_ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for example in examples:
        input_ids.extend(example.input_ids)
        positions.extend(range(len(example.input_ids)))
        targets.extend(shift_targets(example.labels))
    return Batch(
        input_ids=torch.tensor([input_ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        targets=torch.tensor([targets], dtype=torch.long),
        attention_mask=None,
        num_examples=len(examples),
    )


def pad_examples(examples: list[TokenizedExample], pad_token_id: int) -> Batch:
    """The reference layout: one row per example, right-padded to the longest, with a 2D mask."""
    if not examples:
        raise ValueError("cannot pad an empty list of examples")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        targets[row, :n] = torch.tensor(shift_targets(example.labels))
        mask[row, :n] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids=input_ids, position_ids=positions, targets=targets, attention_mask=mask,
                 num_examples=len(examples))


def pad_packed_row(batch: Batch, multiple: int, pad_token_id: int | None) -> Batch:
    """A packed row lengthened to a multiple of `multiple` tokens by one filler example at its end.

    The filler's positions restart at 0, so it attends only to itself and no example attends to it,
    and its targets are all ignored: the row's loss, its gradients and every real token's output are
    those of the row without it. What changes is the row's length, which then takes one of a few
    values: oneDNN builds (JIT-compiles) a GEMM for every new row count, and on a CPU that costs more
    than the filler's compute (see `FILLER_MULTIPLE` in tunery.training.loop). Its tokens are the pad
    token, or for a tokenizer without one the row's last token (nothing reads them).
    """
    if batch.attention_mask is not None or multiple <= 1 or batch.input_ids.shape[0] != 1:
        return batch
    extra = -batch.input_ids.shape[1] % multiple
    if extra == 0:
        return batch
    filler = torch.arange(extra, dtype=torch.long)[None]
    token = int(batch.input_ids[0, -1]) if pad_token_id is None else pad_token_id
    return Batch(
        input_ids=torch.cat([batch.input_ids, torch.full((1, extra), token, dtype=torch.long)], dim=1),
        position_ids=torch.cat([batch.position_ids, filler], dim=1),
        targets=torch.cat([batch.targets, torch.full((1, extra), IGNORE_INDEX, dtype=torch.long)], dim=1),
        attention_mask=None,
        num_examples=batch.num_examples,
        filler_tokens=batch.filler_tokens + extra,
    )


def make_batch(examples: list[TokenizedExample], *, packing: bool, pad_token_id: int) -> Batch:
    return pack_examples(examples) if packing else pad_examples(examples, pad_token_id)


def split_by_tokens(items: list, max_tokens: int, length: Callable) -> list[list]:
    """Consecutive groups of at most `max_tokens` tokens (an item longer than that stands alone)."""
    if max_tokens <= 0:
        return [items]
    groups: list[list] = []
    current: list = []
    size = 0
    for item in items:
        n = length(item)
        if current and size + n > max_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    return [*groups, current] if current else groups
