"""Process-group setup for ``torchrun``/multi-process training (DDP), and single-process fallback.

``torchrun --nproc_per_node N -m medsam finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed` then joins the
group (NCCL on CUDA, gloo otherwise) and gives each process its device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medsam.models import select_device

__all__ = ["DistInfo", "all_reduce_mean", "barrier", "cleanup_distributed", "init_distributed"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, on ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    enabled: bool
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group when launched with ``WORLD_SIZE > 1``; otherwise one process.

    Parameters
    ----------
    device
        ``None``/``"auto"``: CUDA (``cuda:LOCAL_RANK``) when available, else MPS, else CPU.
    backend
        Process-group backend; default NCCL on CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(None if device in (None, "auto") else device)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, enabled=False, owns_group=False)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    logger.info("rank %d of %d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistInfo(rank, world, local_rank, dev, enabled=True, owns_group=owns)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar over ranks (the scalar itself in a single process)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
