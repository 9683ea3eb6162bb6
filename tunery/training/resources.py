"""Before loading anything: will the run fit in memory and on disk? Refuse with the numbers if not.

Estimates are deliberately simple sums (weights, gradients, AdamW moments, activations); they
exist to stop hopeless runs early, not to predict peak usage to the megabyte.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import ResourceError

GIB = 1024**3


@dataclass
class MemoryEstimate:
    weights_bytes: int
    trainable_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.trainable_bytes + self.activations_bytes


def count_model_parameters(model_path: Path) -> tuple[int, dict]:
    """Parameter count from safetensors headers (no tensor is read) and the model config."""
    total = 0
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    config_path = Path(model_path) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return total, config


def estimate_memory(num_params: int, model_config: dict, *, method: str, weight_bytes: int,
                    lora_rank: int, tokens_per_micro_batch: int, gradient_checkpointing: bool) -> MemoryEstimate:
    """Weights at their storage size; fp32 trainable weights + grads + 2 AdamW moments; activations."""
    hidden = int(model_config.get("hidden_size", 1024))
    layers = int(model_config.get("num_hidden_layers", 24))
    if method == "qlora":
        weights = num_params // 2 + num_params // 32  # 4-bit plus scales
    else:
        weights = num_params * weight_bytes
    if method == "full":
        trainable = num_params * 4 * 3 + (num_params * 4 if weight_bytes != 4 else 0)
    else:
        trainable = 7 * layers * lora_rank * 2 * hidden * 16  # ~7 adapted matrices per layer
    per_token_layer = hidden * (2 if gradient_checkpointing else 34)
    activations = tokens_per_micro_batch * layers * per_token_layer * 2
    return MemoryEstimate(int(weights), int(trainable), int(activations))


def check_memory(estimate: MemoryEstimate, available: int | None) -> None:
    if available is None or estimate.total_bytes <= available:
        return
    raise ResourceError(
        f"this run needs about {estimate.total_bytes / GIB:.1f} GiB of memory (weights "
        f"{estimate.weights_bytes / GIB:.1f}, trainable state {estimate.trainable_bytes / GIB:.1f}, "
        f"activations {estimate.activations_bytes / GIB:.1f}) but only {available / GIB:.1f} GiB is available",
        code="insufficient_memory",
        hint="use method: qlora or lora, a smaller train.batch_size or data.max_seq_len, or "
             "train.gradient_checkpointing: true",
    )


def check_disk(folder: Path, needed_bytes: int) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise ResourceError(
            f"{probe} has {free / GIB:.2f} GiB free; checkpoints and outputs of this run need about "
            f"{needed_bytes / GIB:.2f} GiB", code="insufficient_disk",
            hint="free disk space, lower train.keep_checkpoints, or set output_dir on a larger disk",
        )


def checkpoint_bytes(method: str, num_params: int, trainable_params: int, keep: int) -> int:
    """Disk for `keep + 1` checkpoints (trainable fp32 weights + 2 moments) and the final export."""
    per_checkpoint = trainable_params * 4 * 3
    final = num_params * 4 if method == "full" else trainable_params * 4
    return per_checkpoint * (keep + 2) + final
