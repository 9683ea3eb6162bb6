"""FSDP2 sharding of full fine-tuning under torchrun, and the full-state gather/scatter of its checkpoints.

Each decoder layer is sharded, then the root (embeddings, final norm, head), so a process holds
1/world_size of the weights, gradients and AdamW moments. Gradients are reduce-scattered as sums,
not means: the loss is already divided by the trained tokens of the whole step on every process.
Checkpoints stay in the single-process format (full tensors keyed by parameter name, rank 0
writes), so a sharded run resumes from them and `model/` loads with `from_pretrained`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from tunery.config import TrainConfig
from tunery.errors import ConfigError, TrainingError
from tunery.training.distributed import Distributed

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)


def check_fsdp_config(config: TrainConfig, dist: Distributed) -> None:
    """FSDP2 shards full fine-tuning across torchrun processes; anything else is refused up front."""
    if not config.train.fsdp:
        return
    if config.method != "full":
        raise ConfigError(f"train.fsdp shards full fine-tuning only, not method {config.method}", code="fsdp_method",
                          hint="set train.fsdp: false (LoRA/QLoRA adapters are small; under torchrun they use DDP)")
    if not dist.enabled:
        raise ConfigError("train.fsdp needs several processes under torchrun (this is a single process)",
                          code="fsdp_single_process",
                          hint="run `torchrun --nproc_per_node N -m tunery.cli train CONFIG` or set train.fsdp: false")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, found by the class names transformers marks as not to be split."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingError(f"cannot find the decoder layers of {type(model).__name__} to shard", code="fsdp_layers",
                            hint="set train.fsdp: false to train this model with DDP")
    return layers


def shard_model(model: torch.nn.Module, dist: Distributed, device: str) -> torch.nn.Module:
    """Shard each decoder layer, then the root, over all processes; gradients are summed, not averaged."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.split(":")[0], (dist.world_size,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # A plain SUM reduction (gloo has no pre-multiplied sum; factor 1 needs no scaling).
            module.set_force_sum_reduction_for_comms(True)
    dist.sharded = True
    return model


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every process calls this; rank 0 gets the full weights on CPU, the others an empty dict."""
    return cast("dict[str, torch.Tensor]", get_model_state_dict(model, options=GATHER))  # full tensors: GATHER


def gather_training_state(model, optimizer, params: list[tuple[str, torch.nn.Parameter]]
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable weights, AdamW state as `name::key`) in full on rank 0; empty dicts elsewhere."""
    trainable = {name for name, _ in params}
    weights = {k: v for k, v in gather_model_state(model).items() if k in trainable}
    optim: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=GATHER)
    tensors = {f"{name}::{key}": torch.as_tensor(value).detach().clone().contiguous()
               for name, state in optim.get("state", {}).items() for key, value in state.items()}
    return weights, tensors


def scatter_training_state(model, optimizer, params: list[tuple[str, torch.nn.Parameter]], dist: Distributed,
                           weights: dict[str, torch.Tensor], optim_tensors: dict[str, torch.Tensor]) -> None:
    """Every process calls this; rank 0's full tensors are broadcast and each process keeps its shard."""
    missing = sorted({name for name, _ in params} - set(weights)) if dist.is_main else []
    first_missing = dist.broadcast_text(missing[0] if missing else "")  # every process raises, or none
    if first_missing:
        raise TrainingError(f"checkpoint lacks trainable tensors (e.g. {first_missing})", code="checkpoint_mismatch",
                            hint="the run's config changed since the checkpoint was written")
    model_state: dict[str, Any] = dict(weights) if dist.is_main else {}
    set_model_state_dict(model, model_state, options=SCATTER)
    if dist.is_main:
        names = {id(p): n for n, p in params}
        state: dict[str, dict] = {}
        for key, value in optim_tensors.items():
            name, field = key.split("::", 1)
            state.setdefault(name, {})[field] = value
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [names[id(p)] for p in group["params"]]} for group in optimizer.param_groups]
        full: dict[str, Any] = {"state": state, "param_groups": groups}
    else:
        full = {}
    set_optimizer_state_dict(model, optimizer, full, options=SCATTER)
