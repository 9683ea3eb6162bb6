"""The training loop: one function to read top to bottom, with its step and validation beside it.

It knows the model, the optimizer, ordered examples and when to validate and save; run.py does
the set-up (config, data, model, run directory) and the wrap-up (exports, summary).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunery.config import TrainSettings, resolved
from tunery.data.packing import make_batch, pad_packed_row, split_by_tokens
from tunery.errors import TrainingError
from tunery.training import checkpoints as ckpt
from tunery.training import dpo, fsdp
from tunery.training.batch_loss import compute_loss
from tunery.training.distributed import Distributed
from tunery.training.optim import (
    load_optimizer_state,
    lr_multiplier,
    optimizer_state_tensors,
    set_learning_rate,
)
from tunery.training.prefix import FrozenPrefix
from tunery.training.run_data import TrainingData, epoch_order, step_micro_batches

EVAL_BATCH_SIZE = 8
# A bf16 CPU run's packed rows are lengthened to a multiple of this many tokens by a filler example
# (tunery.data.packing.pad_packed_row), and the output head runs on a multiple of it too. oneDNN builds
# (JIT-compiles) a bf16 GEMM for each new row count and keeps 128 (tunery.training.precision): on an Intel
# Xeon with AMX a 576x1536 bf16 GEMM of 850 rows took 2 ms with its kernel built and 8-12 ms the first
# time (fp32 GEMMs go to MKL, which builds nothing per shape: a new row count cost nothing there). Over 40 steps of the benchmark's job, oneDNN's own count: 1496 kernels built in 4.85 s as the
# rows came, 1090 in 2.66 s at multiples of 32 (898 in 2.28 s at 64, for twice the filler); peak RSS
# 2.17 GiB against 2.41-2.56 (fewer kernels built and dropped). The filler adds ~16 tokens to a row
# of ~850 (2%): speed about even, memory 0.88x.
FILLER_MULTIPLE = 32


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    epoch_position: int = 0
    tokens_seen: int = 0
    trained_tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_train_loss: float | None = None
    last_val: dict | None = None
    initial_val: dict | None = None
    stopped_early: bool = False
    train_time_s: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Trainer:
    """What the loop works on; built by run.py."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[tuple[str, torch.nn.Parameter]]
    settings: TrainSettings
    data: TrainingData
    packing: bool
    pad_token_id: int
    autocast_dtype: torch.dtype | None
    device: str
    total_steps: int
    checkpoints_dir: Path
    dist: Distributed
    emit: Callable[[dict], None]
    loss_impl: str = "chunked"
    prefix: FrozenPrefix | None = None
    dpo: dpo.DpoSetup | None = None  # set for preference tuning: pairs instead of answers
    phase: Callable[[str], None] = lambda label: None  # what the bar says the run is doing now
    row_multiple: int = 0  # packed rows lengthened to a multiple of this (FILLER_MULTIPLE on a CPU; 0: as they are)

    @property
    def global_batch(self) -> int:
        return resolved(self.settings.batch_size) * self.settings.grad_accum * self.dist.world_size


def train_loop(trainer: Trainer, state: TrainState) -> str:
    """Run optimizer steps until done; returns `completed` or `interrupted` (raises on NaN)."""
    s = trainer.settings
    num_examples = len(trainer.data.train)
    if state.initial_val is None and trainer.data.validation:
        trainer.phase("validating")
        state.initial_val = evaluate(trainer)
        trainer.emit({"type": "val", "step": 0, **state.initial_val})
    with StopRequest() as stop:
        while state.step < trainer.total_steps:
            if state.epoch_position >= num_examples:
                state.epoch, state.epoch_position = state.epoch + 1, 0
            order = epoch_order(num_examples, s.seed, state.epoch)
            indices = order[state.epoch_position:state.epoch_position + trainer.global_batch]
            lr = resolved(s.learning_rate) * lr_multiplier(state.step, total_steps=trainer.total_steps,
                                                           warmup_steps=resolved(s.warmup_steps), schedule=s.lr_schedule)
            set_learning_rate(trainer.optimizer, lr)
            trainer.phase("training")
            started = time.perf_counter()
            result = run_step(trainer, indices, step=state.step + 1)
            elapsed = time.perf_counter() - started
            state.step += 1
            state.epoch_position += len(indices)
            state.tokens_seen += result["tokens"]
            state.trained_tokens_seen += result["trained_tokens"]
            state.last_train_loss = result["loss"]
            state.train_time_s += elapsed
            trainer.emit({"type": "train", "step": state.step, "epoch": round(state.epoch + state.epoch_position / num_examples, 4),
                          "loss": result["loss"], "lr": lr, "grad_norm": result["grad_norm"],
                          "tokens": result["tokens"], "tokens_per_s": round(result["tokens"] / elapsed, 1),
                          "total_steps": trainer.total_steps, **result.get("extra", {})})
            last = state.step >= trainer.total_steps
            epoch_done = state.epoch_position >= num_examples
            improved = False
            if trainer.data.validation and (last or (s.eval_every_steps and state.step % s.eval_every_steps == 0)
                                            or (s.eval_every_steps is None and epoch_done)):
                trainer.phase("validating")
                state.last_val = evaluate(trainer)
                trainer.emit({"type": "val", "step": state.step, **state.last_val})
                improved = record_validation(state, state.last_val["val_loss"], s.early_stopping_patience)
            if (last or improved or stop.requested or state.stopped_early
                    or (s.save_every_steps and state.step % s.save_every_steps == 0)
                    or (s.save_every_steps is None and epoch_done)):
                trainer.phase("saving")
                save_training_checkpoint(trainer, state)
            if stop.requested:
                return "interrupted"
            if state.stopped_early:
                break
    return "completed"


