"""Data-parallel helpers for ``torchrun``: process-group setup, rank queries and batch sharding."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo",
    "barrier",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "shard",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None, device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Without those variables (a plain ``python`` run) this does nothing and returns rank 0 of 1. The backend
    defaults to NCCL when ``device`` is CUDA, else gloo. Safe to call twice.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)  # before init, so NCCL binds each rank to its own GPU
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: Tensor, rank: int, world_size: int) -> tuple[Tensor, float]:
    """This rank's contiguous part of a global batch, and the loss weight that keeps gradients exact.

    DDP averages gradients over ranks. Scaling rank r's mean loss by ``n_r * world / n`` makes that average
    equal the gradient of the mean over the whole global batch even when it does not split evenly (the
    weight is 1 when it does).
    """
    n = index.numel()
    if world_size == 1:
        return index, 1.0
    bounds = [n * r // world_size for r in range(world_size + 1)]
    part = index[bounds[rank]:bounds[rank + 1]]
    return part, part.numel() * world_size / n
