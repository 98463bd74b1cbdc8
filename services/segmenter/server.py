"""SegmenterService: a thin gRPC adapter over services.segmenter.core.

Train and Predict are jobs. Requests are checked before submitting — unknown architecture,
bad hyper-parameters, a dataset without annotations, a count larger than the dataset split,
weights that do not fit — so bad input is INVALID_ARGUMENT on the Submit call itself.
Training checkpoints live under the job's work prefix, so a job resubmitted after its server
died resumes after the last finished epoch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument, NotFound
from services.common.jobs import JobContext, JobServicerMixin
from services.common.refs import object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, canonical_json, validate_key
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.models import build_model, load_state_dict_into
from services.segmenter.core.predictor import load_model_file, predict, results_document, validate_thresholds
from services.segmenter.core.sources import DatasetSplitSource
from services.segmenter.core.trainer import TrainConfig, Trainer, select_device
from synthaug.v1 import common_pb2, segmenter_pb2, segmenter_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "segmenter"
SERVICE_NAME = segmenter_pb2.DESCRIPTOR.services_by_name["SegmenterService"].full_name
_OPTIONAL = ("momentum", "weight_decay", "warmup_iters", "num_workers", "augment", "trainable_backbone_layers",
             "val_score_threshold", "val_mask_threshold")
_NONZERO = ("architecture", "weights", "epochs", "batch_size", "lr", "optimizer", "schedule", "grad_clip", "amp",
            "patience", "min_size", "max_size", "select_metric")


def train_config(msg: segmenter_pb2.SegmenterConfig, seed: int) -> TrainConfig:
    """Proto → core config: unset optional fields and zero scalars take the core defaults."""
    changes: dict[str, Any] = {"seed": int(seed)}
    for name in _NONZERO:
        value = getattr(msg, name)
        if value:
            changes[name] = value
    for name in _OPTIONAL:
        if msg.HasField(name):
            changes[name] = getattr(msg, name)
    cfg = dataclasses.replace(TrainConfig(), **changes)
    cfg.validate()
    return cfg


class StoreCheckpointIO:
    """Training checkpoints under a job's work prefix in the object store."""

    def __init__(self, store: ObjectStore, prefix: str):
        self.store, self.prefix = store, prefix

    def write(self, name: str, data: bytes) -> None:
        self.store.put_bytes(self.prefix + name, data)

    def read(self, name: str) -> bytes:
        return self.store.get_bytes(self.prefix + name)

    def names(self) -> list[str]:
        return [k[len(self.prefix):] for k in self.store.list(self.prefix) if "/" not in k[len(self.prefix):]]

    def remove(self, name: str) -> None:
        self.store.delete(self.prefix + name)



