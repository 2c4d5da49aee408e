"""torchrun / DDP glue: read the launcher's environment, pick the backend and device, wrap the model.

``torchrun`` (single node: ``--standalone --nproc_per_node=N``; several nodes: ``--nnodes``, ``--node_rank``,
``--rdzv-endpoint`` …) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the
default ``env://`` initialisation reads them. Backend: NCCL when the device is CUDA, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from alexnet.errors import TrainingError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the local rank's CUDA device if there is one, else CPU; anything else is checked."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise TrainingError(f"unknown device {requested!r} (use cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        count = torch.cuda.device_count()
        if device.index >= count:  # else the first .to(device) fails with a CUDA traceback
            raise TrainingError(
                f"device {requested!r} requested but this machine has {count} CUDA device"
                f"{'' if count == 1 else 's'} (cuda:0 … cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("device 'mps' requested but MPS is not available")
    return device


def setup(requested_device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device)


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``model`` when distributed (gradients are averaged over ranks), else ``model`` itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place), queued on the device like a kernel: no wait on NCCL."""
    import torch.distributed as dist

    dist.all_reduce(t)
    return t


def share_from_main(info: DistInfo, message: str | None) -> str | None:
    """Rank 0's ``message`` on every rank (the others pass ``None``); a collective, so a barrier too."""
    if not info.distributed:
        return message
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)  # a str from rank 0 of this same job, never a user's file
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()
