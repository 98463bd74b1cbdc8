from synthaug.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GanConfig(_message.Message):
    __slots__ = ("image_size", "ngf", "ndf", "depth", "n_layers_d", "norm", "lambda_l1", "lr", "beta1", "n_epochs", "n_epochs_decay", "batch_size", "amp", "checkpoint_every", "num_workers", "boundary_channel", "diversity", "color_hint_size", "beta2", "sample_count", "flip", "dropout", "model")
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NGF_FIELD_NUMBER: _ClassVar[int]
    NDF_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_D_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_L1_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    N_EPOCHS_DECAY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    COLOR_HINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    image_size: int
    ngf: int
    ndf: int
    depth: int
    n_layers_d: int
    norm: str
    lambda_l1: float
    lr: float
    beta1: float
    n_epochs: int
    n_epochs_decay: int
    batch_size: int
    amp: str
    checkpoint_every: int
    num_workers: int
    boundary_channel: bool
    diversity: str
    color_hint_size: int
    beta2: float
    sample_count: int
    flip: bool
    dropout: bool
    model: str
    def __init__(self, image_size: _Optional[int] = ..., ngf: _Optional[int] = ..., ndf: _Optional[int] = ..., depth: _Optional[int] = ..., n_layers_d: _Optional[int] = ..., norm: _Optional[str] = ..., lambda_l1: _Optional[float] = ..., lr: _Optional[float] = ..., beta1: _Optional[float] = ..., n_epochs: _Optional[int] = ..., n_epochs_decay: _Optional[int] = ..., batch_size: _Optional[int] = ..., amp: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., num_workers: _Optional[int] = ..., boundary_channel: _Optional[bool] = ..., diversity: _Optional[str] = ..., color_hint_size: _Optional[int] = ..., beta2: _Optional[float] = ..., sample_count: _Optional[int] = ..., flip: _Optional[bool] = ..., dropout: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class GanTrainRequest(_message.Message):
    __slots__ = ("dataset", "split", "config", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    split: str
    config: GanConfig
    seed: int
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., config: _Optional[_Union[GanConfig, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class GanGenerateRequest(_message.Message):
    __slots__ = ("checkpoint", "masks", "split", "seed", "batchnorm", "resize", "count", "batch_size", "name", "dropout")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.ObjectRef
    masks: _common_pb2.DatasetRef
    split: str
    seed: int
    batchnorm: str
    resize: bool
    count: int
    batch_size: int
    name: str
    dropout: bool
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., masks: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., seed: _Optional[int] = ..., batchnorm: _Optional[str] = ..., resize: _Optional[bool] = ..., count: _Optional[int] = ..., batch_size: _Optional[int] = ..., name: _Optional[str] = ..., dropout: _Optional[bool] = ...) -> None: ...
