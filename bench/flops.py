"""Model FLOPs of a training workload, a measured matmul peak, and the MFU that divides them.

Model FLOPs count the work the objective needs, whatever an implementation actually does:
  per token           (4 N_frozen + 6 N_trained) over decoder linear weights
                      + 3 x 4 d_attn x ctx  causal attention (QK^T and AV, forward + 2x backward)
  per trained token   (4 or 6) x V x d   output head, only where the loss is taken
where "4" is forward (2) + backward to activations only (2) for a frozen weight, and "6" adds the
weight gradient (2) for a trained one. LoRA adds 6 r (d_in + d_out) per adapted linear per token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ModelShape:
    """What the FLOPs formula needs from a model: decoder linears, attention width, head size."""

    linear_shapes: list[tuple[str, int, int]]  # (module name, in_features, out_features), decoder only
    num_layers: int
    attn_width: int  # num_attention_heads x head_dim
    vocab_size: int
    hidden_size: int
    tied_head: bool

    @property
    def decoder_linear_params(self) -> int:
        return sum(i * o for _, i, o in self.linear_shapes)

    def lora_params(self, rank: int) -> int:
        return sum(rank * (i + o) for _, i, o in self.linear_shapes)


def read_model_shape(model_path: str | Path) -> ModelShape:
    """Build the model on the meta device (no weights read) and list its decoder linear layers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    shapes = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and m is not head]
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return ModelShape(linear_shapes=shapes, num_layers=text.num_hidden_layers,
                      attn_width=text.num_attention_heads * head_dim, vocab_size=text.vocab_size,
                      hidden_size=text.hidden_size, tied_head=bool(getattr(text, "tie_word_embeddings", False)))


def training_flops(shape: ModelShape, *, method: str, rank: int, tokens: int, trained_tokens: int,
                   context_sum: int) -> float:
    """Model FLOPs of one pass of training over data with these token counts (see module docstring).

    `context_sum` is the number of causal (query, key) pairs: sum of n(n+1)/2 over examples.
    """
    n_linear = shape.decoder_linear_params
    if method == "full":
        linear = 6 * n_linear * tokens
        head_factor = 4  # the output head stays frozen in tunery's full fine-tuning (tied embeddings)
    else:
        linear = 4 * n_linear * tokens + 6 * shape.lora_params(rank) * tokens
        head_factor = 4
    attention = 3 * 4 * shape.attn_width * shape.num_layers * context_sum
    head = head_factor * shape.vocab_size * shape.hidden_size * trained_tokens
    return float(linear + attention + head)


def mfu(flops: float, wall_s: float, peak_flops_per_s: float) -> float:
    """Achieved model FLOPs per second as a fraction of the peak."""
    if wall_s <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops / wall_s / peak_flops_per_s


@dataclass
class MatmulPeak:
    """Best observed dense matmul throughput for one dtype."""

    dtype: str
    size: int
    flops_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def device_and_sync():
    """Where peaks are measured (the GPU when there is one, as training runs there) and its wait."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.synchronize
    return "cpu", lambda: None


def measure_matmul_peak(dtype_name: str = "bf16", sizes: tuple[int, ...] = (1024, 2048, 4096),
                        min_time_s: float = 0.5) -> MatmulPeak:
    """Time square `torch.matmul` at a few sizes; the best rate is the peak (others share the CPU)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    device, sync = device_and_sync()
    best = MatmulPeak(dtype_name, 0, 0.0)
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        torch.matmul(a, b)  # warm-up: oneDNN picks and caches its kernel on the first call
        sync()
        best_s = float("inf")
        spent = 0.0
        while spent < min_time_s:
            start = time.perf_counter()
            torch.matmul(a, b)
            sync()
            elapsed = time.perf_counter() - start
            best_s = min(best_s, elapsed)
            spent += elapsed
        rate = 2 * n**3 / best_s
        if rate > best.flops_per_s:
            best = MatmulPeak(dtype_name, n, rate)
        if best_s > 1.0:  # a CPU without bf16 units emulates it: the next size would take minutes
            break
    return best


def measure_linear_peak(dtype_name: str, linear_shapes: list[tuple[str, int, int]] | list[list],
                        tokens: int = 256, min_time_s: float = 0.5) -> MatmulPeak:
    """The rate of `F.linear` at the model's own shapes: every decoder linear over a `tokens`-row micro-batch.

    One pass times each distinct (in, out) shape once and counts it as often as the decoder has it;
    the best pass (others share the CPU) gives the rate a training step's matmuls can reach here,
    which square `matmul` overstates for narrow models (576 wide: the inner dimension is small).
    """
    import torch
    import torch.nn.functional as F

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    counts: dict[tuple[int, int], int] = {}
    for _, fan_in, fan_out in linear_shapes:
        counts[(fan_in, fan_out)] = counts.get((fan_in, fan_out), 0) + 1
    device, sync = device_and_sync()
    operands = [(torch.randn(tokens, i, dtype=dtype, device=device), torch.randn(o, i, dtype=dtype, device=device), n)
                for (i, o), n in counts.items()]
    flops = sum(2 * tokens * x.shape[1] * w.shape[0] * n for x, w, n in operands)

    def one_pass() -> float:
        """Each distinct shape once, its time counted as often as the decoder has it."""
        total = 0.0
        for x, w, n in operands:
            start = time.perf_counter()
            F.linear(x, w)
            sync()
            total += n * (time.perf_counter() - start)
        return total

    one_pass()  # warm-up: kernel selection
    best_s, spent = float("inf"), 0.0
    while spent < min_time_s or best_s == float("inf"):
        elapsed = one_pass()
        best_s, spent = min(best_s, elapsed), spent + elapsed
    return MatmulPeak(dtype_name, tokens, flops / best_s)
