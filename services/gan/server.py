"""GanService over gRPC: a thin adapter from requests to services.gan.pipeline jobs.

Requests are validated synchronously (bad config, empty dataset, unknown split, masks whose
size differs from the checkpoint's without `resize`, unknown options → INVALID_ARGUMENT on
the Submit call); the work runs as an idempotent job of the shared JobManager.
"""
from __future__ import annotations

import logging
from typing import Any

from services.common.config import config_from_proto
from services.common.datasets import Dataset, validate_name
from services.common.jobs import JobContext, JobServicerMixin
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore
from services.gan.config import GanConfig, GenerateConfig
from services.gan.pipeline import CheckpointCache, generation_plan, run_generate, run_train, training_records
from synthaug.v1 import common_pb2, gan_pb2, gan_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "gan"
FULL_NAME = gan_pb2.DESCRIPTOR.services_by_name["GanService"].full_name
CHECKPOINT_CACHE = 2
#: GanGenerateRequest fields that are not GenerateConfig settings.
GENERATE_REQUEST_FIELDS = ("checkpoint", "masks", "split", "seed", "name")


class GanServicer(JobServicerMixin, gan_pb2_grpc.GanServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.jobs = runtime.jobs
        self.store: ObjectStore = runtime.store
        self.checkpoints = CheckpointCache(self.store, CHECKPOINT_CACHE)

    def SubmitTrain(self, request: gan_pb2.GanTrainRequest, context: Any) -> common_pb2.JobRef:
        cfg = config_from_proto(GanConfig, request.config, "GanTrainRequest.config")
        ds = Dataset.load(self.store, request.dataset)
        training_records(ds, request.split)
        split, seed = request.split, int(request.seed)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            return run_train(ctx, self.store, ds, split, cfg, seed)

        return self.jobs.submit("gan.Train", request, run)

    def SubmitGenerate(self, request: gan_pb2.GanGenerateRequest, context: Any) -> common_pb2.JobRef:
        cfg = config_from_proto(GenerateConfig, request, exclude=GENERATE_REQUEST_FIELDS)
        if request.name:
            validate_name(request.name)
        state = self.checkpoints.get(request.checkpoint, "GanGenerateRequest.checkpoint")
        ds = Dataset.load(self.store, request.masks)
        generation_plan(ds, request.split, state, cfg)
        ckpt = common_pb2.ObjectRef()
        ckpt.CopyFrom(request.checkpoint)
        split, seed, name = request.split, int(request.seed), request.name

        def run(ctx: JobContext) -> common_pb2.JobResult:
            return run_generate(ctx, self.store, ds, split, state, ckpt, cfg, seed, name)

        return self.jobs.submit("gan.Generate", request, run)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(gan_pb2_grpc.add_GanServiceServicer_to_server, GanServicer(runtime), FULL_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
