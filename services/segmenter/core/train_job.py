"""A segmenter.Train job, in one process or data-parallel under torchrun.

`run_train` is the body of every Train job: the gRPC server's (services/segmenter/server.py)
and `torchrun_train`'s, so both produce the same result — the model file and the training
record as blobs, read by role (outputs["model"], outputs["training_record"]) — persisted by
the job manager as the job's result, where every segmenter replica finds it.

Data-parallel training under torchrun (core/distributed.py): rank 0 runs the job (as the
gRPC server, or as `torchrun_train`) and *leads*; every other rank *follows*. When rank 0
starts a Train job it sends the request and the job's work prefix to the followers over a
control channel (a gloo process group that may sit idle indefinitely); each follower builds
the same Trainer from the request and trains its share of the same step stream, so the job
is one DistributedDataParallel run. Only rank 0 validates, writes checkpoints, writes the
result and reports progress. One Train job runs at a time (the followers hold one trainer).

Limits, by design of this simple scheme: a failure on any rank (an exception, a lost
process) breaks the process group, and the launch has to be restarted (torchrun
``--max-restarts``); the job resumes from its last checkpoint when it is submitted again.
Cancelling a running data-parallel job stops rank 0 only; the followers then fail on their
next collective, which ends the launch the same way.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from services.common.jobs import JobContext
from services.common.refs import add_output, object_ref
from services.common.store import ObjectStore, canonical_json
from services.segmenter.core.checkpoints import StoreCheckpointIO
from services.segmenter.core.distributed import DistInfo
from services.segmenter.core.train_request import prepare_trainer
from services.segmenter.core.trainer import Trainer, TrainResult
from synthaug.v1 import common_pb2, segmenter_pb2

log = logging.getLogger(__name__)

#: How long a follower waits for the next job (the control group's collective timeout).
IDLE_TIMEOUT = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Order:
    """What rank 0 sends the followers: a Train request and its work prefix, or stop (None)."""

    request: bytes
    work_prefix: str


class ControlChannel:
    """Rank 0 → followers: a broadcast over a gloo group of its own, with a timeout long enough
    for a follower to wait idle between jobs. Every rank must create it, in the same order
    relative to other process groups."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.group: Any = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)

    def send(self, order: Order | None) -> None:
        if not self.info.is_main:
            raise RuntimeError("only rank 0 sends orders")
        dist.broadcast_object_list([order], src=0, group=self.group)

    def receive(self) -> Order | None:
        box: list[Order | None] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


class Leader:
    """Rank 0's side: start the followers on a job, or tell them to exit."""

    def __init__(self, channel: ControlChannel):
        self.channel = channel
        self._stopped = False

    def start(self, request: segmenter_pb2.SegmenterTrainRequest, work_prefix: str) -> None:
        log.info("rank 0: starting %d followers on a Train job (work %s)", self.channel.info.world_size - 1, work_prefix)
        self.channel.send(Order(request.SerializeToString(deterministic=True), work_prefix))

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.channel.send(None)


def follow(store: ObjectStore, channel: ControlChannel) -> int:
    """A follower's life: train each job rank 0 starts, until it says stop. An error ends the
    process (the process group is unusable after a failed collective)."""
    rank = channel.info.rank
    log.info("rank %d: following rank 0", rank)
    while True:
        order = channel.receive()
        if order is None:
            log.info("rank %d: stop", rank)
            return 0
        request = segmenter_pb2.SegmenterTrainRequest.FromString(order.request)
        trainer = prepare_trainer(store, request)
        trainer.checkpoints = StoreCheckpointIO(store, order.work_prefix)
        trainer.train()
        log.info("rank %d: job under %s done", rank, order.work_prefix)


def job_result(store: ObjectStore, trainer: Trainer, result: TrainResult, job_id: str) -> common_pb2.JobResult:
    """The Train job's result: model file and training record as blobs, by role, and the best
    evaluation's figures as metrics."""
    model_info = store.put_blob(result.model_file, "pt")
    record = result.record
    record["job"] = job_id
    record_info = store.put_blob(canonical_json(record), "json", "application/json")
    best = record["epochs"][[e["epoch"] for e in record["epochs"]].index(record["best_epoch"])]
    budget = record["budget"]
    metrics = {"best_epoch": float(record["best_epoch"]), "epochs_run": float(len(record["epochs"])),
               "best_iteration": float(best["iteration"]), "iterations_run": float(budget["iterations_run"]),
               "images_seen": float(budget["images_seen"]), "images_per_s": float(best["images_per_s"]),
               **{f"val_{k}": float(v) for k, v in best.get("val", {}).items()}}
    out = common_pb2.JobResult(
        metrics=metrics, attributes={"architecture": trainer.cfg.architecture, "device": record["device"],
                                     "world_size": str(record["world_size"]),
                                     "stopped_early": str(record["stopped_early"]).lower()})
    add_output(out, "model", object_ref(store, model_info))
    add_output(out, "training_record", object_ref(store, record_info))
    return out


def run_train(store: ObjectStore, request: segmenter_pb2.SegmenterTrainRequest, trainer: Trainer, ctx: JobContext,
              leader: Leader | None = None) -> common_pb2.JobResult:
    """Run a prepared Train job (core/train_request.prepare_trainer): with a ``leader``, as rank
    0 of a data-parallel launch whose followers train alongside."""
    if leader is not None:
        leader.start(request, ctx.work_prefix)
    trainer.checkpoints = StoreCheckpointIO(store, ctx.work_prefix)
    trainer.progress = ctx.progress
    return job_result(store, trainer, trainer.run(), ctx.job_id)
