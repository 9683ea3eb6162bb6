"""Prepare a model for one method: full weights, LoRA/DoRA adapters, or LoRA on a 4-bit base.

Decides precision (and says why), threads, and which parameters train. Knows nothing about data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunery.config import LoraConfig, TrainConfig
from tunery.errors import ConfigError, ModelError
from tunery.models import load_model, resolve_model
from tunery.models.load import BF16_MIN_SPEEDUP, cpu_has_fast_bf16, default_device, measure_bf16_speedup


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
        # The flags say bf16 units exist; whether torch's kernels make them faster here (AMX is often
        # hidden in VMs, AVX512-BF16 alone can lose to fp32) is measured, not assumed.
        speedup = measure_bf16_speedup()
        if speedup < BF16_MIN_SPEEDUP:
            return Precision(torch.float32, torch.float32,
                             f"auto: CPU has bf16 units but bf16 matmuls measured {speedup:.2f}x fp32 here")
        reason = f"auto: CPU bf16 matmuls measured {speedup:.1f}x faster than fp32"
    else:
        return Precision(torch.float32, torch.float32, "auto: no fast bf16 on this hardware")
    # Full fine-tuning keeps fp32 master weights (bf16 updates lose small steps); adapters train in
    # fp32 while the frozen base can sit in bf16.
    weights = torch.float32 if method == "full" else torch.bfloat16
    return Precision(torch.bfloat16, weights, reason)


def set_threads(threads: int | None, processes: int = 1) -> int:
    """One torch thread per idle physical core by default.

    Hyperthreads slow matmuls down, and so do cores other processes already keep busy: a thread
    that is descheduled stalls every parallel region (measured 5-15x slower on a loaded 2-core box).
    """
    if threads is None:
        cores = physical_cores()
        threads = max(1, min(cores, cores - busy_cores(processes)) // max(1, processes))
    torch.set_num_threads(threads)
    return threads


def busy_cores(processes: int = 1, samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores other processes keep busy now: the median count of runnable tasks, less our own.

    The count comes from /proc/stat (`procs_running`, which includes this process and, under
    torchrun, its `processes - 1` siblings). The 1-minute load average is the fallback: it still
    counts a job that ended a minute ago, so a run started right after another got fewer threads.
    """
    counts = []
    for i in range(samples):
        running = runnable_tasks()
        if running is None:
            return int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        counts.append(running)
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, sorted(counts)[len(counts) // 2] - max(1, processes))


def runnable_tasks() -> int | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    quiet_libraries()
    source = config.init_from or config.base_model
    quantize = config.method == "qlora"
    if quantize and config.init_from and resolve_model(config.init_from).adapter_path is None:
        raise ConfigError("init_from for qlora must be a LoRA/QLoRA run (with an adapter/)")
    dtype = precision.weights if not quantize else precision.compute
    model, tokenizer = load_model(source, dtype=dtype, load_in_4bit=quantize, device=device,
                                  with_adapter=config.method != "full", is_trainable=True)
    if quantize:
        keep_4bit_weights_trainable(model)
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


def keep_4bit_weights_trainable(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during validation.

    On CPUs with AVX512-BF16, an eval-mode forward converts each Linear4bit to a packed layout
    whose kernel has no backward: training after the first validation then silently loses the
    gradient through every frozen layer (test_qlora_gradients catches it).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quiet_libraries() -> None:
    """Silence load-time chatter (weight-loading bars, optional-kernel notices) a user cannot act on."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def attach_lora(model, lora: LoraConfig):
    """Wrap in PEFT LoRA (DoRA with use_dora); adapters are fp32 even on a bf16 base.

    `lora.layers` N puts adapters in the top N decoder layers only (`auto` here means all: run.py
    resolves it before the model is loaded).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    modules_to_save = ["embed_tokens", "lm_head"] if lora.train_embeddings else None
    targets, layers = lora.targets, None
    num_layers = len(decoder_layers(model) or ())
    if isinstance(lora.layers, int) and lora.layers < num_layers:
        layers = list(range(num_layers - lora.layers, num_layers))
        if targets == "all-linear":  # PEFT takes a layer subset only with explicit module names
            targets = decoder_linear_names(model)
    peft_config = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        layers_to_transform=layers, use_dora=lora.use_dora, task_type="CAUSAL_LM",
        modules_to_save=modules_to_save, bias="none",
    )
    try:
        return get_peft_model(model, peft_config, autocast_adapter_dtype=True)
    except ValueError as exc:
        raise ModelError(f"cannot attach LoRA: {exc}", code="lora_targets",
                         hint="lora.targets must name linear modules of this model, or use all-linear") from None


def decoder_layers(model) -> torch.nn.ModuleList | None:
    """The decoder's list of transformer blocks (`model.layers` in Llama, Mistral, Qwen, Gemma...)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def decoder_linear_names(model) -> list[str]:
    """Short names of the linear layers inside the decoder blocks (what `all-linear` adapts)."""
    names = set()
    for name, module in decoder_layers(model).named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


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