def run_step(trainer: Trainer, indices: list[int], *, step: int) -> dict:
    """One optimizer step: forward/backward over every micro-batch, the loss normalised per step, clip, update."""
    s, dist = trainer.settings, trainer.dist
    micro = step_micro_batches(indices, batch_size=resolved(s.batch_size), grad_accum=s.grad_accum,
                               rank=dist.rank, world_size=dist.world_size)
    examples = trainer.data.train
    size = (lambda i: dpo.pair_tokens(examples[i])) if trainer.dpo else (lambda i: len(examples[i].input_ids))
    pieces = [piece for mb in micro for piece in split_by_tokens(mb, s.micro_batch_tokens, size)]
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.dpo is not None:
        result = dpo.backward_pairs(trainer, pieces, lambda: autocast(trainer))
    else:
        result = backward_answers(trainer, pieces, indices)
    params = [p for _, p in trainer.params]
    dist.sum_gradients(params)
    loss = result["loss"]
    max_norm = s.max_grad_norm if s.max_grad_norm is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TrainingError(f"loss became {loss} (gradient norm {grad_norm}) at step {step}", code="nan_loss",
                            hint="lower train.learning_rate or set train.max_grad_norm; the last good "
                                 "checkpoint is kept")
    trainer.optimizer.step()
    return {**result, "grad_norm": grad_norm}


def backward_answers(trainer: Trainer, pieces: list[list[int]], indices: list[int]) -> dict:
    """Gradients of the next-token loss per trained token of the whole step (SFT)."""
    dist = trainer.dist
    batches = [pad_packed_row(make_batch([trainer.data.train[i] for i in piece], packing=trainer.packing,
                                         pad_token_id=trainer.pad_token_id), trainer.row_multiple, trainer.pad_token_id)
               for piece in pieces]
    # Normalise by the trained tokens of the whole step (all micro-batches, all processes), so the
    # update does not depend on how the step is cut into micro-batches or processes.
    step_tokens = dist.sum_int(sum(b.num_trained_tokens for b in batches))
    weights = [1.0] * len(batches)
    if dist.sharded:  # FSDP2 gathers weights in every pass: all processes must run as many passes
        filler = batches[0] if batches else make_batch([trainer.data.train[indices[0]]], packing=trainer.packing,
                                                       pad_token_id=trainer.pad_token_id)
        extra = dist.max_int(len(batches)) - len(batches)
        batches, weights = batches + [filler] * extra, weights + [0.0] * extra
    loss_sum = 0.0
    for n, (batch, weight) in enumerate(zip(batches, weights, strict=True)):
        with autocast(trainer):
            sums = piece_loss(trainer, batch, pieces[n] if n < len(pieces) else None)
        (sums.loss_sum * (weight / step_tokens)).backward()
        loss_sum += weight * float(sums.loss_sum.detach())
    return {"loss": dist.sum_float(loss_sum) / step_tokens, "trained_tokens": step_tokens,
            "tokens": dist.sum_int(sum(b.num_tokens for b in batches))}


def piece_loss(trainer: Trainer, batch, indices: list[int] | None):
    """The loss of one micro-batch piece, starting above the frozen layers when their outputs are kept."""
    prefix = trainer.prefix
    if prefix is None or indices is None:
        return compute_loss(trainer.model, batch, impl=trainer.loss_impl, row_multiple=trainer.row_multiple)
    embeds = prefix.inputs_embeds(trainer.model, trainer.data.train, indices, batch)
    with prefix.skipping():
        return compute_loss(trainer.model, batch, impl=trainer.loss_impl, inputs_embeds=embeds,
                            row_multiple=trainer.row_multiple)


def autocast(trainer: Trainer):
    if trainer.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=trainer.device.split(":")[0], dtype=trainer.autocast_dtype)


