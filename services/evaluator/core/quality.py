"""Synthetic-data quality: how close each synthetic source is to real images, whether it
copies its training images, and whether its images show what their masks say — with a
real-vs-real floor, so every figure can be read against what real data itself scores.

Input: a features object (features.py: ``real_train``, ``real_test`` and one set per
source, one feature space) and, per source, optionally the evaluation JSON of its *mask
fidelity* (the real-only segmenter's predictions on the source's images, scored against
the masks they were generated from).

**Distribution figures**, each against the held-out real test images ("vs test", the
honest one: a generator never saw them) and against real training images ("vs train", for
comparison; a generator that copies its training images looks better there than against
test). Every set is scored at one size n = min(max_samples, ⌊N_train / 2⌋, N_test, each
source's size), by a seeded subsample (a prefix of the permutation
``rng(seed, "quality/sample", name)``: a larger n takes a superset):

* the real training images are split in two halves by ``rng(seed, "quality/halves")``:
  the "vs train" reference is n images of the second half;
* the **floor row** ("real-vs-real") is n images of the first half, scored like a source:
  against the other half (vs train) and against the test images (vs test) — what a
  perfect generator (fresh draws of the real distribution) would score;
* FD, KID (``kid_subsets`` subsets of min(kid_subset_size, ⌊n / 2⌋) images, streams
  ``rng(seed, "quality/kid", label, "test"|"train")``) and precision / recall / density /
  coverage with k = nearest_k (quality_metrics.py).

**Memorisation**, from every image of each source (no subsampling):

* per synthetic image, the distance to its nearest real training image (all of them) and
  to its nearest real test image; the ratio train / test has quantiles RATIO_QUANTILES.
  A generator that copies sits much closer to its training images than to unseen ones
  (ratio ≪ 1). The floor row holds the same figures for the real test images themselves
  (nearest training image, nearest *other* test image), which is what "not copying" looks
  like with these set sizes;
* near-copies: images closer to a training image than the ``near_copy_quantile`` quantile
  of the real test images' distances to their nearest training image (so a held-out real
  image is a near-copy this often: the floor's share, ≈ near_copy_quantile by
  construction); the share per source;
* the ``closest_pairs`` closest (synthetic, real training) pairs, by image id with both
  dataset ids (the report's contact sheet draws them).

**Per image** (every image of every source, for filtering): nearest real training
image (distance, id), nearest real test image distance, their ratio, and the realism score
against the real training images (quality_metrics.realism_scores). Filtering a training set
may use only what derives from training images: ``realism`` and ``nn_train`` — never
``nn_test`` (that would let the test set choose training data).

**Mask fidelity**: the per-image IoU distribution of the source's fidelity evaluation
(n, mean, std, FIDELITY_QUANTILES).

Output: the quality JSON, format ``synthaug.quality/1`` (see ``assess_quality``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from services.common.config import config_to_mapping
from services.common.errors import InvalidArgument
from services.common.seeding import rng
from services.evaluator.config import QualityConfig
from services.evaluator.core.features import REAL_SETS, REAL_TEST, REAL_TRAIN, Features, FeatureSet, check_set_name
from services.evaluator.core.quality_metrics import (
    TINY,
    as_features,
    frechet_distance,
    kernel_inception_distance,
    knn_radii,
    nearest,
    prdc,
    realism_scores,
)

FORMAT = "synthaug.quality/1"
#: Label of the real-vs-real reference row.
FLOOR = "real-vs-real"
RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
FIDELITY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: The distribution figures of one comparison (``vs_test`` / ``vs_train``), in table order.
SET_METRICS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage")

Progress = Callable[[float, str], None]


def quantile_key(q: float) -> str:
    """"q05", "q50", …: how a quantile is named in the quality JSON."""
    return f"q{round(q * 100):02d}"


def check_source_label(label: str, what: str) -> str:
    """A source label: a valid set name, not one of the real sets nor the floor row's."""
    check_set_name(label, what)
    if label in REAL_SETS or label == FLOOR:
        raise InvalidArgument(f"{what} {label!r} is reserved (real sets: {', '.join(REAL_SETS)}; floor row: {FLOOR})")
    return label


@dataclass(frozen=True)
class SourceInput:
    """One synthetic source to assess: its set in the features and, optionally, its mask
    fidelity evaluation (an evaluation JSON) and that evaluation's store key."""

    label: str
    fidelity: Mapping[str, Any] | None = None
    fidelity_key: str = ""


def _quantiles(values: np.ndarray, levels: Sequence[float]) -> dict[str, float]:
    return {quantile_key(q): float(v) for q, v in zip(levels, np.quantile(values, levels))}


