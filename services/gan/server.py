"""GanService over gRPC: a thin adapter from requests to services.gan.pipeline jobs.

Requests are validated synchronously (bad config, empty dataset, unknown split, masks whose
size differs from the checkpoint's without `resize`, unknown options → INVALID_ARGUMENT on
the Submit call); the work runs as an idempotent job of the shared JobManager.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from services.common.datasets import Dataset, validate_name
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin
from services.common.refs import resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore
from services.gan.config import GanConfig
from services.gan.generator import load_checkpoint
from services.gan.pipeline import GenerateOptions, generation_plan, run_generate, run_train, training_records
from synthaug.v1 import common_pb2, gan_pb2, gan_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "gan"
FULL_NAME = gan_pb2.DESCRIPTOR.services_by_name["GanService"].full_name
CHECKPOINT_CACHE = 2


class GanServicer(JobServicerMixin, gan_pb2_grpc.GanServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.jobs = runtime.jobs
        self.store: ObjectStore = runtime.store
        self._ckpts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _checkpoint(self, ref: common_pb2.ObjectRef) -> dict[str, Any]:
        """Load (weights_only) and validate a checkpoint once; the job reuses the loaded state."""
        key = resolve_object(self.store, ref, "GanGenerateRequest.checkpoint", verify=True)
        sha = self.store.stat(key).sha256
        with self._lock:
            if sha in self._ckpts:
                self._ckpts.move_to_end(sha)
                return self._ckpts[sha]
        state = load_checkpoint(self.store.get_bytes(key), key)
        GanConfig.from_dict(state["config"])
        with self._lock:
            self._ckpts[sha] = state
            while len(self._ckpts) > CHECKPOINT_CACHE:
                self._ckpts.popitem(last=False)
        return state

    def SubmitTrain(self, request: gan_pb2.GanTrainRequest, context: Any) -> common_pb2.JobRef:
        cfg = GanConfig.from_proto(request.config)
        ds = Dataset.load(self.store, request.dataset)
        if ds.kind != "real":
            raise InvalidArgument(f"GanTrainRequest.dataset {ds.id} is of kind {ds.kind!r}: pix2pix trains on real pairs only")
        training_records(ds, request.split)
        seed, split = int(request.seed), request.split

        def run(ctx: JobContext) -> common_pb2.JobResult:
            return run_train(ctx, self.store, ds, split, cfg, seed)

        return self.jobs.submit("gan.Train", request, run)

    def SubmitGenerate(self, request: gan_pb2.GanGenerateRequest, context: Any) -> common_pb2.JobRef:
        opts = GenerateOptions(
            seed=int(request.seed), dropout=not request.no_dropout, batchnorm=request.batchnorm or "train",
            resize=request.resize, count=int(request.count), batch_size=int(request.batch_size or 1),
            name=request.name, split=request.split,
        )
        if opts.name:
            validate_name(opts.name)
        state = self._checkpoint(request.checkpoint)
        ds = Dataset.load(self.store, request.masks)
        generation_plan(ds, state, opts)
        ckpt = common_pb2.ObjectRef()
        ckpt.CopyFrom(request.checkpoint)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            return run_generate(ctx, self.store, ds, state, ckpt, opts)

        return self.jobs.submit("gan.Generate", request, run)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(gan_pb2_grpc.add_GanServiceServicer_to_server, GanServicer(runtime), FULL_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
