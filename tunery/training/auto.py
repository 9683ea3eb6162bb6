"""Resolve `auto` hyperparameters from dataset size, method and model size (like OpenAI's API).

Rules, in words: small datasets get more epochs (each example must be seen often enough for a
fact to stick) and smaller batches (more optimizer steps); adapters tolerate a far higher learning
rate than full fine-tuning, and small models a higher one than large models.

Fact-like data (at most FACT_MAX_EXAMPLES examples whose trained answers average at most
FACT_MAX_TRAINED_TOKENS tokens: short question/answer facts, not a format to imitate) gets batch 2,
0.35x the learning rate, ~15 passes and adapters in the top third of the decoder only (the frozen
layers below then run once per example: tunery.training.prefix). Recall needs the passes far more
than a high rate. On 300 invented facts, cosine decay: batch 1, 6 epochs gave 28% exact recall at
4e-4 and 27% at 2e-4 (the same loss curve); 10 epochs at 1e-3 gave 78%; 15 epochs at 5e-4 gave
99.3% with every layer adapted and 99.0% with the top 10 of 30; batch 2 at 7e-4 with the top 10
gave 98.7% in 444 s. On 60 facts a constant 2e-3 never got below 0.7 nats and answered every
question with one part number (docs/training.md, "Teaching facts").

Where the machine trains fast enough (bf16 several times fp32, or little data), fact-like data gets
more adapted layers than the top third: the most whose estimated training time fits
FACT_TRAIN_BUDGET_S. On a CPU the estimate comes from LoRA steps timed on a small random copy of the
model's decoder (tunery.training.step_probe); elsewhere from the FLOPs over the measured matmul rate.
Every layer adapted recalls reworded questions better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunery.config import LoraConfig, TrainSettings, resolved
from tunery.data.augment import augment_questions
from tunery.data.dataset import read_dataset
from tunery.data.template import IGNORE_INDEX, encode_conversation
from tunery.errors import ConfigError
from tunery.training.resources import count_model_parameters

if TYPE_CHECKING:
    from tunery.training.step_probe import StepTime

# Examples seen in total (epochs x dataset size) that `auto` aims for; clamped to an epoch range.
TARGET_EXAMPLES_SEEN = 3000
MIN_EPOCHS, MAX_EPOCHS = 2, 12
FACT_EXAMPLES_SEEN, FACT_MAX_EPOCHS = 4500, 15
FACT_BATCH_SIZE = 2
FACT_LR_FACTOR = 0.35
PEAK_LR = {"full": 2e-5, "lora": 3e-4, "qlora": 3e-4}
LR_CAP = {"full": 1e-4, "lora": 2e-3, "qlora": 2e-3}
REFERENCE_PARAMS = 7e9
FACT_MAX_EXAMPLES = 2000
FACT_MAX_TRAINED_TOKENS = 24  # examples/facts: 16.8 per answer; examples/helpdesk: 36.7
FACT_LORA_LAYER_SHARE = 1 / 3
# Fact-like data adapts the most layers whose estimated training time fits this budget (the loop's
# share of the 10 minutes the facts should take, model load, rewordings and export around it).
FACT_TRAIN_BUDGET_S = 480
# Share of the measured `F.linear` rate a LoRA step on short rows reaches: 0.27 measured in bf16 on an
# AVX512-BF16 EPYC (the facts, batch 2, rate and steps under the same load), about 0.2 for the helpdesk
# benchmark there (issue 20). fp32 reaches more of its lower rate; erring long there keeps the top third.
TRAINING_SHARE_OF_RATE = 0.25
# Preference tuning moves a model that already answers: fewer passes and a tenth of the rate.
DPO_EXAMPLES_SEEN, DPO_MAX_EPOCHS, DPO_LR_FACTOR = 1000, 3, 0.1
DPO_BETA = 0.1


@dataclass
class AutoChoice:
    """A resolved value and why it was chosen (printed at the start and saved in run.json)."""

    key: str
    value: float | int | str
    reason: str


def resolve_auto(settings: TrainSettings, *, num_examples: int, method: str, num_params: int,
                 world_size: int = 1, mean_trained_tokens: float | None = None, objective: str = "sft",
                 augmented_examples: int = 0) -> tuple[TrainSettings, list[AutoChoice]]:
    """A copy of `settings` with every `auto` replaced, plus the choices made.

    `mean_trained_tokens` (trained tokens per training example) lets short fact-like data be told
    apart from format teaching; without it the general rules apply. `objective: dpo` takes
    DPO_MAX_EPOCHS at most and DPO_LR_FACTOR of the rate. `augmented_examples` of the
    `num_examples` are rewordings (data.augment): facts are counted without them, and the passes
    per fact are spread over the wordings.
    """
    choices: list[AutoChoice] = []
    update: dict = {}
    dpo = objective == "dpo"
    source_examples = num_examples - augmented_examples
    facts = not dpo and is_fact_like(source_examples, mean_trained_tokens)
    if facts and settings.batch_size == "auto":
        update["batch_size"] = FACT_BATCH_SIZE
        choices.append(AutoChoice("train.batch_size", FACT_BATCH_SIZE, f"fact-like data ({num_examples} examples, "
                                  f"{mean_trained_tokens:.1f} trained tokens each): many small updates"))
    elif settings.batch_size == "auto":
        update["batch_size"] = auto_batch_size(num_examples, world_size)
        choices.append(AutoChoice("train.batch_size", update["batch_size"],
                                  f"about 1/64 of {num_examples} examples, a power of two in [2, 16]"))
    if settings.epochs == "auto" and facts:
        passes = auto_epochs(source_examples, FACT_EXAMPLES_SEEN, FACT_MAX_EPOCHS)
        update["epochs"] = max(1, math.ceil(passes * source_examples / num_examples - 1e-9))
        reason = f"fact-like data: ~{FACT_EXAMPLES_SEEN} examples seen in total, within [{MIN_EPOCHS}, {FACT_MAX_EPOCHS}]"
        if augmented_examples:
            given = update["epochs"] * num_examples / source_examples
            reason += f"; {given:.0f} passes per fact over {num_examples / source_examples:.1f} wordings of each"
        choices.append(AutoChoice("train.epochs", update["epochs"], reason))
    elif settings.epochs == "auto" and dpo:
        update["epochs"] = auto_epochs(num_examples, DPO_EXAMPLES_SEEN, DPO_MAX_EPOCHS)
        choices.append(AutoChoice("train.epochs", update["epochs"], f"preference pairs: ~{DPO_EXAMPLES_SEEN} "
                                  f"pairs seen in total, within [{MIN_EPOCHS}, {DPO_MAX_EPOCHS}]"))
    elif settings.epochs == "auto":
        update["epochs"] = auto_epochs(num_examples)
        choices.append(AutoChoice("train.epochs", update["epochs"],
                                  f"~{TARGET_EXAMPLES_SEEN} examples seen in total, within [{MIN_EPOCHS}, {MAX_EPOCHS}]"))
    if settings.learning_rate == "auto":
        update["learning_rate"] = auto_learning_rate(method, num_params)
        reason = f"{method} base {PEAK_LR[method]:g} scaled by sqrt(7B / {num_params / 1e6:.0f}M params), capped"
        if facts:
            update["learning_rate"] = float(f"{update['learning_rate'] * FACT_LR_FACTOR:.2g}")
            reason += f", x{FACT_LR_FACTOR:g} for small-batch fact-like data"
        if dpo:
            update["learning_rate"] = float(f"{update['learning_rate'] * DPO_LR_FACTOR:.2g}")
            reason += f", x{DPO_LR_FACTOR:g} for preference tuning"
        choices.append(AutoChoice("train.learning_rate", update["learning_rate"], reason))
    resolved = settings.model_copy(update=update)
    if settings.warmup_steps == "auto":
        total = total_steps(resolved, num_examples, world_size)
        warmup = min(100, max(1, round(0.05 * total))) if total > 10 else 0
        resolved = resolved.model_copy(update={"warmup_steps": warmup})
        choices.append(AutoChoice("train.warmup_steps", warmup, f"5% of {total} steps, at most 100"))
    return resolved, choices


def resolve_beta(beta: float | str) -> tuple[float, list[AutoChoice]]:
    """`dpo.beta: auto` is DPO_BETA, the value of the DPO paper and TRL."""
    if beta != "auto":
        return float(beta), []
    return DPO_BETA, [AutoChoice("dpo.beta", DPO_BETA, "the DPO paper's and TRL's default")]


@dataclass(frozen=True)
class TrainingWork:
    """What a LoRA run on fact-like data will compute, and how fast this machine multiplies: enough to
    estimate its time for any number of adapted top layers before the model is loaded."""

    num_layers: int
    layer_params: int  # weights in one decoder layer's matmuls
    head_params: int  # the output projection (vocabulary x hidden)
    tokens_per_pass: int  # every token of every training example
    trained_tokens_per_pass: int  # the answer tokens (the head runs on these only)
    passes: float
    flops_per_s: float  # the measured `F.linear` rate at the run's precision and threads
    # Where steps were timed on this machine (tunery.training.step_probe): the loop's time comes from them.
    step_time: StepTime | None = None
    steps: int = 0
    num_examples: int = 0

    def seconds(self, adapted_layers: int) -> float:
        """Estimated loop time: the frozen layers below run forward once (their output is kept); each
        pass runs the adapted layers forward and back (input gradients; LoRA's own are small) and the
        head on the answer tokens. From the timed steps where there are some, else from the FLOPs."""
        if self.step_time is not None:
            return self.step_time.loop_seconds(self.steps, adapted_layers, self.num_layers, self.num_examples)
        frozen = 2 * self.layer_params * (self.num_layers - adapted_layers) * self.tokens_per_pass
        per_pass = 4 * (self.layer_params * adapted_layers * self.tokens_per_pass
                        + self.head_params * self.trained_tokens_per_pass)
        return (frozen + self.passes * per_pass) / (self.flops_per_s * TRAINING_SHARE_OF_RATE)


def training_work(model_config: dict, examples, *, passes: float, flops_per_s: float | None) -> TrainingWork | None:
    """The TrainingWork of `examples` (tokenized) on a decoder described by its HF config; None if unknown."""
    hidden, intermediate = model_config.get("hidden_size"), model_config.get("intermediate_size")
    num_layers, heads = model_config.get("num_hidden_layers"), model_config.get("num_attention_heads")
    if not (flops_per_s and hidden and intermediate and num_layers and heads and examples):
        return None
    head_dim = model_config.get("head_dim") or hidden // heads
    kv = model_config.get("num_key_value_heads") or heads
    attention = hidden * (heads * head_dim) * 2 + hidden * (kv * head_dim) * 2  # q, o; k, v
    return TrainingWork(
        num_layers=num_layers, layer_params=attention + 3 * hidden * intermediate,
        head_params=(model_config.get("vocab_size") or 0) * hidden,
        tokens_per_pass=sum(len(e.input_ids) for e in examples),
        trained_tokens_per_pass=sum(sum(1 for label in e.labels if label != IGNORE_INDEX) for e in examples),
        passes=passes, flops_per_s=flops_per_s)


def resolve_lora_layers(lora: LoraConfig, *, method: str, num_layers: int | None, facts: bool,
                        work: TrainingWork | None = None) -> tuple[LoraConfig, list[AutoChoice]]:
    """`lora.layers: auto`: for fact-like data the top third of the decoder, or more where `work` (LoRA on
    this machine) says more fits FACT_TRAIN_BUDGET_S; every layer otherwise.

    A number of layers is checked here, where the model is known: more than it has is refused.
    """
    check_lora_layers(lora, method=method, num_layers=num_layers)
    if method == "full" or lora.layers != "auto":
        return lora, []
    if facts and num_layers and num_layers >= 3:
        top = math.ceil(num_layers * FACT_LORA_LAYER_SHARE)
        fits = [n for n in range(num_layers, top, -1) if work and work.seconds(n) <= FACT_TRAIN_BUDGET_S]
        if work and fits:
            value: int | str = "all" if fits[0] == num_layers else fits[0]
            what = "every layer" if value == "all" else f"the top {value} of {num_layers} decoder layers"
            return lora.model_copy(update={"layers": value}), [AutoChoice("lora.layers", value, (
                f"fact-like data: {what}, the most that fit ~{FACT_TRAIN_BUDGET_S} s here "
                f"({timing(work, fits[0], top)}); more layers recall reworded questions better"))]
        reason = (f"fact-like data: the top {top} of {num_layers} decoder layers (the frozen layers below need "
                  "no backward pass and run once per example)")
        if work:
            reason += f"; more would not fit ~{FACT_TRAIN_BUDGET_S} s here ({timing(work, top + 1, top)})"
        return lora.model_copy(update={"layers": top}), [AutoChoice("lora.layers", top, reason)]
    return lora.model_copy(update={"layers": "all"}), [AutoChoice("lora.layers", "all", "every decoder layer")]


def timing(work: TrainingWork, layers: int, top: int) -> str:
    how = (f"from steps timed here ({work.step_time.per_layer_s * 1e3:.0f} ms per adapted layer, "
           f"{work.step_time.fixed_s * 1e3:.0f} ms the rest of a step)" if work.step_time is not None
           else f"estimated from {work.flops_per_s / 1e9:.0f} GFLOP/s measured")
    return f"{layers} layers ~{work.seconds(layers):.0f} s, the top {top} ~{work.seconds(top):.0f} s, {how}"


def check_lora_layers(lora: LoraConfig, *, method: str, num_layers: int | None) -> None:
    if method != "full" and isinstance(lora.layers, int) and num_layers and lora.layers > num_layers:
        raise ConfigError(f"lora.layers: {lora.layers} is more than the {num_layers} decoder layers of the base model",
                          code="invalid_config", hint=f"use a number from 1 to {num_layers}, or `all`")


def augment_choice(added: int, source_examples: int) -> AutoChoice:
    return AutoChoice("data.augment", f"{added} rewordings", f"fact-like data: each of the {source_examples} "
                      "questions also asked in other words, so facts are recalled when asked another way")


def is_fact_like(num_examples: int, mean_trained_tokens: float | None) -> bool:
    """Many short answers to learn by heart (not a long format to imitate)."""
    return (mean_trained_tokens is not None and num_examples <= FACT_MAX_EXAMPLES
            and mean_trained_tokens <= FACT_MAX_TRAINED_TOKENS)


def auto_batch_size(num_examples: int, world_size: int = 1) -> int:
    per_process = max(1, num_examples / 64 / world_size)
    return int(min(16, max(2, 2 ** round(math.log2(per_process)))))


def auto_epochs(num_examples: int, examples_seen: int = TARGET_EXAMPLES_SEEN, max_epochs: int = MAX_EPOCHS) -> int:
    return int(min(max_epochs, max(MIN_EPOCHS, math.ceil(examples_seen / max(1, num_examples)))))


def auto_learning_rate(method: str, num_params: int) -> float:
    scaled = PEAK_LR[method] * math.sqrt(REFERENCE_PARAMS / max(num_params, 1))
    return float(f"{min(LR_CAP[method], max(PEAK_LR[method], scaled)):.2g}")


def steps_per_epoch(settings: TrainSettings, num_examples: int, world_size: int = 1) -> int:
    global_batch = resolved(settings.batch_size) * settings.grad_accum * world_size
    return max(1, math.ceil(num_examples / global_batch))


def total_steps(settings: TrainSettings, num_examples: int, world_size: int = 1) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    return resolved(settings.epochs) * steps_per_epoch(settings, num_examples, world_size)


def mean_trained_tokens(examples) -> float | None:
    """Trained (label) tokens per example, averaged; None for no examples."""
    if not examples:
        return None
    return sum(sum(1 for label in e.labels if label != IGNORE_INDEX) for e in examples) / len(examples)


def preview_auto(train_path, tokenizer, model_path, *, method: str,
                 settings: TrainSettings | None = None, augment: str = "auto") -> list[AutoChoice]:
    """The `auto` choices a run on `train_path` would make, with their reasons, before anything runs."""
    conversations = read_dataset(train_path, min_examples=0).conversations
    examples = [encode_conversation(tokenizer, c) for c in conversations if c.kind == "chat"]
    num_params, model_config = count_model_parameters(model_path)
    trained = mean_trained_tokens(examples)
    augmented = 0
    settings = settings or TrainSettings()
    if augment != "none" and settings.epochs == "auto" and settings.max_steps is None \
            and is_fact_like(len(conversations), trained):
        augmented = len(augment_questions(conversations))
        choices = [augment_choice(augmented, len(conversations))]
    else:
        choices = []
    _, auto_choices = resolve_auto(settings, num_examples=len(conversations) + augmented,
                                   method=method, num_params=num_params, mean_trained_tokens=trained,
                                   augmented_examples=augmented)
    choices += auto_choices
    if method != "full":
        _, layer_choices = resolve_lora_layers(LoraConfig(), method=method,
                                               num_layers=model_config.get("num_hidden_layers"),
                                               facts=is_fact_like(len(conversations), trained))
        choices += layer_choices
    return choices
