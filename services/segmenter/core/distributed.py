"""Multi-GPU training with torchrun: the simple, documented DDP path.

Run the same training under ``torchrun`` and it becomes data-parallel — one job with
``-m services.segmenter.torchrun_train``, or a whole segmenter server with ``-m
services.segmenter`` (rank 0 serves gRPC, the other ranks follow: core/train_job.py)::

    torchrun --standalone --nproc_per_node=NUM_GPUS -m services.segmenter.torchrun_train \\
        --store s3://bucket?endpoint=minio:9000 --request train-request.json

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; :func:`init_from_env` then joins the process
group (NCCL on CUDA, gloo on CPU), pins each process to GPU LOCAL_RANK, and the trainer
wraps the model in DistributedDataParallel (BatchNorm → SyncBatchNorm on GPUs; on CPU each
process normalises its own share), gives each rank every world-th image of the same training
stream (core/stream.py), and lets only rank 0 validate, checkpoint and report; the training
record keeps a digest of what every rank trained on. With WORLD_SIZE unset or 1 nothing of
this happens (the path the service and the tests use).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
