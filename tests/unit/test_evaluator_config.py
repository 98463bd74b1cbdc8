"""The evaluator's settings: requests and mappings → EvalConfig / ReportConfig / CompareConfig,
with one set of defaults and messages that name the field."""
from __future__ import annotations

import pytest

from services.common.config import (
    config_from_mapping,
    config_from_proto,
    config_to_proto,
)
from services.common.errors import InvalidArgument
from services.evaluator.config import CompareConfig, EvalConfig, QualityConfig, ReportConfig
from synthaug.v1 import common_pb2
from synthaug.v1 import evaluator_pb2 as pb

EVALUATE_INPUTS = ("truth", "split", "predictions")
REPORT_INPUTS = ("runs", "truth", "split", "title", "prefix", "seed", "test_sets", "contact_sources", "provenance_json",
                 "quality")
QUALITY_INPUTS = ("features", "feature_space", "sources", "seed")


def test_unset_fields_take_the_defaults() -> None:
    config = config_from_proto(EvalConfig, pb.EvaluateRequest(split="test"), exclude=EVALUATE_INPUTS)
    assert config == EvalConfig(score_threshold=0.5, mask_threshold=None, n_bootstrap=2000, seed=0)
    report = config_from_proto(ReportConfig, pb.ReportRequest(runs=[pb.ArmRun(arm="a")], title="t"), exclude=REPORT_INPUTS)
    assert report == ReportConfig(overlay_images=8, baseline_arm=None, n_bootstrap=2000, contact_images=8)
    assert config_from_proto(CompareConfig, pb.CompareRequest(), exclude=("a", "b", "seed")) == CompareConfig("iou", 2000)


def test_zero_is_a_value_not_the_default() -> None:
    """score_threshold 0 keeps every instance (the thesis); overlay_images 0 draws no grid."""
    config = config_from_proto(EvalConfig, pb.EvaluateRequest(score_threshold=0.0, seed=7), exclude=EVALUATE_INPUTS)
    assert config.score_threshold == 0.0 and config.seed == 7
    report = config_from_proto(ReportConfig, pb.ReportRequest(overlay_images=0, baseline_arm="real"), exclude=REPORT_INPUTS)
    assert report == ReportConfig(overlay_images=0, baseline_arm="real")
    with pytest.raises(InvalidArgument, match=r"EvalConfig.n_bootstrap must be in \[100, 100000\], got 0"):
        config_from_proto(EvalConfig, pb.EvaluateRequest(n_bootstrap=0), exclude=EVALUATE_INPUTS)


def test_config_to_proto_builds_the_request_the_orchestrator_sends() -> None:
    truth = common_pb2.DatasetRef(id="d1")
    request = config_to_proto(EvalConfig(mask_threshold=0.5, n_bootstrap=500), pb.EvaluateRequest,
                              truth=truth, split="test", seed=3)
    assert request.HasField("score_threshold") and request.score_threshold == 0.5
    assert (request.mask_threshold, request.n_bootstrap, request.seed, request.truth.id) == (0.5, 500, 3, "d1")
    expected = EvalConfig(mask_threshold=0.5, n_bootstrap=500, seed=3)
    assert config_from_proto(EvalConfig, request, exclude=EVALUATE_INPUTS) == expected
    report = config_to_proto(ReportConfig(overlay_images=0), pb.ReportRequest, title="T")
    assert report.HasField("overlay_images") and report.overlay_images == 0 and not report.baseline_arm


@pytest.mark.parametrize(("cls", "values", "message"), [
    (EvalConfig, {"score_threshold": 1.5}, "EvalConfig.score_threshold must be in [0, 1], got 1.5"),
    (EvalConfig, {"mask_threshold": 0}, "EvalConfig.mask_threshold must be in (0, 1], got 0.0"),
    (EvalConfig, {"n_bootstrap": 100_001}, "EvalConfig.n_bootstrap must be in [100, 100000], got 100001"),
    (EvalConfig, {"confidence": 0.2}, "EvalConfig.confidence must be in [0.5, 1), got 0.2"),
    (ReportConfig, {"overlay_images": 25}, "ReportConfig.overlay_images must be in [0, 24] (0 = none), got 25"),
    (ReportConfig, {"overlay_images": -1}, "ReportConfig.overlay_images must be in [0, 24]"),
    (ReportConfig, {"baseline_arm": ""}, "ReportConfig.baseline_arm is empty"),
    (ReportConfig, {"n_bootstrap": 50}, "ReportConfig.n_bootstrap must be in [100, 100000], got 50"),
    (ReportConfig, {"contact_images": 17}, "ReportConfig.contact_images must be in [0, 16] (0 = none), got 17"),
    (CompareConfig, {"metric": "accuracy"}, "CompareConfig.metric must be one of iou, f1, precision, recall, es"),
    (QualityConfig, {"max_samples": 3}, "QualityConfig.max_samples must be in [4, 50000], got 3"),
    (QualityConfig, {"kid_subset_size": 1}, "QualityConfig.kid_subset_size must be in [2, 50000], got 1"),
    (QualityConfig, {"kid_subsets": 0}, "QualityConfig.kid_subsets must be in [1, 10000], got 0"),
    (QualityConfig, {"nearest_k": 101}, "QualityConfig.nearest_k must be in [1, 100], got 101"),
    (QualityConfig, {"near_copy_quantile": 0.0}, "QualityConfig.near_copy_quantile must be in (0, 0.5], got 0.0"),
    (QualityConfig, {"closest_pairs": 17}, "QualityConfig.closest_pairs must be in [0, 16] (0 = none), got 17"),
])
def test_bad_settings_name_the_field(cls: type, values: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config_from_mapping(cls, values)
    assert message in str(info.value)


def test_quality_settings_from_the_request() -> None:
    """Unset → the defaults; 0 closest pairs is a value (no contact sheet), not "unset"."""
    request = pb.QualityRequest(feature_space="segmenter_fpn", seed=2)
    assert config_from_proto(QualityConfig, request, exclude=QUALITY_INPUTS) == QualityConfig(
        max_samples=2000, kid_subset_size=100, kid_subsets=100, nearest_k=5, near_copy_quantile=0.01, closest_pairs=8)
    request = config_to_proto(QualityConfig(closest_pairs=0, nearest_k=3), pb.QualityRequest, feature_space="inception")
    assert request.HasField("closest_pairs") and request.closest_pairs == 0 and request.feature_space == "inception"
    assert config_from_proto(QualityConfig, request, exclude=QUALITY_INPUTS) == QualityConfig(closest_pairs=0, nearest_k=3)
