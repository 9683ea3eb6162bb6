"""The torch backend: decode steps through the model itself, one left-padded cache for the batch.

Takes any model tunery loads (full precision, int8, int4). Every running sequence advances one
token per step, all in one forward; a lone sequence may take a draft. Knows tensors, caches and
adapter routing; nothing of requests or sampling.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from tunery.inference.backend import Prompt, Row
from tunery.inference.batch import BatchCache, cache_tensors
from tunery.inference.lora import AdapterSlots, LoraWeights

# A step of a few rows on int4/int8 weights is a string of tiny kernels; waking a second thread
# for each costs more than it gives. Default model, int4, 48 tokens per request, tokens/s with
# 1 / 2 threads: 1 row 35 / 25, 2 rows 53 / 40, 4 rows 81 / 61, 8 rows 99 / 99 (full-precision
# weights gain nothing from 1 thread and lose at 4+ rows: 4 rows 43 / 50, 8 rows 62 / 83).
SMALL_DECODE_ROWS = 4
MAX_DRAFT = 6  # a batch-1 step on a CPU costs about the same for one token as for seven


def route(slots: AdapterSlots, row_slots: list[int], device) -> None:
    """Point the adapter wrappers at the rows of the next forward that use each adapter."""
    distinct = set(row_slots)
    if distinct == {0}:
        slots.routing.groups = []
    elif len(distinct) == 1:
        slots.routing.groups = [(row_slots[0], None)]
    else:
        slots.routing.groups = [
            (slot, torch.tensor([i for i, s in enumerate(row_slots) if s == slot], device=device))
            for slot in distinct if slot
        ]


def forward_prompts(model, slots: AdapterSlots, prompts: list[Prompt]):
    """One forward over the prompts, left-padded together: (cache layers, mask, last logits [n, vocab])."""
    device = next(model.parameters()).device
    width = max(len(p.ids) for p in prompts)
    pads = [width - len(p.ids) for p in prompts]
    input_ids = torch.tensor([[0] * pad + p.ids for pad, p in zip(pads, prompts, strict=True)], device=device)
    mask = torch.tensor([[0] * pad + [1] * len(p.ids) for pad, p in zip(pads, prompts, strict=True)], device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    route(slots, [p.slot for p in prompts], device)
    cache = DynamicCache()
    out = model(input_ids=input_ids, attention_mask=mask if any(pads) else None, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    return cache_tensors(cache), mask, out.logits[:, -1].float().cpu()  # samplers use CPU generators


class TorchBackend:
    name = "torch"
    max_rows: int | None = None
    chunked_prefill = False
    draft_lengths = (MAX_DRAFT, MAX_DRAFT)

    def __init__(self, model, max_context: int, *, small_decode_threads: int | None = None):
        self.model = model.eval()
        self.max_context = max_context
        self.device = next(model.parameters()).device
        self.slots = AdapterSlots(model)
        # Steps of at most SMALL_DECODE_ROWS rows run on this many threads (None: torch's setting).
        self.small_decode_threads = small_decode_threads
        self.default_threads = torch.get_num_threads()
        self._batch = BatchCache()
        self._keys: list[int] = []  # the sequence in each row of the batch cache

    def describe(self) -> str:
        return "the model's own forward"

    # ---- adapters --------------------------------------------------------------------------
    def load_adapter(self, weights: LoraWeights) -> int:
        return self.slots.install(weights)

    def unload_adapter(self, slot: int) -> None:
        self.slots.remove(slot)

    # ---- sequences -------------------------------------------------------------------------
    def prefill(self, prompts: list[Prompt]) -> torch.Tensor:
        self._use_threads(self.default_threads)
        layers, mask, logits = forward_prompts(self.model, self.slots, prompts)
        self._batch.append_rows(layers, mask)
        self._keys += [p.key for p in prompts]
        return logits

    def step(self, rows: list[Row]) -> torch.Tensor:
        if sorted(row.key for row in rows) != sorted(self._keys):
            raise ValueError("a torch step advances every sequence in the batch, in one pass")
        order = {row.key: row for row in rows}
        rows = [order[key] for key in self._keys]
        width = len(rows[0].tokens)
        if width > 1 and len(rows) > 1:
            raise ValueError("only a lone sequence takes several tokens in a torch step")
        small = self.small_decode_threads is not None and len(rows) <= SMALL_DECODE_ROWS
        self._use_threads(self.small_decode_threads if self.small_decode_threads and small else self.default_threads)
        route(self.slots, [row.slot for row in rows], self.device)
        input_ids = torch.tensor([row.tokens for row in rows], device=self.device)
        positions = torch.tensor([list(range(row.start, row.start + width)) for row in rows], device=self.device)
        out = self.model(input_ids=input_ids, attention_mask=self._batch.extend_mask(width), position_ids=positions,
                         cache=self._batch.cache, use_cache=True)
        logits = out.logits.float().cpu()
        wanted = {row.key: logits[i, width - row.logits:] for i, row in enumerate(rows)}
        return torch.cat([wanted[row.key] for row in order.values()])

    def rewind(self, key: int, length: int) -> None:
        if self._keys != [key]:
            raise ValueError("only a lone sequence rewinds")
        _, mask = self._batch.held()
        self._batch.drop_last_columns(int(mask[0].sum()) - length)

    def free(self, keys: list[int]) -> None:
        gone = set(keys)
        keep = [i for i, key in enumerate(self._keys) if key not in gone]
        if len(keep) != len(self._keys):
            self._batch.keep_rows(keep)
            self._keys = [self._keys[i] for i in keep]
        if not self._keys:  # the thread count is process-wide: give it back while idle
            self._use_threads(self.default_threads)

    def clear(self) -> None:
        self._batch, self._keys = BatchCache(), []

    def _use_threads(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
