"""torch.distributed under torchrun, and the same calls as no-ops in a single process.

Every statistic that defines a weight is reduced across ranks through these helpers,
so N processes compute what one process with the same global batch would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this World created the process group, so closing it is ours to do

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process; true before the process group exists too."""
    return int(os.environ.get("RANK", "0")) == 0


def init_world() -> World:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, owns_group=created)


def close_world(world: World) -> None:
    """Close the process group if this World opened it (a caller running several stages keeps its own)."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_cat(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate equal-shaped tensors from all ranks along dim 0, in rank order (the global batch order)."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
