"""CompositorService: a thin gRPC adapter over services.compositor.core.

Each operation is a job (the same request names the same job; a stored result is returned
without recomputing). Requests are checked before submitting, so bad parameters, empty
sets and missing objects are INVALID_ARGUMENT / NOT_FOUND on the Submit call itself.
"""
from __future__ import annotations

import logging
from typing import Any

from services.common.config import config_from_proto
from services.common.datasets import Dataset, validate_name, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin
from services.common.refs import add_output, object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, validate_prefix
from services.compositor.config import BackgroundParams, ComposeParams, ForegroundParams
from services.compositor.core.pipeline import (
    compose_dataset,
    extract_foreground_set,
    harvest_background_set,
)
from services.compositor.core.sets import BACKGROUND_KIND, FOREGROUND_KIND, load_set
from synthaug.v1 import common_pb2, compositor_pb2, compositor_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "compositor"
SERVICE_NAME = compositor_pb2.DESCRIPTOR.services_by_name["CompositorService"].full_name
#: Request fields that are inputs, not settings (the rest fill the config dataclasses).
FOREGROUND_INPUTS = ("dataset", "split")
BACKGROUND_INPUTS = ("dataset", "split", "image_prefix", "seed")


def _progress(ctx: JobContext):  # type: ignore[no-untyped-def]
    def report(fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None:
        ctx.progress(fraction, message, metrics)
    return report


class CompositorServicer(JobServicerMixin, compositor_pb2_grpc.CompositorServiceServicer):
    def __init__(self, runtime: ServiceRuntime):
        self.jobs = runtime.jobs
        self.store: ObjectStore = runtime.store

    def SubmitExtractForegrounds(self, request: compositor_pb2.ExtractForegroundsRequest, context: Any) -> common_pb2.JobRef:
        what = "ExtractForegroundsRequest"
        params = config_from_proto(ForegroundParams, request, exclude=FOREGROUND_INPUTS)
        split = validate_split(request.split, f"{what}.split")
        dataset = Dataset.load(self.store, request.dataset)
        if not dataset.image_records(split):
            raise InvalidArgument(f"{what}.dataset {dataset.id}: split {split or '(all)'!r} has no images")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            info, manifest = extract_foreground_set(self.store, dataset, split, params, progress=_progress(ctx))
            skipped = manifest["skipped"]
            result = common_pb2.JobResult(
                metrics={"foregrounds": float(len(manifest["foregrounds"])), "skipped_small": float(skipped["small"]),
                         "skipped_truncated": float(skipped["truncated"]), "skipped_crowd": float(skipped["crowd"])})
            return add_output(result, "foregrounds", object_ref(self.store, info))

        return self.jobs.submit("compositor.ExtractForegrounds", request, run)

    def SubmitHarvestBackgrounds(self, request: compositor_pb2.HarvestBackgroundsRequest, context: Any) -> common_pb2.JobRef:
        what = "HarvestBackgroundsRequest"
        params = config_from_proto(BackgroundParams, request, exclude=BACKGROUND_INPUTS)
        has_dataset = bool(request.dataset.id or request.dataset.name)
        if has_dataset == bool(request.image_prefix):
            raise InvalidArgument(f"{what}: give exactly one of dataset or image_prefix")
        params.method_for(from_dataset=has_dataset)  # an inpainting method needs a dataset
        dataset = None
        split = ""
        if has_dataset:
            dataset = Dataset.load(self.store, request.dataset)
            split = validate_split(request.split, f"{what}.split")
            if not dataset.image_records(split):
                raise InvalidArgument(f"{what}.dataset {dataset.id}: split {split or '(all)'!r} has no images")
        else:
            validate_prefix(request.image_prefix)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            info, manifest = harvest_background_set(
                self.store, dataset=dataset, split=split, image_prefix=request.image_prefix, params=params,
                seed=int(request.seed), progress=_progress(ctx))
            result = common_pb2.JobResult(
                metrics={"backgrounds": float(len(manifest["backgrounds"])),
                         "rejected_dark": float(manifest["rejected_dark"])})
            return add_output(result, "backgrounds", object_ref(self.store, info))

        return self.jobs.submit("compositor.HarvestBackgrounds", request, run)

    def SubmitCompose(self, request: compositor_pb2.ComposeRequest, context: Any) -> common_pb2.JobRef:
        what = "ComposeRequest"
        if request.count < 1:
            raise InvalidArgument(f"{what}.count must be ≥ 1, got {request.count}")
        if request.workers < 0:
            raise InvalidArgument(f"{what}.workers must be ≥ 0 (0 = CPU count), got {request.workers}")
        params = config_from_proto(ComposeParams, request.params)
        fg_key = resolve_object(self.store, request.foregrounds, f"{what}.foregrounds", verify=True)
        bg_key = resolve_object(self.store, request.backgrounds, f"{what}.backgrounds", verify=True)
        load_set(self.store, fg_key, FOREGROUND_KIND, f"{what}.foregrounds")
        load_set(self.store, bg_key, BACKGROUND_KIND, f"{what}.backgrounds")
        if request.name:
            validate_name(request.name)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            ref, metrics = compose_dataset(
                self.store, fg_key, bg_key, int(request.count), int(request.seed), params, workers=int(request.workers),
                name=request.name, progress=_progress(ctx))
            return add_output(common_pb2.JobResult(metrics=metrics), "dataset", ref)

        return self.jobs.submit("compositor.Compose", request, run)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(compositor_pb2_grpc.add_CompositorServiceServicer_to_server, CompositorServicer(runtime), SERVICE_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
