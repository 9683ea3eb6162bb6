"""The fast-lane backend: decode steps as compiled passes (`fastlane.py`), torch for batched prompts.

Several prompts arriving together are prefilled by one torch forward (its dense path is faster
than 16-row passes) and their caches move into the lane; everything else, chunks of a prompt
included, runs in the lane. Adapters live in one place here: installed into the torch model for
those prefills and turned into the lane's C tables at the same time, removed from both together.
"""

from __future__ import annotations

import torch

from tunery.errors import ModelError, TuneryError
from tunery.inference.backend import Prompt, Row
from tunery.inference.fastlane import MAX_ROWS, PROJECTIONS, FastLane
from tunery.inference.lora import AdapterSlots, LoraWeights
from tunery.inference.quant import Int4Linear
from tunery.inference.torch_backend import forward_prompts

MAX_DRAFT = 3  # ms per pass for 1 / 2 / 4 rows on the default model, 2 threads: 6.8 / 7.7 / 11.2


def threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


class LaneBackend:
    name = "lane"
    max_rows: int | None = MAX_ROWS
    chunked_prefill = True
    draft_lengths = (1, MAX_DRAFT)

    def __init__(self, model, max_context: int, *, library=None):
        self.lane = FastLane(model, max_context, library=library)  # FastLaneUnavailable: the model or machine
        self.model = model.eval()
        for module in model.modules():  # torch prefills compute with the weights the lane reads
            if isinstance(module, Int4Linear):
                module.dense = True
        self.max_context = max_context
        self.slots = AdapterSlots(model)
        self.threads = torch.get_num_threads()  # a pass's threads: torch's count when the backend was made
        names = {id(module): name for name, module in model.named_modules()}
        self._projections = {names[id(getattr(getattr(block, part), proj))]: (i, j)
                             for i, block in enumerate(model.model.layers)
                             for j, (part, proj) in enumerate(PROJECTIONS)}

    def describe(self) -> str:
        return f"compiled passes, {threads_text(self.threads)}"

    # ---- adapters --------------------------------------------------------------------------
    def load_adapter(self, weights: LoraWeights) -> int:
        other = sorted(name for name in weights.modules if name not in self._projections)
        if other:
            raise ModelError(f"the fast lane applies adapters to the decoder's attention and MLP projections only, "
                             f"not {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}",
                             code="unsupported_adapter", hint="serve it with --decode torch")
        slot = self.slots.install(weights)
        try:
            self.lane.add_adapter(slot, {self._projections[name]: delta for name, delta in weights.modules.items()})
        except TuneryError:
            self.slots.remove(slot)
            raise
        return slot

    def unload_adapter(self, slot: int) -> None:
        self.slots.remove(slot)
        self.lane.remove_adapter(slot)

    # ---- sequences -------------------------------------------------------------------------
    def prefill(self, prompts: list[Prompt]) -> torch.Tensor:
        layers, _, logits = forward_prompts(self.model, self.slots, prompts)
        for i, prompt in enumerate(prompts):  # each row's cache moves into the lane, padding left behind
            self.lane.load(prompt.key, [(k[i:i + 1], v[i:i + 1]) for k, v in layers], len(prompt.ids),
                           max(prompt.reserve, len(prompt.ids) + 1))
        return logits

    def step(self, rows: list[Row]) -> torch.Tensor:
        keys: list[int] = []
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        wanted: list[int] = []
        for row in rows:
            if not self.lane.holds(row.key):
                if row.start:
                    raise TuneryError(f"the fast lane holds no sequence {row.key}", code="lane_no_sequence")
                self.lane.open(row.key, max(row.reserve, len(row.tokens) + 1))
            count = len(row.tokens)
            wanted += range(len(tokens) + count - row.logits, len(tokens) + count)
            keys += [row.key] * count
            tokens += row.tokens
            positions += range(row.start, row.start + count)
            slots += [row.slot] * count
        first = min(wanted, default=len(tokens) - 1)  # the lane computes logits from one row on
        logits = self.lane.forward(keys, tokens, positions, slots, self.threads, logits_from=first)
        return logits[[i - first for i in wanted]]  # a copy: the lane reuses its buffer

    def rewind(self, key: int, length: int) -> None:
        pass  # positions past `length` are overwritten by the next pass, never read before

    def free(self, keys: list[int]) -> None:
        for key in keys:
            self.lane.drop(key)

    def clear(self) -> None:
        self.lane.clear()