def _progress(ctx: JobContext) -> Callable[[float, str, "dict[str, float] | None"], None]:
    def report(fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None:
        ctx.progress(fraction, message, metrics)
    return report


#: Folder that "file:PATH" weights must lie in; unset, "file:" weights are refused, so a
#: request can never make the server read an arbitrary file of its host.
WEIGHTS_DIR_ENV = "SYNTHAUG_WEIGHTS_DIR"
MAX_WEIGHTS_BYTES = 2 * 1024**3


def _read_weights_file(weights: str) -> bytes:
    root = os.environ.get(WEIGHTS_DIR_ENV, "")
    if not root:
        raise InvalidArgument(
            f"SegmenterConfig.weights {weights!r}: file weights are disabled on this server; "
            f"set {WEIGHTS_DIR_ENV} to a folder of weight files, or put the file in the store and use store:KEY"
        )
    base = Path(root).resolve()
    path = (base / weights[len("file:"):]).resolve()
    if not path.is_relative_to(base):
        raise InvalidArgument(f"SegmenterConfig.weights {weights!r}: outside {WEIGHTS_DIR_ENV}")
    try:
        size = path.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise InvalidArgument(f"SegmenterConfig.weights {weights!r}: {size} bytes exceeds {MAX_WEIGHTS_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"SegmenterConfig.weights {weights!r}: {exc.strerror}") from None


def _initial_weights(store: ObjectStore, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """State dict for "store:KEY" / "file:PATH" weights (read with weights_only=True)."""
    if weights.startswith("store:"):
        key = weights[len("store:"):]
        try:
            validate_key(key)
            data = store.get_bytes(key)
        except (InvalidArgument, NotFound) as exc:
            raise InvalidArgument(f"SegmenterConfig.weights {weights!r}: {exc}") from None
    elif weights.startswith("file:"):
        data = _read_weights_file(weights)
    else:
        return None, ""
    return ck.state_dict_from(ck.from_bytes(data, f"weights {weights!r}"), f"weights {weights!r}"), weights


def prepare_trainer(store: ObjectStore, request: segmenter_pb2.SegmenterTrainRequest) -> Trainer:
    """Check a train request and build its Trainer (training set with exact counts, category
    map, model spec), so that every input error is reported before the job starts."""
    what = "SegmenterTrainRequest"
    cfg = train_config(request.config, request.seed)
    if not request.sources:
        raise InvalidArgument(f"{what}.sources is empty: name at least one (dataset, split, count)")
    sources = []
    for i, src in enumerate(request.sources):
        split = validate_split(src.split, f"{what}.sources[{i}].split")
        dataset = Dataset.load(store, src.dataset)
        if not dataset.manifest.get("annotations"):
            raise InvalidArgument(f"{what}.sources[{i}]: dataset {dataset.name or dataset.id} has no annotations")
        sources.append((DatasetSplitSource(dataset, split), int(src.count)))
    val_split = validate_split(request.val_split or "val", f"{what}.val_split")
    has_val = bool(request.val_dataset.id or request.val_dataset.name)
    val_dataset = Dataset.load(store, request.val_dataset) if has_val else sources[0][0].dataset
    val = DatasetSplitSource(val_dataset, val_split)
    if not val.image_ids():
        raise InvalidArgument(f"{what}: validation {val.name} has no images (set val_dataset / val_split)")
    init_state, init_source = _initial_weights(store, cfg.weights)
    trainer = Trainer(cfg, sources, val, None,
                      init_state=init_state, init_source=init_source)
    if init_state is not None:
        load_state_dict_into(build_model(trainer.spec), init_state, init_source)

    return trainer


class SegmenterServicer(JobServicerMixin, segmenter_pb2_grpc.SegmenterServiceServicer):
    def __init__(self, runtime: ServiceRuntime):
        self.jobs = runtime.jobs
        self.store: ObjectStore = runtime.store

    # -- Train -------------------------------------------------------------------------------
    def SubmitTrain(self, request: segmenter_pb2.SegmenterTrainRequest, context: Any) -> common_pb2.JobRef:
        trainer = prepare_trainer(self.store, request)
        cfg = trainer.cfg

        def run(ctx: JobContext) -> common_pb2.JobResult:
            trainer.checkpoints = StoreCheckpointIO(self.store, ctx.work_prefix)
            trainer.progress = _progress(ctx)
            result = trainer.run()
            model_info = self.store.put_blob(result.model_file, "pt")
            record = result.record
            record["job"] = ctx.job_id
            record_info = self.store.put_blob(canonical_json(record), "json", "application/json")
            best = record["epochs"][[e["epoch"] for e in record["epochs"]].index(record["best_epoch"])]
            metrics = {"best_epoch": float(record["best_epoch"]), "epochs_run": float(len(record["epochs"])),
                       "images_per_s": float(best["images_per_s"]),
                       **{f"val_{k}": float(v) for k, v in best.get("val", {}).items()}}
            return common_pb2.JobResult(
                objects=[object_ref(self.store, model_info), object_ref(self.store, record_info)], metrics=metrics,
                attributes={"architecture": cfg.architecture, "device": record["device"],
                            "stopped_early": str(record["stopped_early"]).lower()})

        return self.jobs.submit("segmenter.Train", request, run)

    # -- Predict -----------------------------------------------------------------------------
    def SubmitPredict(self, request: segmenter_pb2.PredictRequest, context: Any) -> common_pb2.JobRef:
        what = "PredictRequest"
        key = resolve_object(self.store, request.checkpoint, f"{what}.checkpoint", verify=True)
        split = validate_split(request.split, f"{what}.split")
        dataset = Dataset.load(self.store, request.dataset)
        source = DatasetSplitSource(dataset, split)
        if not source.image_ids():
            raise InvalidArgument(f"{what}: {source.name} has no images")
        score = request.score_threshold if request.HasField("score_threshold") else 0.5
        mask = request.mask_threshold if request.HasField("mask_threshold") else 0.5
        validate_thresholds(score, mask)
        batch_size = request.batch_size or 4
        if batch_size < 1:
            raise InvalidArgument(f"{what}.batch_size must be ≥ 1, got {batch_size}")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            device = select_device("")
            loaded = load_model_file(self.store.get_bytes(key), f"{what}.checkpoint {key!r}", device)
            known = {c["id"] for c in loaded.category_map.categories}
            if not {int(c["id"]) for c in dataset.categories} & known:
                raise InvalidArgument(f"{what}: the model's categories {sorted(known)} do not occur in {source.name}")
            results = predict(loaded, source, device, batch_size, score, mask, progress=_progress(ctx))
            doc = results_document(results, score, mask, dataset.id, split,
                                   {"model": {"key": key, "architecture": loaded.spec.architecture},
                                    "categories": loaded.category_map.categories,
                                    "num_images": len(source.image_ids())})
            info = self.store.put_blob(canonical_json(doc), "json", "application/json")
            return common_pb2.JobResult(objects=[object_ref(self.store, info)],
                                        metrics={"num_results": float(len(results)),
                                                 "num_images": float(len(source.image_ids()))})

        return self.jobs.submit("segmenter.Predict", request, run)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(segmenter_pb2_grpc.add_SegmenterServiceServicer_to_server, SegmenterServicer(runtime), SERVICE_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
