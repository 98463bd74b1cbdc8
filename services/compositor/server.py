"""CompositorService: a thin gRPC adapter over services.compositor.core.

Each operation is a job (the same request names the same job; a stored result is returned
without recomputing). Requests are checked before submitting, so bad parameters, empty
sets and missing objects are INVALID_ARGUMENT / NOT_FOUND on the Submit call itself.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from services.common.datasets import Dataset, validate_name, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin
from services.common.refs import object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, validate_prefix
from services.compositor.core.params import ComposeParams, Range
from services.compositor.core.pipeline import compose_dataset, extract_foreground_set, harvest_background_set
from services.compositor.core.sets import BACKGROUND_KIND, FOREGROUND_KIND, load_set
from synthaug.v1 import common_pb2, compositor_pb2, compositor_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "compositor"
SERVICE_NAME = compositor_pb2.DESCRIPTOR.services_by_name["CompositorService"].full_name
BLEND_NAMES = {compositor_pb2.BLEND_MODE_HARD: "hard", compositor_pb2.BLEND_MODE_GAUSSIAN: "gaussian",
               compositor_pb2.BLEND_MODE_POISSON: "poisson"}
METHOD_NAMES = {compositor_pb2.BACKGROUND_METHOD_AS_IS: "as_is", compositor_pb2.BACKGROUND_METHOD_INPAINT_TELEA: "telea",
                compositor_pb2.BACKGROUND_METHOD_INPAINT_NS: "ns", compositor_pb2.BACKGROUND_METHOD_CROP: "crop"}
_RANGES = ("scale", "rotation", "brightness", "contrast", "saturation", "hue", "background_brightness",
           "background_contrast")
_SCALARS = ("output_size", "min_objects", "max_objects", "flip", "background_flip", "max_overlap_iou",
            "max_placement_attempts", "blend_sigma", "min_visible_fraction", "min_usable_background",
            "dark_threshold", "tone_match")


def compose_params(msg: compositor_pb2.ComposeParams) -> ComposeParams:
    """Proto → core params: unset fields take the core defaults; then validated."""
    changes: dict[str, Any] = {}
    for name in _SCALARS:
        if msg.HasField(name):
            changes[name] = getattr(msg, name)
    for name in _RANGES:
        if msg.HasField(name):
            r = getattr(msg, name)
            changes[name] = Range(float(r.min), float(r.max))
    if msg.blend != compositor_pb2.BLEND_MODE_UNSPECIFIED:
        if msg.blend not in BLEND_NAMES:
            raise InvalidArgument(f"ComposeParams.blend: unknown blend mode {msg.blend}")
        changes["blend"] = BLEND_NAMES[msg.blend]
    if msg.image_format:
        changes["image_format"] = msg.image_format
    return dataclasses.replace(ComposeParams(), **changes).validate()



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
        split = validate_split(request.split, f"{what}.split")
        if request.min_area < 0:
            raise InvalidArgument(f"{what}.min_area must be ≥ 0, got {request.min_area}")
        if not 0 <= request.feather_sigma <= 50:
            raise InvalidArgument(f"{what}.feather_sigma must be in [0, 50], got {request.feather_sigma}")
        padding = request.padding if request.HasField("padding") else 8
        if not 0 <= padding <= 256:
            raise InvalidArgument(f"{what}.padding must be in [0, 256], got {padding}")
        dataset = Dataset.load(self.store, request.dataset)
        if not dataset.image_records(split):
            raise InvalidArgument(f"{what}.dataset {dataset.id}: split {split or '(all)'!r} has no images")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            info, manifest = extract_foreground_set(
                self.store, dataset, split, min_area=int(request.min_area), feather_sigma=float(request.feather_sigma),
                padding=int(padding), keep_truncated=request.keep_truncated, progress=_progress(ctx))
            skipped = manifest["skipped"]
            return common_pb2.JobResult(
                objects=[object_ref(self.store, info)],
                metrics={"foregrounds": float(len(manifest["foregrounds"])), "skipped_small": float(skipped["small"]),
                         "skipped_truncated": float(skipped["truncated"]), "skipped_crowd": float(skipped["crowd"])})

        return self.jobs.submit("compositor.ExtractForegrounds", request, run)

    def SubmitHarvestBackgrounds(self, request: compositor_pb2.HarvestBackgroundsRequest, context: Any) -> common_pb2.JobRef:
        what = "HarvestBackgroundsRequest"
        has_dataset = bool(request.dataset.id or request.dataset.name)
        if has_dataset == bool(request.image_prefix):
            raise InvalidArgument(f"{what}: give exactly one of dataset or image_prefix")
        if request.method not in (compositor_pb2.BACKGROUND_METHOD_UNSPECIFIED, *METHOD_NAMES):
            raise InvalidArgument(f"{what}.method: unknown background method {request.method}")
        if request.method == compositor_pb2.BACKGROUND_METHOD_UNSPECIFIED:
            method = "telea" if has_dataset else "as_is"
        else:
            method = METHOD_NAMES[request.method]
        dilate = request.dilate_px if request.HasField("dilate_px") else 12
        crop = request.crop_size if request.HasField("crop_size") else 96
        if not 0 <= dilate <= 256:
            raise InvalidArgument(f"{what}.dilate_px must be in [0, 256], got {dilate}")
        if method == "crop" and not 8 <= crop <= 8192:
            raise InvalidArgument(f"{what}.crop_size must be in [8, 8192], got {crop}")
        if request.max_backgrounds < 0:
            raise InvalidArgument(f"{what}.max_backgrounds must be ≥ 0, got {request.max_backgrounds}")
        dataset = None
        if has_dataset:
            dataset = Dataset.load(self.store, request.dataset)
            split = validate_split(request.split, f"{what}.split")
            if not dataset.image_records(split):
                raise InvalidArgument(f"{what}.dataset {dataset.id}: split {split or '(all)'!r} has no images")
        else:
            validate_prefix(request.image_prefix)
            if method != "as_is":
                raise InvalidArgument(f"{what}.method {method!r} needs a dataset; image_prefix images are used as they are")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            info, manifest = harvest_background_set(
                self.store, dataset=dataset, split=request.split, image_prefix=request.image_prefix, method=method,
                dilate_px=int(dilate), crop_size=int(crop), max_backgrounds=int(request.max_backgrounds),
                seed=int(request.seed), progress=_progress(ctx))
            return common_pb2.JobResult(
                objects=[object_ref(self.store, info)],
                metrics={"backgrounds": float(len(manifest["backgrounds"])),
                         "rejected_dark": float(manifest["rejected_dark"])})

        return self.jobs.submit("compositor.HarvestBackgrounds", request, run)

    def SubmitCompose(self, request: compositor_pb2.ComposeRequest, context: Any) -> common_pb2.JobRef:
        what = "ComposeRequest"
        if request.count < 1:
            raise InvalidArgument(f"{what}.count must be ≥ 1, got {request.count}")
        if request.workers < 0:
            raise InvalidArgument(f"{what}.workers must be ≥ 0 (0 = CPU count), got {request.workers}")
        params = compose_params(request.params)
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
            return common_pb2.JobResult(datasets=[ref], metrics=metrics)

        return self.jobs.submit("compositor.Compose", request, run)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(compositor_pb2_grpc.add_CompositorServiceServicer_to_server, CompositorServicer(runtime), SERVICE_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
