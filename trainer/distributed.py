"""Multi-process set-up for ``torchrun`` (one process per GPU, or several CPU processes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fiftyone_unseg.device import resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world_size, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def gather(ctx: Context, value) -> list:
    """Every process's ``value`` (picklable), by rank (each must call this)."""
    if not ctx.distributed:
        return [value]
    values = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return values


def agree(ctx: Context, flag: bool) -> bool:
    """The main process's ``flag``, on every process (each must call this together)."""
    return gather(ctx, flag)[0]


def check_same(ctx: Context, value: int, what: str) -> None:
    """ValueError unless every process has the same ``value`` (each must call this)."""
    found = gather(ctx, value)
    if len(set(found)) > 1:
        raise ValueError(f"the processes disagree on the {what}: {found} (by rank)")