def summarize_fidelity(evaluation: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The per-image IoU distribution of a mask-fidelity evaluation JSON."""
    per_image = evaluation.get("per_image")
    if not isinstance(per_image, list) or not per_image:
        raise InvalidArgument(f"{what}: not an evaluation JSON with per-image results")
    try:
        iou = np.array([float(row["iou"]) for row in per_image])
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"{what}: every per_image entry needs a numeric 'iou'") from None
    return {"n_images": int(iou.size), "mean_iou": float(iou.mean()), "std_iou": float(iou.std()),
            "quantiles": _quantiles(iou, FIDELITY_QUANTILES), "truth_dataset": str(evaluation.get("truth_dataset", ""))}


def _set_metrics(cand: np.ndarray, ref: np.ndarray, ref_radii: np.ndarray, config: QualityConfig, kid_size: int,
                 stream: tuple[int | str, ...]) -> dict[str, float]:
    kid = kernel_inception_distance(cand, ref, kid_size, config.kid_subsets, rng(*stream))
    p = prdc(ref, cand, config.nearest_k, ref_radii)
    return {"fd": frechet_distance(cand, ref), "kid_mean": kid.mean, "kid_std": kid.std, "precision": p.precision,
            "recall": p.recall, "density": p.density, "coverage": p.coverage}


def _memorisation(d_train: np.ndarray, d_test: np.ndarray, threshold: float) -> dict[str, Any]:
    ratio = d_train / np.maximum(d_test, TINY)
    return {"n_images": int(d_train.size), "near_copy_share": float(np.mean(d_train < threshold)),
            "near_copies": int(np.sum(d_train < threshold)), "ratio_quantiles": _quantiles(ratio, RATIO_QUANTILES),
            "nn_train_median": float(np.median(d_train)), "nn_test_median": float(np.median(d_test))}


def _sample_size(features: Features, labels: Sequence[str], config: QualityConfig) -> tuple[int, dict[str, int]]:
    limits = {"max_samples": config.max_samples, "half of real_train": len(features.sets[REAL_TRAIN]) // 2,
              REAL_TEST: len(features.sets[REAL_TEST]), **{label: len(features.sets[label]) for label in labels}}
    n = min(limits.values())
    floor = max(config.nearest_k + 1, 4)
    if n < floor:
        smallest = min(limits, key=lambda k: limits[k])
        raise InvalidArgument(
            f"quality: every set is scored at one sample size, the smallest of {limits}; that is {n} ({smallest}), "
            f"but FD, KID and k-NN figures with nearest_k = {config.nearest_k} need at least {floor}")
    return n, limits


def assess_quality(features: Features, sources: Sequence[SourceInput], config: QualityConfig, seed: int,
                   progress: Progress | None = None) -> dict[str, Any]:
    """The quality JSON (format ``synthaug.quality/1``)::

        {"format", "feature_space", "dim", "seed", "settings": {QualityConfig},
         "sample_size": n, "sample_limits": {set: size}, "kid_subset_size": m,
         "near_copy_threshold": t,
         "real": {"train": {"dataset", "n_images"}, "test": {"dataset", "n_images"}},
         "rows": [{"label", "kind": "floor" | "source", "dataset", "n_images",
                   "vs_test": {fd, kid_mean, kid_std, precision, recall, density, coverage},
                   "vs_train": {...},
                   "memorisation": {n_images, near_copy_share, near_copies,
                                    ratio_quantiles: {q05, q25, q50, q75, q95},
                                    nn_train_median, nn_test_median},
                   "closest_pairs": [{"synthetic_id", "train_id", "distance", "test_distance"}],
                   "mask_fidelity": null | {n_images, mean_iou, std_iou, quantiles, truth_dataset,
                                            evaluation}}, ...],   # the floor first, then sources
         "per_image": {label: {"image_id", "nn_train", "nn_train_id", "nn_test", "ratio",
                               "realism"}}}   # lists aligned by position

    Errors (InvalidArgument) name the source: a missing set, a label twice, a fidelity
    evaluation of another dataset than the source's features."""
    config = config.validate()
    report = progress or (lambda f, m: None)
    labels = [check_source_label(s.label, f"sources[{i}].label") for i, s in enumerate(sources)]
    if len(set(labels)) != len(labels):
        raise InvalidArgument(f"sources: label {next(x for x in labels if labels.count(x) > 1)!r} appears twice")
    for name in (*REAL_SETS, *labels):
        features.get(name, "quality")
    train_set, test_set = features.sets[REAL_TRAIN], features.sets[REAL_TEST]
    n, limits = _sample_size(features, labels, config)
    k = config.nearest_k
    kid_size = min(config.kid_subset_size, n // 2)

    def sample(s: FeatureSet) -> np.ndarray:
        return s.features[rng(seed, "quality/sample", s.name).permutation(len(s))[:n]]

    train = as_features(train_set.features, REAL_TRAIN)
    test = as_features(test_set.features, REAL_TEST, 2)
    halves = rng(seed, "quality/halves").permutation(len(train))
    half = len(train) // 2
    floor_cand = train[halves[:n]]
    train_ref = train[halves[half:half + n]]
    test_ref = as_features(sample(test_set), REAL_TEST)
    train_ref_radii, test_ref_radii = knn_radii(train_ref, k), knn_radii(test_ref, k)

    report(0.05, "real-vs-real floor")
    # Memorisation calibration: the real test images' nearest training image (all of them)
    # and nearest other test image.
    test_d_train, _ = nearest(test, train)
    test_d_test, _ = nearest(test, test, exclude_self=True)
    threshold = float(np.quantile(test_d_train, config.near_copy_quantile))
    full_radii = knn_radii(train, k)  # the realism scores' real manifold: every training image

    def compare(cand: np.ndarray, label: str) -> dict[str, Any]:
        return {"vs_test": _set_metrics(cand, test_ref, test_ref_radii, config, kid_size, (seed, "quality/kid", label, "test")),
                "vs_train": _set_metrics(cand, train_ref, train_ref_radii, config, kid_size,
                                         (seed, "quality/kid", label, "train"))}

    rows = [{"label": FLOOR, "kind": "floor", "dataset": train_set.dataset, "n_images": half, **compare(floor_cand, FLOOR),
             "memorisation": _memorisation(test_d_train, test_d_test, threshold), "closest_pairs": [],
             "mask_fidelity": None}]
    per_image: dict[str, dict[str, list[Any]]] = {}
    for i, source in enumerate(sources):
        label = source.label
        report(0.1 + 0.85 * i / max(1, len(sources)), f"source {label} ({i + 1}/{len(sources)})")
        s = features.sets[label]
        x = as_features(s.features, label)
        d_train, j_train = nearest(x, train)
        d_test, _ = nearest(x, test)
        order = np.lexsort((s.ids, d_train))[:config.closest_pairs]
        pairs = [{"synthetic_id": int(s.ids[o]), "train_id": int(train_set.ids[j_train[o]]),
                  "distance": float(d_train[o]), "test_distance": float(d_test[o])} for o in order]
        fidelity = None
        if source.fidelity is not None:
            fidelity = summarize_fidelity(source.fidelity, f"sources[{i}] ({label}) mask fidelity")
            if fidelity["truth_dataset"] and s.dataset and fidelity["truth_dataset"] != s.dataset:
                raise InvalidArgument(
                    f"sources[{i}] ({label}): the mask-fidelity evaluation scored dataset {fidelity['truth_dataset']}, "
                    f"the source's features come from dataset {s.dataset}")
            fidelity["evaluation"] = source.fidelity_key
        rows.append({"label": label, "kind": "source", "dataset": s.dataset, "n_images": len(s), **compare(sample(s), label),
                     "memorisation": _memorisation(d_train, d_test, threshold), "closest_pairs": pairs,
                     "mask_fidelity": fidelity})
        per_image[label] = {
            "image_id": [int(v) for v in s.ids], "nn_train": d_train.tolist(),
            "nn_train_id": [int(train_set.ids[j]) for j in j_train], "nn_test": d_test.tolist(),
            "ratio": (d_train / np.maximum(d_test, TINY)).tolist(),
            "realism": realism_scores(x, train, k, full_radii).tolist(),
        }
    report(0.97, "writing")
    return {
        "format": FORMAT, "feature_space": features.extractor, "dim": features.dim, "seed": int(seed),
        "settings": config_to_mapping(config), "sample_size": n, "sample_limits": limits, "kid_subset_size": kid_size,
        "near_copy_threshold": threshold,
        "real": {"train": {"dataset": train_set.dataset, "n_images": len(train_set)},
                 "test": {"dataset": test_set.dataset, "n_images": len(test_set)}},
        "rows": rows, "per_image": per_image,
    }


def headline_metrics(quality: Mapping[str, Any]) -> dict[str, float]:
    """JobResult.metrics of a quality job: per row ``<label>.fd_test``, ``.kid_test``,
    ``.precision_test``, ``.recall_test``, ``.density_test``, ``.coverage_test``,
    ``.near_copy_share`` and (when measured) ``.mask_fidelity`` (mean IoU); ``sample_size``."""
    out = {"sample_size": float(quality["sample_size"])}
    for row in quality["rows"]:
        label, vs = row["label"], row["vs_test"]
        out[f"{label}.fd_test"] = vs["fd"]
        out[f"{label}.kid_test"] = vs["kid_mean"]
        for name in ("precision", "recall", "density", "coverage"):
            out[f"{label}.{name}_test"] = vs[name]
        out[f"{label}.near_copy_share"] = row["memorisation"]["near_copy_share"]
        if row.get("mask_fidelity"):
            out[f"{label}.mask_fidelity"] = row["mask_fidelity"]["mean_iou"]
    return out
