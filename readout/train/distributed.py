"""torchrun support: one process per GPU, DistributedDataParallel on the head, rank 0 writes files."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes (a single process when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, head: nn.Module) -> nn.Module:
        """The head under DistributedDataParallel when distributed (gradients averaged over processes)."""
        if not self.distributed:
            return head
        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(head, device_ids=device_ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_workers() -> Workers:
    """Join the process group when torchrun set WORLD_SIZE > 1 (NCCL on GPUs, Gloo on CPUs); pin this process's
    GPU before ComfyUI picks its device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Workers()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size(), local_rank)


def close_workers(workers: Workers) -> None:
    """Leave the process group."""
    if workers.distributed and dist.is_initialized():
        dist.destroy_process_group()
