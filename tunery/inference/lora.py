"""Many LoRA adapters on one base model, mixed freely within one batch.

Each targeted `nn.Linear` is wrapped once; the wrapper adds, for every group of batch rows that
share an adapter, `scale * B(A(x))` for those rows only. Adapters are read from PEFT folders
(safetensors only) so whatever peft saves, the server serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tunery.errors import ModelError
from tunery.inference.quant import QuantizedLinear, replace_module

PEFT_PREFIX = "base_model.model."


@dataclass
class Routing:
    """Which adapter each batch row uses during the current forward: (slot, row indices or None=all)."""

    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)


class MultiLoraLinear(nn.Module):
    """A base linear layer (full precision or quantized) plus LoRA deltas selected per batch row.

    The deltas stay in the model's dtype whatever the base layer stores.
    """

    def __init__(self, base: nn.Linear | QuantizedLinear, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.deltas: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, rows in self.routing.groups:
            delta = self.deltas.get(slot)
            if delta is None:
                continue
            lora_a, lora_b, scale = delta
            if rows is None:
                y = y + (x @ lora_a.T) @ lora_b.T * scale
            else:
                y = y.index_add(0, rows, (x.index_select(0, rows) @ lora_a.T) @ lora_b.T * scale)
        return y


@dataclass(frozen=True)
class LoraWeights:
    """One adapter as read from disk: module name → (A [r, in], B [out, r], scale)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def read_peft_adapter(adapter_dir: Path) -> LoraWeights:
    """Read a PEFT LoRA folder; refuse what this engine cannot apply exactly."""
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ModelError(f"{adapter_dir.name}: no adapter_model.safetensors", code="no_weights",
                         hint="tunery reads only safetensors adapters")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{adapter_dir.name}: unreadable adapter_config.json ({exc})", code="bad_adapter") from None
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("modules_to_save") \
            or config.get("fan_in_fan_out"):
        raise ModelError(f"{adapter_dir.name}: only plain LoRA adapters can be served side by side "
                         "(no DoRA, modules_to_save or fan_in_fan_out)", code="unsupported_adapter",
                         hint="merge the adapter into a full model and serve that instead")
    tensors = load_file(str(weights_path))
    embedded = sorted(key for key in tensors if ".lora_embedding_" in key)
    if embedded:  # LoRA on an embedding table is a lookup, not a linear layer: never silently dropped
        raise ModelError(f"{adapter_dir.name}: adapts an embedding ({embedded[0].removeprefix(PEFT_PREFIX)}), which "
                         "cannot be served side by side", code="unsupported_adapter",
                         hint="merge the adapter into a full model and serve that instead")
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key, lora_a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
        lora_b = tensors.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if lora_b is None:
            raise ModelError(f"{adapter_dir.name}: {name} has lora_A but no lora_B", code="bad_adapter")
        rank = _pattern_value(rank_pattern, name, config.get("r", lora_a.shape[0]))
        alpha = _pattern_value(alpha_pattern, name, config.get("lora_alpha", rank))
        scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
        modules[name] = (lora_a, lora_b, float(scale))
    if not modules:
        raise ModelError(f"{adapter_dir.name}: the adapter holds no LoRA weights", code="bad_adapter")
    return LoraWeights(modules=modules)


def _pattern_value(pattern: dict, name: str, default):
    for key, value in pattern.items():
        if name == key or name.endswith("." + key):
            return value
    return default


class AdapterSlots:
    """Installs adapters into a model's linear layers under integer slots (0 is the bare base)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.routing = Routing()
        self._wrappers: dict[str, MultiLoraLinear] = {}
        self._next_slot = 1
        self._dtype = next(model.parameters()).dtype
        self._device = next(model.parameters()).device

    def install(self, weights: LoraWeights) -> int:
        """Check every module first, then install; returns the new slot."""
        targets = {}
        for name, (lora_a, lora_b, _) in weights.modules.items():
            module = self._find_linear(name)
            if lora_a.shape[1] != module.in_features or lora_b.shape[0] != module.out_features:
                raise ModelError(f"adapter shapes do not match the base model at {name}", code="adapter_mismatch",
                                 hint="the adapter was trained on a different base model")
            targets[name] = module
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        for name, (lora_a, lora_b, scale) in weights.modules.items():
            wrapper = self._wrap(name, targets[name])
            wrapper.deltas[slot] = (lora_a.to(self._device, self._dtype), lora_b.to(self._device, self._dtype), scale)
        return slot

    def remove(self, slot: int) -> None:
        for wrapper in self._wrappers.values():
            wrapper.deltas.pop(slot, None)

    def _find_linear(self, name: str) -> nn.Linear | QuantizedLinear:
        if name in self._wrappers:
            return self._wrappers[name].base
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the base model has no module {name}", code="adapter_mismatch",
                             hint="the adapter was trained on a different base model") from None
        if not isinstance(module, nn.Linear | QuantizedLinear):
            raise ModelError(f"{name} is not a linear layer", code="adapter_mismatch")
        return module

    def _wrap(self, name: str, module: nn.Linear | QuantizedLinear) -> MultiLoraLinear:
        if name not in self._wrappers:
            self._wrappers[name] = MultiLoraLinear(module, self.routing)
            replace_module(self.model, name, self._wrappers[name])
        return self._wrappers[name]
