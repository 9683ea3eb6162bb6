"""Weight-only quantization for CPU serving: int4 (group 32) or int8 (per channel) linear layers.

A batch-1 decode step is bound by reading weights from memory; int4 weights are an eighth of fp32.
Knows torch's CPU kernels and nn.Linear; nothing about engines, adapters or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from tunery.errors import ConfigError, ModelError
from tunery.inference.calibration import input_importance
from tunery.inference.rounding import fit_int4_groups

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WeightFormat = Literal["full", "int8", "int4"]
WEIGHT_FORMATS: dict[str, str] = {
    "full": "the model's own precision (what was evaluated)",
    "int8": "int8 per-channel weights in every linear layer and the output head",
    "int4": "int4 weights (group 32, fp16 scale + min fitted per group) in the decoder, int8 output head (group 32, "
            "fp16 scale)",
}
GROUP_SIZE = 32
# Measured on one CPU thread (576x1536 layers of the default model): the int4/int8 kernels win up to
# ~64 rows (decode, small prefills); from ~128 rows dequantizing to fp32 and one dense matmul is
# faster (512 rows: 6.7 ms against 14 ms per layer), so long prefills take that path.
DEQUANT_MIN_ROWS = 128


class QuantizedLinear(nn.Module):
    """Shared surface of the quantized layers: in/out features, bias, the layer's activation dtype."""

    bias: torch.Tensor | None  # a buffer

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Always the dense path on the exact weights: set by the fast lane, so that the prompts torch
        # prefills for it meet the fp16 scales its passes read, not the kernel's bf16 roundings of them.
        self.dense = False
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] >= DEQUANT_MIN_ROWS or self.dense:
            y = (rows.float() @ self.dequantized_weight().T).to(x.dtype)
        else:
            # These kernels are 10-30x slower on fp32 activations than on bf16 ones.
            y = self._kernel(rows.to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def _kernel(self, x_bf16: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:
        """The [out, in] fp32 weight this layer computes with."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int4Linear(QuantizedLinear):
    """Asymmetric int4 weights, one (scale, min) per group of 32 inputs: w = q * scale + min, q in 0..15.

    Scales and mins are fitted per group (`rounding.fit_int4_groups`, weighted by `importance`, each
    input's mean squared activation on a calibration set, when given) and kept in fp16, exactly as the
    fast lane reads them; torch's int4 kernel takes them rounded to bf16.
    """

    packed: torch.Tensor  # buffers
    scales_and_zeros: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor

    def __init__(self, linear: nn.Linear, group_size: int = GROUP_SIZE, importance: torch.Tensor | None = None):
        n, k = linear.out_features, linear.in_features
        super().__init__(k, n, linear.bias)
        self.group_size = group_size
        q, scales, mins = fit_int4_groups(linear.weight, importance, group_size)
        self.register_buffer("scales", scales)  # [n, k/g] fp16
        self.register_buffer("mins", mins)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        # The kernel reads w = (q - 8) * scale + zero, so zero = min + 8 * scale; it wants them in bf16.
        scale, low = scales.float().T, mins.float().T
        self.register_buffer("scales_and_zeros", torch.stack([scale, low + 8 * scale], -1).contiguous().bfloat16())
        # Two codes per byte, read by the dense (prefill) path and the fast lane's C kernel.
        self.register_buffer("codes", pack_codes(q))

    def _kernel(self, x_bf16):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x_bf16, self.packed, self.group_size,
                                                          self.scales_and_zeros)

    def dequantized_weight(self):
        n, k, g = self.out_features, self.in_features, self.group_size
        q = unpack_codes(self.codes, k).view(n, k // g, g).float()
        return torch.addcmul(self.mins.float().unsqueeze(-1), q, self.scales.float().unsqueeze(-1)).reshape(n, k)


def pack_codes(q: torch.Tensor) -> torch.Tensor:
    """[n, k] codes 0..15 (k a multiple of 32) → [n, ceil(k/64) * 32] bytes in the fast lane's order.

    Groups of 32 inputs go in pairs (64 inputs, 32 bytes). Input i of a group is in the low nibble
    for i < 16, the high one for i ≥ 16, of byte ((t // 4) * 2 + which) * 4 + t % 4, t = i % 16,
    which = 0 for the pair's first group and 1 for its second: a 4-byte lane of the pair holds one
    group, alternating, so per-group scales meet a dot product's lanes with one broadcast
    (tunery/inference/fastdecode.c). An odd last group is paired with zeros.
    """
    n, k = q.shape
    if k % 64:
        q = torch.cat([q, q.new_zeros(n, 64 - k % 64)], dim=1)
    pairs = q.shape[1] // 64
    q = q.view(n, pairs, 2, 2, 4, 4).permute(0, 1, 3, 4, 2, 5).reshape(n, pairs, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, pairs * 32).contiguous()


def unpack_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of `pack_codes`: bytes → [n, k] codes (uint8)."""
    n, half = codes.shape
    pairs = codes.view(n, half // 32, 1, 32)
    q = torch.cat([pairs & 15, pairs >> 4], dim=2).view(n, half // 32, 2, 4, 2, 4)
    return q.permute(0, 1, 4, 2, 3, 5).reshape(n, 2 * half)[:, :k]


class Int8Linear(QuantizedLinear):
    """Symmetric int8 weights with one scale per output channel: w = q * scale, q in -127..127."""

    weight_int8: torch.Tensor  # buffers
    scales: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).bfloat16()
        self.register_buffer("weight_int8", torch.round(w / scale.float()[:, None]).clamp(-127, 127)
                             .to(torch.int8).contiguous())
        self.register_buffer("scales", scale)

    def _kernel(self, x_bf16):
        return torch.ops.aten._weight_int8pack_mm(x_bf16, self.weight_int8, self.scales)

    def dequantized_weight(self):
        return self.weight_int8.float() * self.scales.float()[:, None]


class Int8GroupLinear(QuantizedLinear):
    """Symmetric int8 weights with one fp16 scale per group of 32 inputs (GGUF's Q8_0): w = q * scale.

    The output head of `--weights int4`: a head stored as Q8_0 (the default model's, tied to its
    embedding) comes out exactly, and an input channel with large weights coarsens its group only, not
    the whole row; a scale per channel moved the default model's top token at 3% of positions. The
    fast lane reads the codes and scales; torch has no kernel for group scales, so its path multiplies
    a bf16 copy of the weights, made on first use.
    """

    weight_int8: torch.Tensor  # buffers
    scales: torch.Tensor

    def __init__(self, linear: nn.Linear, group_size: int = GROUP_SIZE):
        n, k = linear.out_features, linear.in_features
        super().__init__(k, n, linear.bias)
        self.group_size = group_size
        w = linear.weight.detach().float().view(n, k // group_size, group_size)
        scale = (w.abs().amax(-1) / 127).half()  # as llama.cpp: amax / 127, rounded to fp16, codes from the fp32 one
        inverse = torch.where(scale > 0, 127 / w.abs().amax(-1).clamp(min=1e-30), torch.zeros_like(scale.float()))
        codes = torch.round(w * inverse.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", codes.view(n, k).contiguous())
        self.register_buffer("scales", scale)  # [n, k/g] fp16
        self._weight_bf16: torch.Tensor | None = None

    def _kernel(self, x_bf16):
        if self._weight_bf16 is None:
            self._weight_bf16 = self.dequantized_weight().bfloat16()
        return x_bf16 @ self._weight_bf16.T

    def dequantized_weight(self):
        n, k, g = self.out_features, self.in_features, self.group_size
        return (self.weight_int8.view(n, k // g, g).float() * self.scales.float().unsqueeze(-1)).view(n, k)


@dataclass
class QuantizationReport:
    """What `quantize_model` did: layers converted and skipped, and how far the weights moved."""

    weights: str
    quantized: int = 0
    skipped: list[str] = field(default_factory=list)
    relative_error: float = 0.0  # ||W - W_q|| / ||W|| over all quantized weights together
    max_layer_error: float = 0.0  # the same, for the worst single layer
    calibration_tokens: int = 0  # tokens whose activations weighed the int4 rounding (0: none)
    _err_sq: float = 0.0
    _ref_sq: float = 0.0

    def add(self, original: torch.Tensor, layer: QuantizedLinear) -> None:
        w = original.detach().float()
        err_sq, ref_sq = float((w - layer.dequantized_weight()).pow(2).sum()), float(w.pow(2).sum())
        self.quantized += 1
        self._err_sq, self._ref_sq = self._err_sq + err_sq, self._ref_sq + ref_sq
        self.relative_error = (self._err_sq / max(self._ref_sq, 1e-30)) ** 0.5
        self.max_layer_error = max(self.max_layer_error, (err_sq / max(ref_sq, 1e-30)) ** 0.5)

    def summary(self) -> str:
        if self.weights == "full":
            return "weights: full precision"
        text = (f"weights: {self.weights} ({WEIGHT_FORMATS[self.weights]}); {self.quantized} layers quantized, "
                f"reconstruction error {self.relative_error:.2%} (worst layer {self.max_layer_error:.2%})")
        if self.calibration_tokens:
            text += f"; rounding fitted to {self.calibration_tokens} calibration tokens"
        return text + (f"; {len(self.skipped)} left in full precision" if self.skipped else "")


def check_weight_format(weights: str) -> None:
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weights format {weights!r}", code="bad_weights",
                          hint=f"choose one of {', '.join(WEIGHT_FORMATS)}")


def quantize_model(model: PreTrainedModel, weights: str, calibration: list[list[int]] | None = None,
                   ) -> QuantizationReport:
    """Swap the decoder's linear layers and the output head for quantized ones, in place.

    `int4`: decoder int4, head int8 per group of 32; `int8`: both int8 per channel. The head is untied from the input embedding,
    which keeps its own precision. Layers the kernels cannot take (in features not a multiple of 32,
    int4 outputs not a multiple of 16) stay as they are and are listed in the report. `calibration`
    (token id sequences, see `calibration.calibration_ids`) weighs int4 rounding by each input's
    mean squared activation on them; without it every input weighs alike.
    """
    check_weight_format(weights)
    report = QuantizationReport(weights=weights)
    if weights == "full":
        return report
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ConfigError(f"--weights {weights} uses CPU kernels; the model is on {device}", code="bad_weights",
                          hint="serve with --weights full on a GPU, or use vLLM for quantized GPU serving")
    head = model.get_output_embeddings()
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and module is not head]
    if any(isinstance(module, nn.Linear) and type(module) is not nn.Linear for module in model.modules()):
        raise ModelError("the model already holds quantized or wrapped linear layers", code="bad_weights",
                         hint="load the model in full precision (no 4-bit, no adapters attached) first")
    importance = {}
    if weights == "int4" and calibration:
        importance = input_importance(model, calibration, dict(targets))
        report.calibration_tokens = sum(len(ids) for ids in calibration)
    for name, linear in targets:
        layer = _quantize_linear(linear, "int4" if weights == "int4" else "int8", importance.get(name))
        if layer is None:
            report.skipped.append(name)
            continue
        report.add(linear.weight, layer)
        replace_module(model, name, layer)
    if head is not None and type(head) is nn.Linear:
        layer = _quantize_linear(head, "int8_group" if weights == "int4" else "int8")
        if layer is None:
            report.skipped.append("output head")
        else:
            report.add(head.weight, layer)
            model.set_output_embeddings(layer)
            model.config.tie_word_embeddings = False  # a later tie_weights() must not put it back
    if not report.quantized:
        raise ModelError(f"no layer of this model fits the {weights} kernels", code="bad_weights",
                         hint="they need in features divisible by 32; serve with --weights full")
    return report


def _quantize_linear(linear: nn.Linear, kind: str, importance: torch.Tensor | None = None) -> QuantizedLinear | None:
    n, k = linear.out_features, linear.in_features
    if k % GROUP_SIZE or (kind == "int4" and n % 16):
        return None
    if kind == "int8_group":
        return Int8GroupLinear(linear)
    return Int4Linear(linear, importance=importance) if kind == "int4" else Int8Linear(linear)


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put `layer` where the submodule called `name` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
