"""One process per device, started by torchrun (or alone): DDP or FSDP2.

`torchrun --nproc_per_node N -m opencanvas train ...` sets RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT; a plain `opencanvas train` is world size 1
and never touches torch.distributed, so the same command runs on one CPU, one
GPU or many nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)


def shutdown(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def all_reduce_sum(env: DistEnv, value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a copy; the input is untouched)."""
    value = value.detach().clone()
    if env.active:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(env: DistEnv, obj: object) -> object:
    if not env.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(env: DistEnv, obj: object) -> list[object]:
    if not env.active:
        return [obj]
    out: list[object] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def wrap_model(module: nn.Module, unet: UNet2DConditionModel, env: DistEnv, parallel: str) -> nn.Module:
    """Wrap the training module for data parallelism.

    ddp: the whole `module` in DistributedDataParallel (gradients all-reduced in buckets
    that overlap the backward pass). fsdp: FSDP2 `fully_shard` on every UNet block and
    then the UNet, so parameters, gradients and optimizer state are sharded over ranks;
    `module` is returned unwrapped (FSDP2 shards in place).
    """
    if not env.active:
        return module
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DDP(module, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
            if block is not None:
                fully_shard(block)
        fully_shard(unet)
        return module
    raise ValueError(f"--parallel must be ddp or fsdp, got {parallel!r}")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU, gathering a sharded DTensor (collective: call on every rank)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu()


@torch.no_grad()
def load_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into `target`, which may be a sharded DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        full = distribute_tensor(full.to(target.device), target.device_mesh, target.placements)
    target.copy_(full)
