"""The training objective: summed next-token cross-entropy of one batch, reference path and chunked path.

`token_cross_entropy` is tunery's one cross-entropy: both paths here and evaluation's perplexity use it.

Reference: the model's full logits ([tokens, vocab], fp32) then cross-entropy. Chunked: hidden
states from the decoder, projected through the output head only at trained positions, in chunks
recomputed in the backward pass (unless small), so full-vocabulary logits never exist at once. Both return sums
(not means): the loop normalises by trained tokens over a whole accumulation window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunery.data.packing import Batch
from tunery.data.template import IGNORE_INDEX

CHUNK_TOKENS = 1024
# Below this many bytes of fp32 logits a chunk keeps them for the backward pass instead of
# recomputing the head: short answers (facts) would otherwise pay for the head twice.
RECOMPUTE_MIN_BYTES = 32 << 20


@dataclass
class LossSums:
    """Summed loss (differentiable), trained-token count and argmax-correct count of one batch."""

    loss_sum: torch.Tensor
    num_tokens: int
    num_correct: int


def compute_loss(model, batch: Batch, *, impl: str = "chunked", inputs_embeds: torch.Tensor | None = None,
                 row_multiple: int = 0) -> LossSums:
    """Summed next-token loss over the batch's trained targets.

    `inputs_embeds` replaces the token embeddings (the training loop passes kept outputs of frozen
    layers this way, with those layers passing their input through: tunery.training.prefix).
    `row_multiple`: the chunked path runs the output head on a multiple of this many rows (zero
    rows with ignored targets after the trained ones), so its GEMMs see a few row counts only.
    """
    if impl == "chunked" and supports_chunked_loss(model):
        return chunked_loss(model, batch, inputs_embeds=inputs_embeds, row_multiple=row_multiple)
    return reference_loss(model, batch, inputs_embeds=inputs_embeds)


def model_inputs(batch: Batch, device, inputs_embeds: torch.Tensor | None = None) -> dict:
    inputs = {"position_ids": batch.position_ids.to(device), "use_cache": False}
    if inputs_embeds is None:
        inputs["input_ids"] = batch.input_ids.to(device)
    else:
        inputs["inputs_embeds"] = inputs_embeds.to(device)
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    return inputs


def reference_loss(model, batch: Batch, inputs_embeds: torch.Tensor | None = None) -> LossSums:
    """Full logits from the model's own forward, then fp32 cross-entropy at every trained position."""
    device = next(model.parameters()).device
    logits = model(**model_inputs(batch, device, inputs_embeds)).logits
    targets = batch.targets.to(device)
    loss_sum, correct = token_cross_entropy(logits, targets)
    return LossSums(loss_sum, int((targets != IGNORE_INDEX).sum()), int(correct))


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cross-entropy summed over targets that are not IGNORE_INDEX, and how many the argmax got right.

    `logits` is [..., vocab] and `targets` the matching [...] token ids.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    mask = targets != IGNORE_INDEX
    hits = (logits.detach().argmax(-1)[mask] == targets[mask]).sum()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"), hits


def chunked_loss(model, batch: Batch, chunk_tokens: int = CHUNK_TOKENS,
                 inputs_embeds: torch.Tensor | None = None, row_multiple: int = 0) -> LossSums:
    """Hidden states → output head at trained positions only, chunk by chunk (large chunks recomputed)."""
    causal_lm = unwrap_causal_lm(model)
    device = next(model.parameters()).device
    hidden = decoder_hidden_states(model, causal_lm, model_inputs(batch, device, inputs_embeds))
    targets = batch.targets.to(device)
    mask = targets != IGNORE_INDEX
    hidden = hidden[mask]
    targets = targets[mask]
    trained = int(targets.numel())
    extra = -trained % row_multiple if row_multiple > 1 and chunk_tokens % row_multiple == 0 else 0
    if extra:  # zero rows whose targets are ignored: no loss, no gradient, no hit
        hidden = torch.cat([hidden, hidden.new_zeros(extra, hidden.shape[-1])])
        targets = torch.cat([targets, targets.new_full((extra,), IGNORE_INDEX)])
    head = causal_lm.get_output_embeddings()
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    for start in range(0, hidden.shape[0], chunk_tokens):
        h = hidden[start:start + chunk_tokens]
        t = targets[start:start + chunk_tokens]
        if h.shape[0] * head.out_features * 4 < RECOMPUTE_MIN_BYTES:
            part, hits = _chunk_cross_entropy(h, head, t)
        else:
            part, hits = checkpoint(_chunk_cross_entropy, h, head, t, use_reentrant=False)
        loss_sum = loss_sum + part
        correct += int(hits)
    return LossSums(loss_sum, trained, correct)


def decoder_hidden_states(model, causal_lm, inputs: dict) -> torch.Tensor:
    """The decoder's last hidden states (after the final norm), without computing logits.

    An FSDP2-sharded model must run its root forward, which gathers the embeddings, final norm and
    output head (and keeps them gathered for the head calls and the backward): the decoder's output
    is captured by a hook while the root computes the logits of the last position only.
    """
    from torch.distributed.fsdp import FSDPModule

    decoder = causal_lm.get_decoder()
    sharded = isinstance(model, FSDPModule)  # a flag, not a narrowing: the model stays a callable nn.Module
    if not sharded:
        return decoder(**inputs).last_hidden_state
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def _chunk_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor):
    return token_cross_entropy(head(hidden), targets)


def unwrap_causal_lm(model):
    """The transformers *ForCausalLM inside a PEFT or DDP wrapper (LoRA layers stay injected)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def supports_chunked_loss(model) -> bool:
    """Chunking is exact only when logits are a plain linear map of the last hidden state."""
    causal_lm = unwrap_causal_lm(model)
    config = getattr(causal_lm, "config", None)
    if config is None or not hasattr(causal_lm, "get_decoder"):
        return False
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return False
    head = causal_lm.get_output_embeddings()
    return isinstance(head, torch.nn.Linear)
