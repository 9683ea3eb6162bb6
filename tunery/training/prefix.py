"""Frozen lower layers, run once per example: their output is kept and reused in later epochs.

With adapters in the top decoder layers only (`lora.layers: N`), every layer below the lowest
adapted one is a fixed function of the input tokens. Its output for an example is the same in every
epoch, so it is computed once (without autograd), kept, and later steps start the decoder at the
first adapted layer: the lower layers cost nothing after the first epoch. The step is the same
computation as before; only the order of a few floating-point sums can differ.

The outputs are computed for groups of consecutive examples packed into one row of about
GROUP_TOKENS tokens (each example still attends to itself only): on short rows, such as facts of
60 tokens in steps of 2, one forward per step cost more in fixed per-operation time than in
arithmetic. The groups are a fixed partition of the example indices (not of the shuffled order), so
an example's output is the same whichever step asks for it first, and a resumed run computes the
same values as a straight one. With `data.packing: false` (a model whose packed rows are not to be
trusted) each example runs alone, as the training steps' padded rows do.

Not used when anything below that layer trains or draws random numbers (dropout), for FSDP
shards, for a single pass over the data, or when the kept outputs would need more than MAX_BYTES.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch

from tunery.data.packing import Batch, pack_examples, split_by_tokens
from tunery.training.batch_loss import model_inputs, unwrap_causal_lm
from tunery.training.trainable_model import decoder_layers

MAX_BYTES = 1 << 30
GROUP_TOKENS = 512
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


class _PassThrough(torch.nn.Module):
    """Stands in for a frozen layer whose output is already known."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@dataclass
class FrozenPrefix:
    """Kept outputs of decoder layers [0, start) for training examples, by example index."""

    layers: torch.nn.ModuleList
    start: int
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    group_tokens: int = GROUP_TOKENS  # 0: every example alone
    group_of: list[list[int]] = field(default_factory=list)  # example index -> the indices of its group

    def inputs_embeds(self, model, examples: list, indices: list[int], batch: Batch) -> torch.Tensor:
        """Layer `start`'s input for `batch` (the `examples[i]` for i in `indices`, packed or padded
        like it), computing what is missing."""
        for index in indices:
            if index not in self.states:
                self._compute(model, examples, self._group(examples, index))
        rows = [self.states[i] for i in indices]
        if batch.attention_mask is None:  # packed: one row, examples back to back (and a filler's zeros)
            filler = [rows[0].new_zeros((batch.filler_tokens, rows[0].shape[-1]))] if batch.filler_tokens else []
            return torch.cat(rows + filler).unsqueeze(0)
        out = rows[0].new_zeros((len(rows), batch.input_ids.shape[1], rows[0].shape[-1]))
        for row, state in enumerate(rows):
            out[row, :state.shape[0]] = state
        return out

    def _group(self, examples: list, index: int) -> list[int]:
        """The indices packed with `index`: consecutive examples up to `group_tokens` tokens (fixed by the data)."""
        if len(self.group_of) != len(examples):
            groups = split_by_tokens(list(range(len(examples))), max(1, self.group_tokens),
                                     lambda i: len(examples[i].input_ids))
            self.group_of = [group for group in groups for _ in group]
        return self.group_of[index]

    @torch.no_grad()
    def _compute(self, model, examples: list, group: list[int]) -> None:
        """Run layers [0, start) on the examples `group`, packed in one row, and keep each one's output."""
        captured = []
        handle = self.layers[self.start - 1].register_forward_hook(lambda m, a, out: captured.append(out))
        decoder = unwrap_causal_lm(model).get_decoder()
        device = next(model.parameters()).device
        try:
            with self.skipping(range(self.start, len(self.layers))):
                decoder(**model_inputs(pack_examples([examples[i] for i in group]), device))
        finally:
            handle.remove()
        output = (captured[0][0] if isinstance(captured[0], tuple) else captured[0])[0].detach()
        offset = 0
        for i in group:
            n = len(examples[i].input_ids)
            self.states[i] = output[offset:offset + n].clone()
            offset += n

    def skipping(self, which=None):
        """Within this block the decoder passes its input straight through layers `which` (default: the frozen ones)."""
        return _swap_layers(self.layers, range(self.start) if which is None else which)


@contextlib.contextmanager
def _swap_layers(layers: torch.nn.ModuleList, which):
    which = list(which)
    originals = {i: layers[i] for i in which}
    try:
        for i in which:
            layers[i] = _PassThrough()
        yield
    finally:
        for i, layer in originals.items():
            layers[i] = layer


def frozen_prefix(model, *, passes: float, total_tokens: int, sharded: bool,
                  packing: bool = True) -> FrozenPrefix | None:
    """A FrozenPrefix when layers at the bottom of the decoder are frozen and reusing them is exact.

    `passes`: how many times training goes over the examples (nothing to reuse in one). `packing`: the
    frozen layers may run on packed groups of examples (else one example at a time).
    """
    if sharded or passes <= 1:
        return None
    layers = decoder_layers(unwrap_causal_lm(model))
    if layers is None:
        return None
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    indices = [m for name in trained if (m := LAYER_INDEX.search(name))]
    if not trained or len(indices) < len(trained):  # embeddings, head or norms train too
        return None
    start = min(int(m.group(1)) for m in indices)
    if start == 0 or any(draws_random_numbers(layer) for layer in layers[:start]):
        return None
    hidden = unwrap_causal_lm(model).config.hidden_size
    element = 4 if next(model.parameters()).dtype == torch.float32 else 2
    if total_tokens * hidden * element > MAX_BYTES:
        return None
    return FrozenPrefix(layers=layers, start=start, group_tokens=GROUP_TOKENS if packing else 0)


def draws_random_numbers(layer: torch.nn.Module) -> bool:
    """Dropout anywhere in the layer (a module, or the attention's own rate) makes its output vary."""
    for module in layer.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            return True
        if float(getattr(module, "attention_dropout", 0.0) or 0.0) > 0:
            return True
    return False
