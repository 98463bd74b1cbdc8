"""From a SegmenterTrainRequest to a ready Trainer, over the object store.

Shared by the gRPC server (one process) and `torchrun_train` (every rank of a data-parallel
launch), so both check a request the same way: configuration, datasets, exact counts,
validation split and initial weights are all checked here, before any training starts.
"""
from __future__ import annotations

from services.common.config import config_from_proto, replace_config
from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument
from services.common.store import ObjectStore
from services.segmenter.config import SegmenterConfig
from services.segmenter.core.sources import DatasetSplitSource
from services.segmenter.core.trainer import Trainer
from synthaug.v1 import segmenter_pb2

#: Default validation split of a train request.
DEFAULT_VAL_SPLIT = "val"


def train_config(request: segmenter_pb2.SegmenterTrainRequest) -> SegmenterConfig:
    """The request's configuration: its set fields over the SegmenterConfig defaults, and
    the request's seed."""
    cfg = config_from_proto(SegmenterConfig, request.config)
    return replace_config(cfg, seed=int(request.seed))


def prepare_trainer(store: ObjectStore, request: segmenter_pb2.SegmenterTrainRequest) -> Trainer:
    """Check a train request and build its Trainer (training set with exact counts and each
    source's order seed, budget, category map, model spec, initial weights), so that every input error is reported before the job
    starts. The caller sets ``checkpoints`` (and ``progress``) before ``run()``."""
    what = "SegmenterTrainRequest"
    cfg = train_config(request)
    if not request.sources:
        raise InvalidArgument(f"{what}.sources is empty: name at least one (dataset, split, count)")
    sources = []
    order_seeds: list[int | None] = []
    for i, src in enumerate(request.sources):
        split = validate_split(src.split, f"{what}.sources[{i}].split")
        dataset = Dataset.load(store, src.dataset)
        if not dataset.manifest.get("annotations"):
            raise InvalidArgument(f"{what}.sources[{i}]: dataset {dataset.name or dataset.id} has no annotations")
        sources.append((DatasetSplitSource(dataset, split), int(src.count)))
        order_seeds.append(int(src.order_seed) if src.HasField("order_seed") else None)
    val_split = validate_split(request.val_split or DEFAULT_VAL_SPLIT, f"{what}.val_split")
    has_val = bool(request.val_dataset.id or request.val_dataset.name)
    val_dataset = Dataset.load(store, request.val_dataset) if has_val else sources[0][0].dataset
    val = DatasetSplitSource(val_dataset, val_split)
    if not val.image_ids():
        raise InvalidArgument(f"{what}: validation {val.name} has no images (set val_dataset / val_split)")
    return Trainer(cfg, sources, val, None, weights_store=store, order_seeds=order_seeds)
