from synthaug.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackgroundMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKGROUND_METHOD_UNSPECIFIED: _ClassVar[BackgroundMethod]
    BACKGROUND_METHOD_AS_IS: _ClassVar[BackgroundMethod]
    BACKGROUND_METHOD_INPAINT_TELEA: _ClassVar[BackgroundMethod]
    BACKGROUND_METHOD_INPAINT_NS: _ClassVar[BackgroundMethod]
    BACKGROUND_METHOD_CROP: _ClassVar[BackgroundMethod]

class BlendMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLEND_MODE_UNSPECIFIED: _ClassVar[BlendMode]
    BLEND_MODE_HARD: _ClassVar[BlendMode]
    BLEND_MODE_GAUSSIAN: _ClassVar[BlendMode]
    BLEND_MODE_POISSON: _ClassVar[BlendMode]
BACKGROUND_METHOD_UNSPECIFIED: BackgroundMethod
BACKGROUND_METHOD_AS_IS: BackgroundMethod
BACKGROUND_METHOD_INPAINT_TELEA: BackgroundMethod
BACKGROUND_METHOD_INPAINT_NS: BackgroundMethod
BACKGROUND_METHOD_CROP: BackgroundMethod
BLEND_MODE_UNSPECIFIED: BlendMode
BLEND_MODE_HARD: BlendMode
BLEND_MODE_GAUSSIAN: BlendMode
BLEND_MODE_POISSON: BlendMode

class ExtractForegroundsRequest(_message.Message):
    __slots__ = ("dataset", "split", "min_area", "feather_sigma", "padding", "keep_truncated")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    FEATHER_SIGMA_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    KEEP_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    split: str
    min_area: int
    feather_sigma: float
    padding: int
    keep_truncated: bool
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., min_area: _Optional[int] = ..., feather_sigma: _Optional[float] = ..., padding: _Optional[int] = ..., keep_truncated: _Optional[bool] = ...) -> None: ...

class HarvestBackgroundsRequest(_message.Message):
    __slots__ = ("dataset", "split", "image_prefix", "method", "dilate_px", "crop_size", "max_backgrounds", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DILATE_PX_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKGROUNDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    split: str
    image_prefix: str
    method: BackgroundMethod
    dilate_px: int
    crop_size: int
    max_backgrounds: int
    seed: int
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., image_prefix: _Optional[str] = ..., method: _Optional[_Union[BackgroundMethod, str]] = ..., dilate_px: _Optional[int] = ..., crop_size: _Optional[int] = ..., max_backgrounds: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class ComposeParams(_message.Message):
    __slots__ = ("output_size", "min_objects", "max_objects", "scale", "rotation", "flip", "brightness", "contrast", "saturation", "hue", "background_flip", "background_brightness", "background_contrast", "max_overlap_iou", "max_placement_attempts", "blend", "blend_sigma", "min_visible_fraction", "min_usable_background", "dark_threshold", "tone_match", "image_format")
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SATURATION_FIELD_NUMBER: _ClassVar[int]
    HUE_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FLIP_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_CONTRAST_FIELD_NUMBER: _ClassVar[int]
    MAX_OVERLAP_IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_PLACEMENT_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    BLEND_SIGMA_FIELD_NUMBER: _ClassVar[int]
    MIN_VISIBLE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_USABLE_BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    DARK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TONE_MATCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    output_size: int
    min_objects: int
    max_objects: int
    scale: Range
    rotation: Range
    flip: bool
    brightness: Range
    contrast: Range
    saturation: Range
    hue: Range
    background_flip: bool
    background_brightness: Range
    background_contrast: Range
    max_overlap_iou: float
    max_placement_attempts: int
    blend: BlendMode
    blend_sigma: float
    min_visible_fraction: float
    min_usable_background: float
    dark_threshold: int
    tone_match: float
    image_format: str
    def __init__(self, output_size: _Optional[int] = ..., min_objects: _Optional[int] = ..., max_objects: _Optional[int] = ..., scale: _Optional[_Union[Range, _Mapping]] = ..., rotation: _Optional[_Union[Range, _Mapping]] = ..., flip: _Optional[bool] = ..., brightness: _Optional[_Union[Range, _Mapping]] = ..., contrast: _Optional[_Union[Range, _Mapping]] = ..., saturation: _Optional[_Union[Range, _Mapping]] = ..., hue: _Optional[_Union[Range, _Mapping]] = ..., background_flip: _Optional[bool] = ..., background_brightness: _Optional[_Union[Range, _Mapping]] = ..., background_contrast: _Optional[_Union[Range, _Mapping]] = ..., max_overlap_iou: _Optional[float] = ..., max_placement_attempts: _Optional[int] = ..., blend: _Optional[_Union[BlendMode, str]] = ..., blend_sigma: _Optional[float] = ..., min_visible_fraction: _Optional[float] = ..., min_usable_background: _Optional[float] = ..., dark_threshold: _Optional[int] = ..., tone_match: _Optional[float] = ..., image_format: _Optional[str] = ...) -> None: ...

class ComposeRequest(_message.Message):
    __slots__ = ("foregrounds", "backgrounds", "count", "seed", "params", "workers", "name")
    FOREGROUNDS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    foregrounds: _common_pb2.ObjectRef
    backgrounds: _common_pb2.ObjectRef
    count: int
    seed: int
    params: ComposeParams
    workers: int
    name: str
    def __init__(self, foregrounds: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., backgrounds: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., params: _Optional[_Union[ComposeParams, _Mapping]] = ..., workers: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...
