"""torch.distributed for the trainer: set-up from torchrun's environment, small collectives.

``torchrun --nproc_per_node N -m asrkd.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the trainer runs as a
single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA) and
    pick this process's device (``cuda:LOCAL_RANK`` under DDP on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={device!r} but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local_rank, dev)
    if world > 1:
        info.backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                info.backend, timeout=timedelta(minutes=30), device_id=dev if dev.type == "cuda" else None
            )
    return info


def shutdown(info: DistInfo, *, clean: bool = True) -> None:
    """Leave the process group (after a clean run, once all ranks are there).

    Why the pause at the end: a gloo worker thread drops a finished collective's work object
    after the caller has been told it is done; when that object holds tensors created in
    Python (``all_gather_object``), dropping it needs the GIL. A DistributedDataParallel
    wrapper keeps the process group, and so its worker threads, alive past
    ``destroy_process_group`` (torch 2.14), and a worker that asks for the GIL while the
    interpreter is shutting down aborts the process ("terminate called without an active
    exception") after a successful run. Sleeping hands the GIL to those threads first.
    """
    if info.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
        time.sleep(0.2)


def all_reduce(tensor: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In place across ranks (``sum`` or ``max``); the tensor must live on ``info.device``."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
