"""The quality assessment on feature sets built so that the answers are known: a source of
fresh real-like draws, one with planted copies of training images, one shifted away; the
real-vs-real floor; mask-fidelity summaries; the features object's format and its errors."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.evaluator.config import QualityConfig
from services.evaluator.core.features import Features, FeatureSet, decode_features, encode_features
from services.evaluator.core.quality import FLOOR, SourceInput, assess_quality, headline_metrics, summarize_fidelity

D = 16
N_COPIES = 20


def feature_sets(seed: int = 0) -> dict[str, FeatureSet]:
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(200, D))
    test = rng.normal(size=(100, D))
    good = rng.normal(size=(150, D))
    # 40 images from a shifted distribution, then 20 exact copies of training images 10, 13, …
    planted = np.arange(10, 10 + 3 * N_COPIES, 3)
    copy = np.vstack([rng.normal(size=(40, D)) + 1.0, train[planted]])
    shifted = rng.normal(size=(150, D)) + 2.0
    return {
        "real_train": FeatureSet("real_train", train.astype(np.float32), np.arange(1000, 1200), "dreal", "train"),
        "real_test": FeatureSet("real_test", test.astype(np.float32), np.arange(2000, 2100), "dreal", "test"),
        "good": FeatureSet("good", good.astype(np.float32), np.arange(1, 151), "dgood"),
        "copy": FeatureSet("copy", copy.astype(np.float32), np.arange(500, 560), "dcopy"),
        "shifted": FeatureSet("shifted", shifted.astype(np.float32), np.arange(1, 151), "dshift"),
    }


def features(seed: int = 0) -> Features:
    return decode_features(encode_features("segmenter_fpn", feature_sets(seed), {"checkpoint": "ck"}))


SOURCES = [SourceInput("good"), SourceInput("copy"), SourceInput("shifted")]
CONFIG = QualityConfig(kid_subsets=50)


@pytest.fixture(scope="module")
def quality():
    return assess_quality(features(), SOURCES, CONFIG, seed=3)


def test_rows_sample_size_and_the_floor(quality):
    rows = {r["label"]: r for r in quality["rows"]}
    assert [r["label"] for r in quality["rows"]] == [FLOOR, "good", "copy", "shifted"]
    assert quality["format"] == "synthaug.quality/1" and quality["feature_space"] == "segmenter_fpn" and quality["dim"] == D
    # One size for every set: min(max_samples, half of train, test, each source) = the copy source's 60.
    assert quality["sample_size"] == 60 and quality["sample_limits"]["copy"] == 60
    assert quality["kid_subset_size"] == 30  # min(100, 60 // 2)
    assert quality["real"] == {"train": {"dataset": "dreal", "n_images": 200}, "test": {"dataset": "dreal", "n_images": 100}}
    floor, good, shifted = rows[FLOOR], rows["good"], rows["shifted"]
    assert floor["kind"] == "floor" and floor["closest_pairs"] == [] and floor["mask_fidelity"] is None
    # Real-like data scores like the floor; the shifted source is far worse on every figure.
    for vs in ("vs_test", "vs_train"):
        assert shifted[vs]["fd"] > 40 > 2 * max(floor[vs]["fd"], good[vs]["fd"])
        assert shifted[vs]["kid_mean"] > 10 * max(floor[vs]["kid_mean"], good[vs]["kid_mean"], 1e-3)
        assert shifted[vs]["precision"] < 0.2 and min(floor[vs]["precision"], good[vs]["precision"]) > 0.6
        assert shifted[vs]["coverage"] < 0.2 and min(floor[vs]["coverage"], good[vs]["coverage"]) > 0.6
    assert set(floor["vs_test"]) == {"fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"}


def test_memorisation_finds_the_planted_copies(quality):
    rows = {r["label"]: r for r in quality["rows"]}
    copy, floor, good = rows["copy"], rows[FLOOR], rows["good"]
    # Calibrated on the 100 real test images: the 1% quantile sits between the smallest two
    # distances, so exactly one held-out image is a "near-copy".
    assert floor["memorisation"]["near_copies"] == 1 and floor["memorisation"]["near_copy_share"] == pytest.approx(0.01)
    assert copy["memorisation"]["near_copies"] == N_COPIES and copy["memorisation"]["near_copy_share"] == pytest.approx(N_COPIES / 60)
    assert good["memorisation"]["near_copies"] <= 3
    # The 8 closest pairs are planted copies, paired with the image they copy.
    pairs = copy["closest_pairs"]
    assert len(pairs) == 8
    planted = {540 + i: 1010 + 3 * i for i in range(N_COPIES)}
    for p in pairs:
        assert p["synthetic_id"] in planted and p["train_id"] == planted[p["synthetic_id"]] and p["distance"] < 1e-3
    assert [p["synthetic_id"] for p in pairs] == sorted(p["synthetic_id"] for p in pairs)  # ties (0) by id
    # Copies sit at distance 0 from training images: the ratio's lower quantiles collapse;
    # real-like data has the floor's ratio distribution.
    assert copy["memorisation"]["ratio_quantiles"]["q05"] < 1e-3
    assert abs(good["memorisation"]["ratio_quantiles"]["q50"] - floor["memorisation"]["ratio_quantiles"]["q50"]) < 0.15


def test_per_image_values_for_filtering(quality):
    per = quality["per_image"]
    assert set(per) == {"good", "copy", "shifted"}
    copy = per["copy"]
    assert copy["image_id"] == list(range(500, 560))
    assert all(len(copy[k]) == 60 for k in ("nn_train", "nn_train_id", "nn_test", "ratio", "realism"))
    assert copy["nn_train_id"][40:] == [1010 + 3 * i for i in range(N_COPIES)]
    assert max(copy["nn_train"][40:]) < 1e-3 and min(copy["nn_train"][:40]) > 0.5
    # Realism ≥ 1: inside the real manifold estimate. Real-like draws mostly are; shifted ones not.
    assert np.median(per["good"]["realism"]) > 1.0 and np.median(per["shifted"]["realism"]) < 0.7


def test_seeded_and_deterministic(quality):
    assert assess_quality(features(), SOURCES, CONFIG, seed=3) == quality
    other = assess_quality(features(), SOURCES, CONFIG, seed=4)
    assert other["rows"][1]["vs_test"]["fd"] != quality["rows"][1]["vs_test"]["fd"]
    assert other["per_image"] == quality["per_image"]  # no sampling there
    json.dumps(quality, allow_nan=False)  # strict JSON: no NaN or infinity anywhere


def test_headline_metrics(quality):
    m = headline_metrics(quality)
    assert m["sample_size"] == 60
    assert m["copy.near_copy_share"] == pytest.approx(N_COPIES / 60)
    assert m[f"{FLOOR}.fd_test"] == quality["rows"][0]["vs_test"]["fd"]
    assert {"good.kid_test", "good.precision_test", "good.recall_test", "good.density_test", "good.coverage_test"} <= set(m)
    assert not any(k.endswith(".mask_fidelity") for k in m)


def evaluation(ious, dataset="dcopy"):
    return {"format": "synthaug.evaluation/1", "truth_dataset": dataset,
            "per_image": [{"image_id": i + 1, "image": f"s{i}.png", "iou": v} for i, v in enumerate(ious)]}


def test_mask_fidelity_summary():
    ious = [0.0, 0.5, 0.5, 1.0, 1.0]
    s = summarize_fidelity(evaluation(ious), "fidelity")
    assert s["n_images"] == 5 and s["mean_iou"] == pytest.approx(0.6) and s["std_iou"] == pytest.approx(np.std(ious))
    assert s["quantiles"]["q50"] == 0.5 and s["quantiles"]["q25"] == 0.5 and s["quantiles"]["q05"] == pytest.approx(0.1)
    q = assess_quality(features(), [SourceInput("copy", evaluation(ious), "evals/copy.json")], CONFIG, seed=3)
    fid = q["rows"][1]["mask_fidelity"]
    assert fid["evaluation"] == "evals/copy.json" and fid["mean_iou"] == pytest.approx(0.6)
    assert headline_metrics(q)["copy.mask_fidelity"] == pytest.approx(0.6)
    with pytest.raises(InvalidArgument, match=r"sources\[0\] \(copy\): the mask-fidelity evaluation scored dataset dgood"):
        assess_quality(features(), [SourceInput("copy", evaluation(ious, "dgood"))], CONFIG, seed=3)
    with pytest.raises(InvalidArgument, match="not an evaluation JSON"):
        summarize_fidelity({"per_image": []}, "fidelity")


def test_assessment_errors_name_the_source():
    f = features()
    for sources, config, needle in [
        ([SourceInput("gan")], CONFIG, "the features have no set 'gan'"),
        ([SourceInput("good"), SourceInput("good")], CONFIG, "label 'good' appears twice"),
        ([SourceInput("real_test")], CONFIG, "sources[0].label 'real_test' is reserved"),
        ([SourceInput(FLOOR)], CONFIG, "is reserved"),
        ([SourceInput("a__b")], CONFIG, "without '__'"),
        ([SourceInput("good")], QualityConfig(max_samples=5), "need at least 6"),
        ([SourceInput("good")], QualityConfig(nearest_k=0), "QualityConfig.nearest_k must be in [1, 100]"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            assess_quality(f, sources, config, seed=0)
        assert needle in str(info.value), (needle, str(info.value))


def test_features_round_trip_and_format_errors():
    sets = feature_sets()
    f = decode_features(encode_features("inception", sets, {"weights": "file:inception.pt"}))
    assert f.extractor == "inception" and f.dim == D and f.model == {"weights": "file:inception.pt"}
    assert set(f.sets) == set(sets)
    assert f.sets["copy"].dataset == "dcopy" and f.sets["real_test"].split == "test"
    assert np.array_equal(f.sets["copy"].ids, np.arange(500, 560)) and f.sets["copy"].features.dtype == np.float32

    def npz(**arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    meta = np.array(json.dumps({"format": "synthaug.features/1", "extractor": "segmenter_fpn"}))
    x = np.zeros((3, 4), np.float32)
    for data, needle in [
        (b"not a zip", "not a synthaug.features/1 .npz"),
        (npz(real_train=x), "no '__meta__' string"),
        (npz(__meta__=np.array(json.dumps({"format": "other"}))), "__meta__.format must be 'synthaug.features/1'"),
        (npz(__meta__=np.array(json.dumps({"format": "synthaug.features/1", "extractor": "clip"}))), "extractor must be one of"),
        (npz(__meta__=meta, real_train=x), "set 'real_train' has no 'real_train__ids' array"),
        (npz(__meta__=meta, real_train=x, real_train__ids=np.array([1, 1, 2])), "repeated image ids"),
        (npz(__meta__=meta, real_train=x, real_train__ids=np.arange(2)), "must be 3 integer image ids"),
        (npz(__meta__=meta, real_train=np.full((3, 4), np.inf, np.float32), real_train__ids=np.arange(3)), "row 0 is not finite"),
        (npz(__meta__=meta, real_train=x, real_train__ids=np.arange(3), b=np.zeros((2, 5)), b__ids=np.arange(2)), "differ in width"),
        (npz(__meta__=meta, c__ids=np.arange(3)), "has no features array 'c'"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            decode_features(data, "features")
        assert needle in str(info.value), (needle, str(info.value))
