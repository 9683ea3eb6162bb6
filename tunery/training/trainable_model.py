"""Prepare a model for one method: full weights, LoRA/DoRA adapters, or LoRA on a 4-bit base.

Loads the weights in the dtype a `Precision` says, attaches adapters, and decides which parameters
train. Knows nothing about data; precision and threads are chosen in `precision.py`.
"""

from __future__ import annotations

import logging
import warnings

import torch

from tunery.config import LoraConfig, TrainConfig
from tunery.data.chat_templates import apply_chat_template_override
from tunery.errors import ConfigError, ModelError
from tunery.models import load_model, resolve_model
from tunery.models.load import default_device
from tunery.training.precision import Precision


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
    apply_chat_template_override(tokenizer, config.data.chat_template)
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
    blocks = decoder_layers(model)
    num_layers = len(blocks or ())
    if blocks is not None and isinstance(lora.layers, int) and lora.layers < num_layers:
        layers = list(range(num_layers - lora.layers, num_layers))
        if targets == "all-linear":  # PEFT takes a layer subset only with explicit module names
            targets = decoder_linear_names(blocks)
    peft_config = PeftLoraConfig(
        # PEFT types lora_alpha int; it takes any number
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,  # type: ignore[arg-type]
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


def decoder_linear_names(blocks: torch.nn.ModuleList) -> list[str]:
    """Short names of the linear layers inside the decoder blocks (what `all-linear` adapts)."""
    names = set()
    for name, module in blocks.named_modules():
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
