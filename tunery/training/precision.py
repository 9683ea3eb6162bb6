"""How a run computes: its precision (bf16 or fp32 matmuls, the frozen weights' dtype, and why) and torch threads.

Reads the machine through `tunery.host`; knows nothing about models, data or methods beyond "full or adapter".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tunery import host
from tunery.models.load import BF16_MIN_SPEEDUP, measure_linear_rates


@dataclass
class Precision:
    """Compute dtype for matmuls, dtype the frozen weights are stored in, and why."""

    compute: torch.dtype
    weights: torch.dtype
    reason: str
    measured_flops_per_s: dict[str, float] | None = None  # `auto`'s measurement, fp32 and bf16

    def to_dict(self) -> dict:
        """What run.json records: the choice, why, and the two rates it was decided on (if measured)."""
        out: dict[str, object] = {"compute": self.name, "reason": self.reason}
        if self.measured_flops_per_s:
            out["measured_gflops_per_s"] = {k: round(v / 1e9, 1) for k, v in self.measured_flops_per_s.items()}
        return out

    @property
    def name(self) -> str:
        return "bf16" if self.compute == torch.bfloat16 else "fp32"


def choose_precision(choice: str, method: str, device: str, shape: tuple[int, int] | None = None) -> Precision:
    """`auto` → bf16 on CUDA with bf16, or on CPUs with AMX/AVX512-BF16 where bf16 `F.linear` measures faster.

    `shape` (hidden, intermediate size) is where the CPU is measured: the model's own MLP projection.
    """
    rates = None
    if choice == "fp32":
        return Precision(torch.float32, torch.float32, "fp32 requested")
    if choice == "bf16":
        reason = "bf16 requested"
    elif device.startswith("cuda") and torch.cuda.is_bf16_supported():
        reason = "auto: CUDA device supports bf16"
    elif device == "cpu" and host.cpu_has_fast_bf16():
        # The flags say bf16 units exist; whether torch's kernels make them faster here (AMX is often
        # hidden in VMs, AVX512-BF16 alone can lose to fp32) is measured, not assumed.
        rates = measure_linear_rates(512, *(shape or (576, 1536)))
        speedup = rates["bf16"] / rates["fp32"]
        if speedup < BF16_MIN_SPEEDUP:
            return Precision(torch.float32, torch.float32,
                             f"auto: CPU has bf16 units but bf16 matmuls measured {speedup:.2f}x fp32 here", rates)
        reason = f"auto: CPU bf16 matmuls measured {speedup:.1f}x faster than fp32"
    else:
        return Precision(torch.float32, torch.float32, "auto: no fast bf16 on this hardware")
    # Full fine-tuning keeps fp32 master weights (bf16 updates lose small steps); adapters train in
    # fp32 while the frozen base can sit in bf16.
    weights = torch.float32 if method == "full" else torch.bfloat16
    return Precision(torch.bfloat16, weights, reason, rates)


def measured_rate(precision: Precision, device: str, shape: tuple[int, int] | None = None) -> float | None:
    """FLOP/s of `F.linear` at the run's compute precision and threads: `auto`'s measurement, else measured now
    on a CPU (a tenth of a second); None on CUDA, where nothing is measured yet."""
    if precision.measured_flops_per_s:
        return precision.measured_flops_per_s[precision.name]
    if device != "cpu":
        return None
    return measure_linear_rates(512, *(shape or (576, 1536)))[precision.name]


def set_threads(threads: int | None, processes: int = 1) -> int:
    """One torch thread per idle physical core by default.

    Hyperthreads slow matmuls down, and so do cores other processes already keep busy: a thread
    that is descheduled stalls every parallel region (measured 5-15x slower on a loaded 2-core box).
    """
    if threads is None:
        cores = host.physical_cores()
        threads = max(1, min(cores, cores - host.busy_cores(processes)) // max(1, processes))
    torch.set_num_threads(threads)
    return threads


# oneDNN keeps a compiled primitive (JIT code and buffers) per GEMM shape, 1024 of them by default. Packed
# micro-batches give the row count a new value almost every step, so a 100-step LoRA run of the default
# model grew by ~0.8 GiB of them (1.38 GiB RSS at step 5, 2.2 at step 100). 128 kept 40 steps at 1.63 GiB
# against 2.00 GiB, tokens/s within the noise (alternating runs: 264 and 248 capped, 247 and 272 not).
ONEDNN_CACHE_CAPACITY = 128


def limit_kernel_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> bool:
    """Bound oneDNN's primitive cache for a CPU training run, unless the user has set it (True if set here).

    oneDNN reads the variable when it first builds a primitive, so this must run before the run's first
    matmul; a process that already ran one keeps the size it started with.
    """
    if any(name in os.environ for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")):
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)
    return True
