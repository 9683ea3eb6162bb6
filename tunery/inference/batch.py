"""The batch's KV cache: rows of different lengths left-padded into one tensor per layer.

Rows join after their own prefill (merge) and leave when done (select); padding that every
remaining row shares is trimmed away so the cache never grows for nothing.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Every layer of a cache the model has written holds both tensors (transformers types them optional,
    # and its layer union includes linear-attention layers, which the decoders served here do not have).
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr, misc]


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[2] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


class BatchCache:
    """A DynamicCache over the active rows plus the 2-D attention mask marking their padding."""

    def __init__(self):
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, columns], 1 where a real token sits

    @property
    def num_rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def held(self) -> tuple[DynamicCache, torch.Tensor]:
        """The cache and mask, for the operations that need rows in the batch."""
        assert self.cache is not None and self.mask is not None, "no rows in the batch"
        return self.cache, self.mask

    def append_rows(self, layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Add prefilled sequences (their cache tensors and [rows, width] mask) as the last rows."""
        if self.cache is None:
            self.cache, self.mask = DynamicCache(layers), mask
            return
        cache, held_mask = self.held()
        width, length = held_mask.shape[1], mask.shape[1]
        old, new_pad, old_pad = cache_tensors(cache), max(0, width - length), max(0, length - width)
        merged = [
            (torch.cat([_pad_left(k0, old_pad), _pad_left(k1, new_pad)]),
             torch.cat([_pad_left(v0, old_pad), _pad_left(v1, new_pad)]))
            for (k0, v0), (k1, v1) in zip(old, layers, strict=True)
        ]
        old_mask = torch.cat([held_mask.new_zeros(self.num_rows, old_pad), held_mask], dim=1)
        new_mask = torch.cat([mask.new_zeros(mask.shape[0], new_pad), mask], dim=1)
        self.cache, self.mask = DynamicCache(merged), torch.cat([old_mask, new_mask])

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and trim the padding columns they all share."""
        if not rows:
            self.cache, self.mask = None, None
            return
        cache, held_mask = self.held()
        index = torch.tensor(rows, dtype=torch.long, device=held_mask.device)
        mask = held_mask.index_select(0, index)
        shared_pad = int((mask.cumsum(dim=1) == 0).sum(dim=1).min().item())
        layers = [(k.index_select(0, index)[:, :, shared_pad:], v.index_select(0, index)[:, :, shared_pad:])
                  for k, v in cache_tensors(cache)]
        self.cache, self.mask = DynamicCache(layers), mask[:, shared_pad:]

    def extend_mask(self, columns: int = 1) -> torch.Tensor:
        """The mask for a decode step: `columns` more real columns for every row."""
        _, held_mask = self.held()
        self.mask = torch.cat([held_mask, held_mask.new_ones(self.num_rows, columns)], dim=1)
        return self.mask

    def drop_last_columns(self, columns: int) -> None:
        """Forget the newest `columns` positions of every row (rejected speculative tokens)."""
        if columns <= 0:
            return
        cache, held_mask = self.held()
        layers = [(k[:, :, :-columns], v[:, :, :-columns]) for k, v in cache_tensors(cache)]
        self.cache, self.mask = DynamicCache(layers), held_mask[:, :-columns]
