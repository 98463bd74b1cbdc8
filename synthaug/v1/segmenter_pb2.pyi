from synthaug.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingSource(_message.Message):
    __slots__ = ("dataset", "split", "count", "order_seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ORDER_SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    split: str
    count: int
    order_seed: int
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., count: _Optional[int] = ..., order_seed: _Optional[int] = ...) -> None: ...

class SegmenterConfig(_message.Message):
    __slots__ = ("architecture", "weights", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "warmup_iters", "grad_clip", "amp", "patience", "num_workers", "augment", "trainable_backbone_layers", "min_size", "max_size", "val_score_threshold", "val_mask_threshold", "select_metric", "iterations", "eval_every", "real_fraction")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_ITERS_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_BACKBONE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    VAL_SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VAL_MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SELECT_METRIC_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    REAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    weights: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    schedule: str
    warmup_iters: int
    grad_clip: float
    amp: str
    patience: int
    num_workers: int
    augment: bool
    trainable_backbone_layers: int
    min_size: int
    max_size: int
    val_score_threshold: float
    val_mask_threshold: float
    select_metric: str
    iterations: int
    eval_every: int
    real_fraction: float
    def __init__(self, architecture: _Optional[str] = ..., weights: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., schedule: _Optional[str] = ..., warmup_iters: _Optional[int] = ..., grad_clip: _Optional[float] = ..., amp: _Optional[str] = ..., patience: _Optional[int] = ..., num_workers: _Optional[int] = ..., augment: _Optional[bool] = ..., trainable_backbone_layers: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., val_score_threshold: _Optional[float] = ..., val_mask_threshold: _Optional[float] = ..., select_metric: _Optional[str] = ..., iterations: _Optional[int] = ..., eval_every: _Optional[int] = ..., real_fraction: _Optional[float] = ...) -> None: ...

class SegmenterTrainRequest(_message.Message):
    __slots__ = ("sources", "val_dataset", "val_split", "config", "seed")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    VAL_DATASET_FIELD_NUMBER: _ClassVar[int]
    VAL_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[TrainingSource]
    val_dataset: _common_pb2.DatasetRef
    val_split: str
    config: SegmenterConfig
    seed: int
    def __init__(self, sources: _Optional[_Iterable[_Union[TrainingSource, _Mapping]]] = ..., val_dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., val_split: _Optional[str] = ..., config: _Optional[_Union[SegmenterConfig, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("checkpoint", "dataset", "split", "export_threshold", "mask_threshold", "batch_size", "detections_per_image")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXPORT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.ObjectRef
    dataset: _common_pb2.DatasetRef
    split: str
    export_threshold: float
    mask_threshold: float
    batch_size: int
    detections_per_image: int
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., export_threshold: _Optional[float] = ..., mask_threshold: _Optional[float] = ..., batch_size: _Optional[int] = ..., detections_per_image: _Optional[int] = ...) -> None: ...

class FeatureSet(_message.Message):
    __slots__ = ("label", "dataset", "split", "count", "order_seed")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ORDER_SEED_FIELD_NUMBER: _ClassVar[int]
    label: str
    dataset: _common_pb2.DatasetRef
    split: str
    count: int
    order_seed: int
    def __init__(self, label: _Optional[str] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., count: _Optional[int] = ..., order_seed: _Optional[int] = ...) -> None: ...

class FeaturesRequest(_message.Message):
    __slots__ = ("checkpoint", "extractor", "weights", "sets", "seed", "batch_size")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.ObjectRef
    extractor: str
    weights: str
    sets: _containers.RepeatedCompositeFieldContainer[FeatureSet]
    seed: int
    batch_size: int
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., extractor: _Optional[str] = ..., weights: _Optional[str] = ..., sets: _Optional[_Iterable[_Union[FeatureSet, _Mapping]]] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...
