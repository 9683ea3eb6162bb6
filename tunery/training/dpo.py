"""Direct Preference Optimization: sequence log-probabilities, the DPO loss, and one step's gradients.

The loss is the `sigmoid` DPO loss (Rafailov et al. 2023, as TRL computes it). The reference is
evaluated under no_grad on the same batch: with adapters it is the same weights with the adapter
switched off (no second copy in memory), for full fine-tuning a frozen copy made before training.
The loop (loop.py) decides when steps and validations happen; this module knows only pairs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunery.data.packing import make_batch
from tunery.data.template import IGNORE_INDEX
from tunery.errors import ConfigError
from tunery.training.batch_loss import (
    decoder_hidden_states,
    model_inputs,
    supports_chunked_loss,
    unwrap_causal_lm,
)
from tunery.types import TokenizedExample

DEFAULT_BETA = 0.1
LOGP_CHUNK_TOKENS = 1024
EVAL_PAIRS = 8
STAT_KEYS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps")


@dataclass
class DpoSetup:
    """What a DPO run adds to the trainer: beta, and the frozen reference (None: adapter switched off)."""

    beta: float
    reference: torch.nn.Module | None = None


def make_dpo_setup(model, *, beta: float, method: str, sharded: bool) -> DpoSetup:
    """The reference for `method`: the adapter switched off, or a frozen copy of the full model."""
    if sharded:
        raise ConfigError("objective dpo does not run with train.fsdp", hint="set train.fsdp: false (DDP runs it)")
    if method != "full":
        if not hasattr(model, "disable_adapter"):
            raise ConfigError("objective dpo with adapters needs a PEFT model", hint="use method: lora or qlora")
        return DpoSetup(beta=beta)
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return DpoSetup(beta=beta, reference=reference)


def rejected_example(example: TokenizedExample) -> TokenizedExample:
    """The not-preferred side of a tokenized preference example (stored in its meta)."""
    return TokenizedExample(example.meta["rejected_input_ids"], example.meta["rejected_labels"], example.location)


def pair_tokens(example: TokenizedExample) -> int:
    return len(example.input_ids) + len(example.meta.get("rejected_input_ids", ()))


def sequence_logps(model, examples: list[TokenizedExample], *, packing: bool, pad_token_id: int) -> torch.Tensor:
    """Summed log-probability of each example's trained tokens, one value per example (fp32)."""
    batch = make_batch(examples, packing=packing, pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    targets = batch.targets.to(device)
    mask = targets != IGNORE_INDEX
    owner = _example_owner(examples, packing).to(device)[mask]
    targets = targets[mask]
    inputs = model_inputs(batch, device)
    if supports_chunked_loss(model):  # the output head only at trained positions
        causal_lm = unwrap_causal_lm(model)
        hidden = decoder_hidden_states(model, causal_lm, inputs)[mask]
        head = causal_lm.get_output_embeddings()
        parts = [_token_logps(head(hidden[i:i + LOGP_CHUNK_TOKENS]), targets[i:i + LOGP_CHUNK_TOKENS])
                 for i in range(0, hidden.shape[0], LOGP_CHUNK_TOKENS)]
    else:
        parts = [_token_logps(model(**inputs).logits[mask], targets)]
    token_logps = torch.cat(parts) if parts else targets.new_zeros(0, dtype=torch.float32)
    return token_logps.new_zeros(len(examples)).index_add(0, owner, token_logps)


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _example_owner(examples: list[TokenizedExample], packing: bool) -> torch.Tensor:
    """For each batch position, the index of the example it belongs to (the batch's shape)."""
    lengths = torch.tensor([len(e.input_ids) for e in examples])
    if packing:
        return torch.repeat_interleave(torch.arange(len(examples)), lengths).unsqueeze(0)
    width = int(lengths.max())
    return torch.arange(len(examples)).unsqueeze(1).expand(len(examples), width)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), and both implicit rewards."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def reference_logps(model, setup: DpoSetup, examples: list[TokenizedExample], *, packing: bool,
                    pad_token_id: int) -> torch.Tensor:
    """The reference's sequence log-probabilities: the frozen copy, or the policy with its adapter off."""
    reference = setup.reference if setup.reference is not None else model
    switch_off = model.disable_adapter() if setup.reference is None else contextlib.nullcontext()
    with torch.no_grad(), switch_off:
        return sequence_logps(reference, examples, packing=packing, pad_token_id=pad_token_id)


