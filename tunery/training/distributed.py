"""Data-parallel set-up under `torchrun`: process group, gradient and metric reductions.

Gradients are summed across processes after accumulation (the loss is already normalised by the
global trained-token count), which is what DDP's all-reduce does, done once per optimizer step.
Without torchrun every method is a no-op and nothing here touches torch.distributed. With
`train.fsdp` the model is sharded (`tunery.training.fsdp`): FSDP2 reduce-scatters the gradients
itself, and every process must run the same number of forward/backward passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    """This process's place in the job; `world_size == 1` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sharded: bool = False  # FSDP2: gradients are reduced by the sharded model, not by sum_gradients

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def sum_int(self, value: int) -> int:
        if not self.enabled:
            return int(value)
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return int(tensor.item())

    def max_int(self, value: int) -> int:
        if not self.enabled:
            return int(value)
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def sum_float(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.enabled or self.sharded:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            n = grad.numel()
            param.grad = flat[offset:offset + n].view_as(param).to(param.dtype)
            offset += n

    def broadcast_params(self, params: list[torch.nn.Parameter]) -> None:
        """Start every process from rank 0's weights (adapter initialisation is random)."""
        if not self.enabled:
            return
        for param in params:
            torch.distributed.broadcast(param.data, src=0)

    def broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every process (as bytes in a tensor: nothing is pickled)."""
        if not self.enabled:
            return text
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        torch.distributed.broadcast(size, src=0)
        buffer = data if self.is_main else torch.zeros(int(size.item()), dtype=torch.uint8)
        torch.distributed.broadcast(buffer, src=0)
        return bytes(buffer.tolist()).decode("utf-8")

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def setup_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
