from synthaug.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluateRequest(_message.Message):
    __slots__ = ("truth", "split", "predictions", "score_threshold", "mask_threshold", "n_bootstrap", "seed")
    TRUTH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    N_BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    truth: _common_pb2.DatasetRef
    split: str
    predictions: _common_pb2.ObjectRef
    score_threshold: float
    mask_threshold: float
    n_bootstrap: int
    seed: int
    def __init__(self, truth: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., predictions: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., score_threshold: _Optional[float] = ..., mask_threshold: _Optional[float] = ..., n_bootstrap: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("a", "b", "metric", "n_bootstrap", "seed")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    N_BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    a: _common_pb2.ObjectRef
    b: _common_pb2.ObjectRef
    metric: str
    n_bootstrap: int
    seed: int
    def __init__(self, a: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., b: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., metric: _Optional[str] = ..., n_bootstrap: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("n_images", "mean_difference", "ci_low", "ci_high", "p_value", "metric", "mean_a", "mean_b", "statistic")
    N_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MEAN_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MEAN_A_FIELD_NUMBER: _ClassVar[int]
    MEAN_B_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    n_images: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    metric: str
    mean_a: float
    mean_b: float
    statistic: float
    def __init__(self, n_images: _Optional[int] = ..., mean_difference: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., p_value: _Optional[float] = ..., metric: _Optional[str] = ..., mean_a: _Optional[float] = ..., mean_b: _Optional[float] = ..., statistic: _Optional[float] = ...) -> None: ...

class ArmRun(_message.Message):
    __slots__ = ("arm", "seed", "evaluation", "predictions", "training_record", "real_count", "composite_count", "gan_count", "test_set", "quality_source")
    ARM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RECORD_FIELD_NUMBER: _ClassVar[int]
    REAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    GAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    arm: str
    seed: int
    evaluation: _common_pb2.ObjectRef
    predictions: _common_pb2.ObjectRef
    training_record: _common_pb2.ObjectRef
    real_count: int
    composite_count: int
    gan_count: int
    test_set: str
    quality_source: str
    def __init__(self, arm: _Optional[str] = ..., seed: _Optional[int] = ..., evaluation: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., predictions: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., training_record: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., real_count: _Optional[int] = ..., composite_count: _Optional[int] = ..., gan_count: _Optional[int] = ..., test_set: _Optional[str] = ..., quality_source: _Optional[str] = ...) -> None: ...

class TestSet(_message.Message):
    __slots__ = ("label", "truth", "split")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TRUTH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    label: str
    truth: _common_pb2.DatasetRef
    split: str
    def __init__(self, label: _Optional[str] = ..., truth: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ...) -> None: ...

class ContactSource(_message.Message):
    __slots__ = ("label", "dataset", "split")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    label: str
    dataset: _common_pb2.DatasetRef
    split: str
    def __init__(self, label: _Optional[str] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("runs", "truth", "split", "title", "prefix", "overlay_images", "baseline_arm", "n_bootstrap", "seed", "test_sets", "contact_sources", "provenance_json", "contact_images", "quality")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    TRUTH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ARM_FIELD_NUMBER: _ClassVar[int]
    N_BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEST_SETS_FIELD_NUMBER: _ClassVar[int]
    CONTACT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTACT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ArmRun]
    truth: _common_pb2.DatasetRef
    split: str
    title: str
    prefix: str
    overlay_images: int
    baseline_arm: str
    n_bootstrap: int
    seed: int
    test_sets: _containers.RepeatedCompositeFieldContainer[TestSet]
    contact_sources: _containers.RepeatedCompositeFieldContainer[ContactSource]
    provenance_json: str
    contact_images: int
    quality: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    def __init__(self, runs: _Optional[_Iterable[_Union[ArmRun, _Mapping]]] = ..., truth: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., split: _Optional[str] = ..., title: _Optional[str] = ..., prefix: _Optional[str] = ..., overlay_images: _Optional[int] = ..., baseline_arm: _Optional[str] = ..., n_bootstrap: _Optional[int] = ..., seed: _Optional[int] = ..., test_sets: _Optional[_Iterable[_Union[TestSet, _Mapping]]] = ..., contact_sources: _Optional[_Iterable[_Union[ContactSource, _Mapping]]] = ..., provenance_json: _Optional[str] = ..., contact_images: _Optional[int] = ..., quality: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ...) -> None: ...

class QualitySource(_message.Message):
    __slots__ = ("label", "mask_fidelity")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MASK_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    mask_fidelity: _common_pb2.ObjectRef
    def __init__(self, label: _Optional[str] = ..., mask_fidelity: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class QualityRequest(_message.Message):
    __slots__ = ("features", "feature_space", "sources", "seed", "max_samples", "kid_subset_size", "kid_subsets", "nearest_k", "near_copy_quantile", "closest_pairs")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SPACE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KID_SUBSET_SIZE_FIELD_NUMBER: _ClassVar[int]
    KID_SUBSETS_FIELD_NUMBER: _ClassVar[int]
    NEAREST_K_FIELD_NUMBER: _ClassVar[int]
    NEAR_COPY_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    CLOSEST_PAIRS_FIELD_NUMBER: _ClassVar[int]
    features: _common_pb2.ObjectRef
    feature_space: str
    sources: _containers.RepeatedCompositeFieldContainer[QualitySource]
    seed: int
    max_samples: int
    kid_subset_size: int
    kid_subsets: int
    nearest_k: int
    near_copy_quantile: float
    closest_pairs: int
    def __init__(self, features: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., feature_space: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[QualitySource, _Mapping]]] = ..., seed: _Optional[int] = ..., max_samples: _Optional[int] = ..., kid_subset_size: _Optional[int] = ..., kid_subsets: _Optional[int] = ..., nearest_k: _Optional[int] = ..., near_copy_quantile: _Optional[float] = ..., closest_pairs: _Optional[int] = ...) -> None: ...