@dataclass
class PairSums:
    """One piece of pairs: the summed loss (differentiable) and sums of the logged statistics."""

    loss_sum: torch.Tensor
    pairs: int
    stats: dict[str, float]
    tokens: int
    trained_tokens: int


def pair_sums(model, setup: DpoSetup, pairs: list[TokenizedExample], *, packing: bool, pad_token_id: int) -> PairSums:
    """Policy and reference log-probabilities of both sides (one batch each), the loss and statistics."""
    rejected = [rejected_example(e) for e in pairs]
    both = list(pairs) + rejected
    policy = sequence_logps(model, both, packing=packing, pad_token_id=pad_token_id)
    reference = reference_logps(model, setup, both, packing=packing, pad_token_id=pad_token_id)
    n = len(pairs)
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], setup.beta)
    margins = chosen_rewards - rejected_rewards
    # A tie (policy equal to the reference: the first step of a LoRA run) counts half: chance level.
    correct = (margins > 0).float() + 0.5 * (margins == 0).float()
    stats = {"reward_accuracy": float(correct.sum()), "reward_margin": float(margins.sum()),
             "chosen_reward": float(chosen_rewards.sum()), "rejected_reward": float(rejected_rewards.sum()),
             "chosen_logps": float(policy[:n].detach().sum()), "rejected_logps": float(policy[n:].detach().sum())}
    return PairSums(losses.sum(), n, stats, sum(len(e.input_ids) for e in both),
                    sum(e.num_trained for e in both))


def backward_pairs(trainer, pieces: list[list[int]], autocast: Callable) -> dict:
    """Gradients of the mean DPO loss over the step's pairs (all pieces, all processes)."""
    dist = trainer.dist
    step_pairs = dist.sum_int(sum(len(p) for p in pieces))
    loss_sum, tokens, trained = 0.0, 0, 0
    totals: dict[str, float] = {}
    for piece in pieces:
        with autocast():
            sums = pair_sums(trainer.model, trainer.dpo, [trainer.data.train[i] for i in piece],
                             packing=trainer.packing, pad_token_id=trainer.pad_token_id)
        (sums.loss_sum / step_pairs).backward()
        loss_sum += float(sums.loss_sum.detach())
        tokens, trained = tokens + sums.tokens, trained + sums.trained_tokens
        for key, value in sums.stats.items():
            totals[key] = totals.get(key, 0.0) + value
    extra = {key: round(dist.sum_float(totals.get(key, 0.0)) / step_pairs, 6) for key in STAT_KEYS}
    return {"loss": dist.sum_float(loss_sum) / step_pairs, "tokens": dist.sum_int(tokens),
            "trained_tokens": dist.sum_int(trained), "extra": extra}


@torch.no_grad()
def evaluate_pairs(trainer, autocast: Callable) -> dict:
    """Validation DPO loss, reward accuracy and margin, and both sides' log-probabilities, per pair."""
    examples, dist = trainer.data.validation, trainer.dist
    mine = list(range(len(examples)))[dist.rank::dist.world_size]
    trainer.model.eval()
    loss_sum, totals = 0.0, dict[str, float]()
    for start in range(0, len(mine), EVAL_PAIRS):
        with autocast():
            sums = pair_sums(trainer.model, trainer.dpo, [examples[i] for i in mine[start:start + EVAL_PAIRS]],
                             packing=trainer.packing, pad_token_id=trainer.pad_token_id)
        loss_sum += float(sums.loss_sum)
        for key, value in sums.stats.items():
            totals[key] = totals.get(key, 0.0) + value
    trainer.model.train()
    pairs = max(dist.sum_int(len(mine)), 1)
    result = {"val_loss": round(dist.sum_float(loss_sum) / pairs, 6)}
    for key in STAT_KEYS:
        result[f"val_{key}"] = round(dist.sum_float(totals.get(key, 0.0)) / pairs, 6)
    result["val_pairs"] = pairs
    return result
