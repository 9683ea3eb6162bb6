"""Resolve `auto` hyperparameters from dataset size, method and model size (like OpenAI's API).

Rules, in words: small datasets get more epochs (each example must be seen often enough for a
fact to stick) and smaller batches (more optimizer steps); adapters tolerate a far higher learning
rate than full fine-tuning, and small models a higher one than large models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunery.config import TrainSettings

# Examples seen in total (epochs x dataset size) that `auto` aims for; clamped to an epoch range.
TARGET_EXAMPLES_SEEN = 3000
MIN_EPOCHS, MAX_EPOCHS = 2, 12
PEAK_LR = {"full": 2e-5, "lora": 3e-4, "qlora": 3e-4}
LR_CAP = {"full": 1e-4, "lora": 2e-3, "qlora": 2e-3}
REFERENCE_PARAMS = 7e9


@dataclass
class AutoChoice:
    """A resolved value and why it was chosen (printed at the start and saved in run.json)."""

    key: str
    value: float | int
    reason: str


def resolve_auto(settings: TrainSettings, *, num_examples: int, method: str, num_params: int,
                 world_size: int = 1) -> tuple[TrainSettings, list[AutoChoice]]:
    """A copy of `settings` with every `auto` replaced, plus the choices made."""
    choices: list[AutoChoice] = []
    update: dict = {}
    if settings.batch_size == "auto":
        update["batch_size"] = auto_batch_size(num_examples, world_size)
        choices.append(AutoChoice("train.batch_size", update["batch_size"],
                                  f"about 1/64 of {num_examples} examples, a power of two in [2, 16]"))
    if settings.epochs == "auto":
        update["epochs"] = auto_epochs(num_examples)
        choices.append(AutoChoice("train.epochs", update["epochs"],
                                  f"~{TARGET_EXAMPLES_SEEN} examples seen in total, within [{MIN_EPOCHS}, {MAX_EPOCHS}]"))
    if settings.learning_rate == "auto":
        update["learning_rate"] = auto_learning_rate(method, num_params)
        choices.append(AutoChoice("train.learning_rate", update["learning_rate"],
                                  f"{method} base {PEAK_LR[method]:g} scaled by sqrt(7B / {num_params / 1e6:.0f}M params), capped"))
    resolved = settings.model_copy(update=update)
    if settings.warmup_steps == "auto":
        total = total_steps(resolved, num_examples, world_size)
        warmup = min(100, max(1, round(0.05 * total))) if total > 10 else 0
        resolved = resolved.model_copy(update={"warmup_steps": warmup})
        choices.append(AutoChoice("train.warmup_steps", warmup, f"5% of {total} steps, at most 100"))
    return resolved, choices


def auto_batch_size(num_examples: int, world_size: int = 1) -> int:
    per_process = max(1, num_examples / 64 / world_size)
    return int(min(16, max(2, 2 ** round(math.log2(per_process)))))


def auto_epochs(num_examples: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_EXAMPLES_SEEN / max(1, num_examples)))))


def auto_learning_rate(method: str, num_params: int) -> float:
    scaled = PEAK_LR[method] * math.sqrt(REFERENCE_PARAMS / max(num_params, 1))
    return float(f"{min(LR_CAP[method], max(PEAK_LR[method], scaled)):.2g}")


def steps_per_epoch(settings: TrainSettings, num_examples: int, world_size: int = 1) -> int:
    global_batch = settings.batch_size * settings.grad_accum * world_size
    return max(1, math.ceil(num_examples / global_batch))


def total_steps(settings: TrainSettings, num_examples: int, world_size: int = 1) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    return settings.epochs * steps_per_epoch(settings, num_examples, world_size)
