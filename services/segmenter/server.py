"""SegmenterService: a thin gRPC adapter over services.segmenter.core.

Train and Predict are jobs. Requests are checked before submitting — unknown architecture,
bad hyper-parameters, a dataset without annotations, a count larger than the dataset split,
weights that do not fit — so bad input is INVALID_ARGUMENT on the Submit call itself.
Training checkpoints live under the job's work prefix, so a job resubmitted after its server
died resumes after the last finished evaluation. Results are read by role: Train →
outputs["model"], outputs["training_record"]; Predict → outputs["predictions"]; Features →
outputs["features"].

Data-parallel serving: started under torchrun, rank 0 serves gRPC and every other rank
follows (core/train_job.py), so each Train job trains on all the launch's GPUs::

    torchrun --standalone --nproc_per_node=NUM_GPUS -m services.segmenter --store URL   # port 50053

`synthaug run plan.yaml --services "compositor=H:P;gan=H:P;segmenter=THIS_HOST:50053;evaluator=H:P"`
(every service on the same store) then trains each arm on all the GPUs; a Train job computed
by `torchrun -m services.segmenter.torchrun_train` is answered from the store instead.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from services.common.config import config_from_proto
from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin
from services.common.logs import configure_logging
from services.common.refs import add_output, object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, parse_config, serve
from services.common.store import ObjectStore, canonical_json, open_store, sha256_bytes
from services.evaluator.core.features import check_feature_space, check_set_name, encode_features
from services.segmenter.config import FeaturesConfig, PredictConfig
from services.segmenter.core.checkpoints import from_bytes, state_dict_from
from services.segmenter.core.distributed import init_from_env
from services.segmenter.core.feature_extraction import (
    INCEPTION_SIZE,
    SEGMENTER_FPN,
    Extractor,
    ImageSet,
    InceptionExtractor,
    SegmenterExtractor,
    extract,
    select_ids,
)
from services.segmenter.core.predictor import load_model_file, predict, results_document
from services.segmenter.core.sources import DatasetSplitSource
from services.segmenter.core.train_job import ControlChannel, Leader, follow, run_train
from services.segmenter.core.train_request import prepare_trainer
from services.segmenter.core.trainer import select_device
from services.segmenter.weights import FileWeights, StoreWeights, parse_local_weights, read_weights, weights_file_path
from synthaug.v1 import common_pb2, segmenter_pb2, segmenter_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "segmenter"
SERVICE_NAME = segmenter_pb2.DESCRIPTOR.services_by_name["SegmenterService"].full_name
#: PredictRequest fields that are not PredictConfig settings.
PREDICT_INPUTS = ("checkpoint", "dataset", "split")
#: FeaturesRequest fields that are not FeaturesConfig settings.
FEATURES_INPUTS = ("checkpoint", "extractor", "weights", "sets", "seed")
MAX_FEATURE_SETS = 100


def _progress(ctx: JobContext) -> Callable[[float, str, dict[str, float] | None], None]:
    def report(fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None:
        ctx.progress(fraction, message, metrics)
    return report


class SegmenterServicer(JobServicerMixin, segmenter_pb2_grpc.SegmenterServiceServicer):
    def __init__(self, runtime: ServiceRuntime, leader: Leader | None = None):
        self.jobs = runtime.jobs
        self.store: ObjectStore = runtime.store
        #: Rank 0's hold on the other ranks of a torchrun launch (None: one process).
        self.leader = leader

    # -- Train -------------------------------------------------------------------------------
    def SubmitTrain(self, request: segmenter_pb2.SegmenterTrainRequest, context: Any) -> common_pb2.JobRef:
        trainer = prepare_trainer(self.store, request)
        return self.jobs.submit("segmenter.Train", request,
                                lambda ctx: run_train(self.store, request, trainer, ctx, self.leader))

    # -- Predict -----------------------------------------------------------------------------
    def SubmitPredict(self, request: segmenter_pb2.PredictRequest, context: Any) -> common_pb2.JobRef:
        what = "PredictRequest"
        key = resolve_object(self.store, request.checkpoint, f"{what}.checkpoint", verify=True)
        split = validate_split(request.split, f"{what}.split")
        dataset = Dataset.load(self.store, request.dataset)
        source = DatasetSplitSource(dataset, split)
        if not source.image_ids():
            raise InvalidArgument(f"{what}: {source.name} has no images")
        cfg = config_from_proto(PredictConfig, request, what, exclude=PREDICT_INPUTS)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            device = select_device("")
            loaded = load_model_file(self.store.get_bytes(key), f"{what}.checkpoint {key!r}", device)
            known = {int(c["id"]) for c in loaded.category_map.categories}
            if not {int(c["id"]) for c in dataset.categories} & known:
                raise InvalidArgument(f"{what}: the model's categories {sorted(known)} do not occur in {source.name}")
            results = predict(loaded, source, device, cfg, progress=_progress(ctx))
            doc = results_document(results, cfg, dataset.id, split,
                                   {"model": {"key": key, "architecture": loaded.spec.architecture},
                                    "categories": loaded.category_map.categories,
                                    "num_images": len(source.image_ids())})
            info = self.store.put_blob(canonical_json(doc), "json", "application/json")
            out = common_pb2.JobResult(metrics={"num_results": float(len(results)),
                                                "num_images": float(len(source.image_ids()))})
            return add_output(out, "predictions", object_ref(self.store, info))

        return self.jobs.submit("segmenter.Predict", request, run)

    # -- Features ----------------------------------------------------------------------------
    def SubmitFeatures(self, request: segmenter_pb2.FeaturesRequest, context: Any) -> common_pb2.JobRef:
        what = "FeaturesRequest"
        cfg = config_from_proto(FeaturesConfig, request, what, exclude=FEATURES_INPUTS)
        space = check_feature_space(request.extractor, f"{what}.extractor")
        has_checkpoint = request.HasField("checkpoint") and bool(request.checkpoint.key)
        checkpoint, weights = "", None
        if space == SEGMENTER_FPN:
            if not has_checkpoint:
                raise InvalidArgument(f"{what}.checkpoint: the segmenter_fpn extractor needs a segmenter model file")
            if request.weights:
                raise InvalidArgument(f"{what}.weights: only the inception extractor takes weights "
                                      "(segmenter_fpn uses the checkpoint's)")
            checkpoint = resolve_object(self.store, request.checkpoint, f"{what}.checkpoint", verify=True)
        else:
            if has_checkpoint:
                raise InvalidArgument(f"{what}.checkpoint: the inception extractor takes no segmenter model "
                                      f"(its network comes from {what}.weights)")
            weights = self._local_weights(request.weights, f"{what}.weights")
        sets = self._image_sets(request, what)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            device = select_device("")
            ctx.progress(0.01, "loading the feature extractor")
            extractor: Extractor
            if weights is None:
                loaded = load_model_file(self.store.get_bytes(checkpoint, request.checkpoint.sha256),
                                         f"{what}.checkpoint {checkpoint!r}", device)
                extractor = SegmenterExtractor(loaded, device, f"{what}.checkpoint {checkpoint!r}")
                model = {"checkpoint": checkpoint, "sha256": request.checkpoint.sha256,
                         "architecture": loaded.spec.architecture, "input_size": [loaded.spec.min_size, loaded.spec.max_size]}
            else:
                where = f"{what}.weights {str(weights)!r}"
                data = read_weights(weights, self.store, f"{what}.weights")
                extractor = InceptionExtractor(state_dict_from(from_bytes(data, where), where), where, device)
                model = {"weights": str(weights), "weights_sha256": sha256_bytes(data), "input_size": [INCEPTION_SIZE, INCEPTION_SIZE]}
            total = sum(len(s.ids) for s in sets)
            features, rate = extract(
                extractor, sets, cfg.batch_size,
                lambda done, n, metrics: ctx.progress(0.05 + 0.9 * done / n, f"{done}/{n} images", metrics),
                ctx.check_cancelled)
            dim = next(iter(features.values())).features.shape[1]
            info = self.store.put_blob(encode_features(space, features, model), "npz", "application/octet-stream")
            log.info("features (%s, D=%d) of %d images in %d sets: %.1f images/s", space, dim, total, len(sets), rate)
            out = common_pb2.JobResult(metrics={"images_per_s": rate, "num_images": float(total), "dim": float(dim)},
                                       attributes={"extractor": space})
            return add_output(out, "features", object_ref(self.store, info))

        return self.jobs.submit("segmenter.Features", request, run)

    def _local_weights(self, text: str, where: str) -> StoreWeights | FileWeights:
        """Inception weights, checked before the job starts: file:NAME or store:KEY, present."""
        spec = parse_local_weights(text, where)
        if isinstance(spec, FileWeights):
            if not weights_file_path(spec, where).is_file():
                raise InvalidArgument(f"{where} {text!r}: no such file in the server's weights folder")
        elif not self.store.exists(spec.key):
            raise InvalidArgument(f"{where} {text!r}: no such object in the store")
        return spec

    def _image_sets(self, request: segmenter_pb2.FeaturesRequest, what: str) -> list[ImageSet]:
        """The request's image sets, checked: labels, splits, counts."""
        if not request.sets:
            raise InvalidArgument(f"{what}.sets: at least one image set is required")
        if len(request.sets) > MAX_FEATURE_SETS:
            raise InvalidArgument(f"{what}.sets: at most {MAX_FEATURE_SETS}, got {len(request.sets)}")
        out: list[ImageSet] = []
        for i, s in enumerate(request.sets):
            where = f"{what}.sets[{i}]"
            label = check_set_name(s.label, f"{where}.label")
            if any(o.label == label for o in out):
                raise InvalidArgument(f"{where}.label {label!r} appears twice")
            split = validate_split(s.split, f"{where}.split")
            dataset = Dataset.load(self.store, s.dataset)
            order_seed = int(s.order_seed) if s.HasField("order_seed") else int(request.seed)
            out.append(ImageSet(label, dataset, split, select_ids(dataset, split, int(s.count), order_seed, where)))
        return out


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    """The server; under torchrun (rank 0 of several) it leads the other ranks' training."""
    info = init_from_env()
    leader = None
    if info.enabled:
        if config.max_concurrent_jobs != 1:
            raise SystemExit("a data-parallel segmenter runs one job at a time: --max-concurrent-jobs must be 1")
        leader = Leader(ControlChannel(info))
    runtime = ServiceRuntime(config, store)
    runtime.add(segmenter_pb2_grpc.add_SegmenterServiceServicer_to_server, SegmenterServicer(runtime, leader), SERVICE_NAME)
    if leader is not None:
        runtime.on_stop(leader.stop)
    return runtime


def main(argv: list[str] | None = None) -> int:
    info = init_from_env()
    if info.enabled and not info.is_main:  # a follower of a torchrun launch: no gRPC
        config = parse_config(SERVICE, argv)
        configure_logging(config.log_level, config.log_json)
        channel = ControlChannel(info)
        return follow(open_store(config.store_url), channel)
    return serve(build, SERVICE, argv)
