"""Load a resolved model's tokenizer and weights (dtype, 4-bit NF4, adapters) safely.

`trust_remote_code` is always off and only safetensors weights are read.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunery import host
from tunery.errors import ModelError
from tunery.models.resolve import ResolvedModel, resolve_model

# What every transformers load in tunery passes: no code from the model's folder or the Hub. use_kernels: since
# transformers 5.25, with the `kernels` package installed, `model.train()` on a GPU fetches compiled kernels from
# the Hub (code from the network, and an error offline); the torch implementation is what tunery measures.
LOCAL_ONLY: dict = {"trust_remote_code": False, "use_kernels": False}

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bf16", "fp32"]


def select_dtype(precision: str = "auto", device: str | None = None):
    """Map a precision choice (a `Precision`) to a torch dtype; `auto` is bf16 where the hardware runs it fast."""
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # The flags say bf16 units exist; whether torch's kernels make them faster here (AMX is often
    # hidden in VMs, AVX512-BF16 alone can lose to fp32) is measured, not assumed.
    if host.cpu_has_fast_bf16() and measure_bf16_speedup() >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


BF16_MIN_SPEEDUP = 1.2


def measure_bf16_speedup(size: int = 512, repeats: int = 8) -> float:
    """fp32 time / bf16 time of a model-shaped matmul on this CPU (about a tenth of a second, once)."""
    rates = measure_linear_rates(size, repeats=repeats)
    return rates["bf16"] / rates["fp32"]


@functools.lru_cache(maxsize=8)
def measure_linear_rates(tokens: int = 512, in_features: int = 576, out_features: int = 1536,
                         repeats: int = 8) -> dict[str, float]:
    """FLOP/s of `F.linear` (tokens x in_features -> out_features) in fp32 and bf16 here, best of 3.

    The default shape is the default model's MLP up-projection over a 512-token micro-batch.
    """
    import torch
    import torch.nn.functional as F

    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(tokens, in_features, dtype=dtype)
        w = torch.randn(out_features, in_features, dtype=dtype)
        F.linear(a, w)  # warm-up: oneDNN picks its kernel on first use
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                F.linear(a, w)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * tokens * in_features * out_features * repeats / best
    return rates


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(ref: str | Path | ResolvedModel):
    """The tokenizer of a model reference (a run directory's own saved tokenizer when present)."""
    from transformers import AutoTokenizer

    resolved = ref if isinstance(ref, ResolvedModel) else resolve_model(ref)
    source = resolved.tokenizer_source
    kwargs: dict[str, object] = {"trust_remote_code": False}
    if resolved.gguf_file and resolved.tokenizer_path is None:
        kwargs["gguf_file"] = resolved.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {resolved.ref!r}: {exc}", code="tokenizer_error") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    ref: str | Path | ResolvedModel,
    *,
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool = False,
    device: str | None = None,
    with_adapter: bool = True,
    is_trainable: bool = False,
):
    """Load `(model, tokenizer)`; a run directory gives its PEFT adapter on its base."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = ref if isinstance(ref, ResolvedModel) else resolve_model(ref)
    device = device or default_device()
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else select_dtype(dtype, device)
    kwargs: dict = {**LOCAL_ONLY, "dtype": torch_dtype}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    else:
        kwargs["use_safetensors"] = True
    if load_in_4bit:
        kwargs["quantization_config"] = nf4_config(torch_dtype)
        kwargs["device_map"] = {"": device}
    try:
        _quiet_transformers()
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model {resolved.ref!r}: {exc}", code="model_load_error") from None
    if not load_in_4bit:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator on `to` hides its signature
    else:
        release_file_mapping(model)
    if with_adapter and resolved.adapter_path is not None:
        model = attach_saved_adapter(model, resolved.adapter_path, is_trainable=is_trainable)
    model.eval()
    return model, load_tokenizer(resolved)


def release_file_mapping(model) -> None:
    """Copy the tensors a 4-bit load left as views of the memory-mapped safetensors file.

    Those (embeddings, norms) keep the whole mapping alive, and with it every page the quantizer
    read: 405 MiB of resident file pages for the default model, more than its NF4 weights and
    the copied tensors together (51 + 108 MiB); with the freed quantization buffers returned too,
    the loaded QLoRA model goes from 0.90 to 0.58 GiB RSS. Unquantized loads use the mapping as
    their weights.
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.dtype == torch.uint8 or tensor.device.type != "cpu":
                    continue
                tensor.data = tensor.data.clone()
    gc.collect()
    return_freed_memory()


def return_freed_memory() -> None:
    """Ask glibc to give freed heap pages back to the system (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def nf4_config(compute_dtype):
    """bitsandbytes 4-bit NF4 with double quantisation (QLoRA's recipe)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def attach_saved_adapter(model, adapter_path: Path, *, adapter_name: str = "default", is_trainable: bool = False):
    """Put a saved PEFT adapter (safetensors only) on a loaded base model."""
    from peft import PeftModel

    if not (Path(adapter_path) / "adapter_model.safetensors").is_file():
        raise ModelError(f"{adapter_path} has no adapter_model.safetensors", code="no_weights",
                         hint="tunery reads only safetensors adapters; pickle adapters are refused")
    try:
        return PeftModel.from_pretrained(model, str(adapter_path), adapter_name=adapter_name,
                                         is_trainable=is_trainable)
    except Exception as exc:
        raise ModelError(f"cannot load adapter {adapter_path}: {exc}", code="adapter_load_error") from None


def weights_sha256(path: str | Path) -> str:
    """sha256 over a folder's safetensors files (or one file), in name order: the weights' identity."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _quiet_transformers() -> None:
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