@torch.no_grad()
def evaluate(trainer: Trainer) -> dict:
    """Validation loss, perplexity and next-token accuracy over trained tokens (no dropout); DPO's own for pairs."""
    if trainer.dpo is not None:
        return dpo.evaluate_pairs(trainer, lambda: autocast(trainer))
    examples = trainer.data.validation
    dist = trainer.dist
    trainer.model.eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    mine = list(range(len(examples)))[dist.rank::dist.world_size]
    starts = list(range(0, len(mine), EVAL_BATCH_SIZE))
    passes = dist.max_int(len(starts)) if dist.sharded else len(starts)
    for n in range(passes):
        # A sharded model needs the same number of passes on every process: extra ones count nothing.
        chunk = mine[starts[n]:starts[n] + EVAL_BATCH_SIZE] if n < len(starts) else []
        batch = pad_packed_row(make_batch([examples[i] for i in chunk or [0]], packing=trainer.packing,
                                          pad_token_id=trainer.pad_token_id), trainer.row_multiple, trainer.pad_token_id)
        with autocast(trainer):
            sums = compute_loss(trainer.model, batch, impl=trainer.loss_impl, row_multiple=trainer.row_multiple)
        if not chunk:
            continue
        loss_sum += float(sums.loss_sum)
        tokens += sums.num_tokens
        correct += sums.num_correct
    trainer.model.train()
    loss_sum, tokens, correct = dist.sum_float(loss_sum), dist.sum_int(tokens), dist.sum_int(correct)
    val_loss = loss_sum / max(tokens, 1)
    return {"val_loss": round(val_loss, 6), "val_perplexity": round(math.exp(min(val_loss, 50.0)), 4),
            "val_token_accuracy": round(correct / max(tokens, 1), 4), "val_tokens": tokens}


def record_validation(state: TrainState, loss: float, patience: int | None) -> bool:
    """Track the best validation loss; returns True when this one is the new best."""
    if state.best_val_loss is None or loss < state.best_val_loss:
        state.best_val_loss, state.best_step, state.evals_since_best = loss, state.step, 0
        return True
    state.evals_since_best += 1
    if patience is not None and state.evals_since_best >= patience:
        state.stopped_early = True
    return False


def save_training_checkpoint(trainer: Trainer, state: TrainState) -> None:
    """Trainable weights, AdamW moments, RNG states and TrainState; only rank 0 writes."""
    if trainer.dist.sharded:  # every process sends its shards; rank 0 receives the full tensors
        weights, optim = fsdp.gather_training_state(trainer.model, trainer.optimizer, trainer.params)
    elif trainer.dist.is_main:
        names = {id(p): n for n, p in trainer.params}
        weights = {n: p.detach() for n, p in trainer.params}
        optim = optimizer_state_tensors(trainer.optimizer, names)
    if trainer.dist.is_main:
        tensors = {"trainable": weights, "optimizer": optim, "rng": rng_state_tensors()}
        path = ckpt.save_checkpoint(trainer.checkpoints_dir, state.step, tensors, asdict(state))
        ckpt.prune_checkpoints(trainer.checkpoints_dir, trainer.settings.keep_checkpoints, state.best_step)
        trainer.emit({"type": "checkpoint", "step": state.step, "path": str(path)})
    trainer.dist.barrier()


def restore_training_checkpoint(trainer: Trainer, checkpoint: ckpt.Checkpoint) -> TrainState:
    """Load what `save_training_checkpoint` wrote back into the model, optimizer and RNGs."""
    if trainer.dist.sharded:  # rank 0 reads the full tensors; each process keeps its shards
        main = trainer.dist.is_main
        fsdp.scatter_training_state(trainer.model, trainer.optimizer, trainer.params, trainer.dist,
                                    checkpoint.tensors("trainable") if main else {},
                                    checkpoint.tensors("optimizer") if main else {})
        set_rng_state(checkpoint.tensors("rng"))
        return TrainState(**checkpoint.state())
    weights = checkpoint.tensors("trainable")
    by_name = dict(trainer.params)
    missing = set(by_name) - set(weights)
    if missing:
        raise TrainingError(f"checkpoint {checkpoint.path} lacks {len(missing)} trainable tensors "
                            f"(e.g. {sorted(missing)[0]})", code="checkpoint_mismatch",
                            hint="the run's config changed since the checkpoint was written")
    with torch.no_grad():
        for name, param in by_name.items():
            param.copy_(weights[name].to(param.device, param.dtype))
    names = {id(p): n for n, p in trainer.params}
    load_optimizer_state(trainer.optimizer, checkpoint.tensors("optimizer"), names)
    set_rng_state(checkpoint.tensors("rng"))
    return TrainState(**checkpoint.state())


def rng_state_tensors() -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"])


class StopRequest:
    """SIGTERM / Ctrl-C set a flag: the current step finishes, a checkpoint is written, the loop returns."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
