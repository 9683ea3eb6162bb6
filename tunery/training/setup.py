"""Prepare a model for one method: full weights, LoRA/DoRA adapters, or LoRA on a 4-bit base.

Decides precision (and says why), threads, and which parameters train. Knows nothing about data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunery.config import LoraConfig, TrainConfig
from tunery.errors import ConfigError, ModelError
from tunery.models import load_model, resolve_model
from tunery.models.load import cpu_has_fast_bf16, default_device


@dataclass
class Precision:
    """Compute dtype for matmuls, dtype the frozen weights are stored in, and why."""

    compute: torch.dtype
    weights: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.compute == torch.bfloat16 else "fp32"


def choose_precision(choice: str, method: str, device: str) -> Precision:
    """`auto` → bf16 on CUDA with bf16 or CPUs with AMX/AVX512-BF16, else fp32."""
    if choice == "fp32":
        return Precision(torch.float32, torch.float32, "fp32 requested")
    if choice == "bf16":
        reason = "bf16 requested"
    elif device.startswith("cuda") and torch.cuda.is_bf16_supported():
        reason = "auto: CUDA device supports bf16"
    elif device == "cpu" and cpu_has_fast_bf16():
        reason = "auto: CPU has AMX/AVX512-BF16 units"
    else:
        return Precision(torch.float32, torch.float32, "auto: no fast bf16 on this hardware")
    # Full fine-tuning keeps fp32 master weights (bf16 updates lose small steps); adapters train in
    # fp32 while the frozen base can sit in bf16.
    weights = torch.float32 if method == "full" else torch.bfloat16
    return Precision(torch.bfloat16, weights, reason)


def set_threads(threads: int | None) -> int:
    """One torch thread per physical core by default (hyperthreads slow matmuls down)."""
    if threads is None:
        threads = physical_cores()
    torch.set_num_threads(threads)
    return threads


def physical_cores() -> int:
    try:
        text = Path("/proc/cpuinfo").read_text()
        ids, current = set(), None
        for line in text.splitlines():
            if line.startswith("physical id"):
                current = line.split(":")[1].strip()
            elif line.startswith("core id"):
                ids.add((current, line.split(":")[1].strip()))
        if ids:
            return min(len(ids), os.cpu_count() or 1)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def load_for_training(config: TrainConfig, precision: Precision, device: str | None = None):
    """(model, tokenizer) ready to train: frozen/unfrozen as the method says, seeded adapter init."""
    device = device or default_device()
    source = config.init_from or config.base_model
    quantize = config.method == "qlora"
    if quantize and config.init_from and resolve_model(config.init_from).adapter_path is None:
        raise ConfigError("init_from for qlora must be a LoRA/QLoRA run (with an adapter/)")
    dtype = precision.weights if not quantize else precision.compute
    model, tokenizer = load_model(source, dtype=dtype, load_in_4bit=quantize, device=device,
                                  with_adapter=config.method != "full", is_trainable=True)
    if hasattr(model, "peft_config"):
        if config.method == "full":
            raise ConfigError("method full cannot continue from a LoRA run", hint="use method: lora")
        model.train()
        return model, tokenizer
    if config.method == "full":
        model.requires_grad_(True)
        if not config.lora.train_embeddings:
            model.get_input_embeddings().requires_grad_(False)
            # A tied output head shares the embedding matrix, so it stays frozen with it.
            if model.get_output_embeddings() is not None and not getattr(model.config, "tie_word_embeddings", False):
                model.get_output_embeddings().requires_grad_(False)
    else:
        torch.manual_seed(config.train.seed)
        model = attach_lora(model, config.lora)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer


def attach_lora(model, lora: LoraConfig):
    """Wrap in PEFT LoRA (DoRA with use_dora); adapters are fp32 even on a bf16 base."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    modules_to_save = ["embed_tokens", "lm_head"] if lora.train_embeddings else None
    peft_config = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
        use_dora=lora.use_dora, task_type="CAUSAL_LM", modules_to_save=modules_to_save, bias="none",
    )
    try:
        return get_peft_model(model, peft_config, autocast_adapter_dtype=True)
    except ValueError as exc:
        raise ModelError(f"cannot attach LoRA: {exc}", code="lora_targets",
                         hint="lora.targets must name linear modules of this model, or use all-linear") from None


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable); 4-bit packed weights count as their unpacked element numbers."""
    total = trainable = 0
    for _, p in model.named_parameters():
        n = p.numel() * (2 if getattr(p, "quant_state", None) is not None or p.dtype == torch.uint8 else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable
