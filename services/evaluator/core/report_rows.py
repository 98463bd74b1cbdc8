"""The numbers of a report, as rows of plain values (formatting lives in report_tables):
results per arm and test set, paired comparisons with Holm-adjusted p-values, the
in-domain vs out-of-domain table, per-seed and per-image rows.

Conventions (stated on the page too):

* An arm's score on a test set is the mean over its seeds; each image's score is first
  averaged over the seeds, so the arm's mean equals the mean of those per-image values.
* "CI (images)" is the BCa bootstrap interval over test images of that mean: the
  uncertainty from which test images were drawn. "CI (seeds)" is Student's t interval of
  the per-seed aggregates (training variability), given from MIN_SEEDS_FOR_T seeds on.
* Paired comparisons: each arm against the baseline on the same images, per-image
  difference of the seed-averaged metric, BCa interval, two-sided Wilcoxon signed-rank p and
  Holm's adjustment over every comparison of the report (all arms × test sets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    PER_IMAGE_METRICS,
)
from services.evaluator.core.compare import (
    SEED_AGGREGATES,
    aligned,
    arm_aggregates,
    mean_over_seeds,
)
from services.evaluator.core.report_inputs import RunInput
from services.evaluator.core.stats import (
    MIN_SEEDS_FOR_T,
    bootstrap_ci,
    holm_adjust,
    paired_comparison,
)
from services.evaluator.core.training import TrainingSummary

#: Per-image metrics whose seed-averaged mean gets a BCa interval over images (table and bars).
IMAGE_CI_METRICS = {"mean_iou": "iou", "mean_f1": "f1", "es": "es", "thresholded_jaccard": "thresholded_jaccard"}
#: Extra per-image columns of the per-image CSV (after the metrics).
PER_IMAGE_COUNTS = ("n_truth", "n_pred", "n_matched", "n_fp", "has_prediction")
#: How many per-seed values the results table lists before pointing to the per-seed table.
MAX_LISTED_SEEDS = 5
#: Columns of per_image.csv, in order.
PER_IMAGE_FIELDS = ("test_set", "arm", "seed", "image_id", "image", *PER_IMAGE_METRICS, *PER_IMAGE_COUNTS)
#: Columns of results.csv, in order (an interval "X_ci" becomes X_ci_low, X_ci_high).
RESULTS_CSV = ("arm", "test_set", "n_seeds", "n_images", "mean_iou", "iou_ci", "iou_seed_ci", "iou_per_seed", "std_iou",
               "mean_f1", "f1_ci", "std_f1", "es", "es_ci", "thresholded_jaccard", "thresholded_jaccard_ci", "mask_ap",
               "mask_ap_seed_ci", "lesion_recall", "fp_per_image")
#: Columns of comparisons.csv, domain_shift.csv and per_seed.csv, in order.
COMPARISON_FIELDS = ("test_set", "arm", "baseline", "metric", "n_images", "n_seeds", "n_seeds_baseline", "mean_a",
                     "mean_b", "mean_difference", "ci_low", "ci_high", "p_value", "p_holm", "statistic")
DOMAIN_FIELDS = ("arm", "test_set", "baseline", "mean_iou", "mean_difference", "ci_low", "ci_high", "p_value", "p_holm")
PER_SEED_FIELDS = ("arm", "test_set", "seed", "n_images", "mean_iou", "iou_ci", "mean_f1", "es", "thresholded_jaccard",
                   "mask_ap", "box_ap", "lesion_recall", "fp_per_image", "steps", "images_seen", "selected")


@dataclass(frozen=True)
class Stats:
    """How intervals are drawn: resamples, seed and confidence of every bootstrap."""

    n_bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE


def by_arm(runs: Sequence[RunInput]) -> dict[str, list[RunInput]]:
    """Runs grouped by arm, arms in order of first appearance, seeds ascending."""
    out: dict[str, list[RunInput]] = {}
    for r in runs:
        out.setdefault(r.arm, []).append(r)
    return {arm: sorted(items, key=lambda r: r.seed) for arm, items in out.items()}


def seed_averaged(runs: Sequence[RunInput], metric: str, what: str) -> dict[tuple[int, str], float]:
    """Per-image `metric` averaged over the runs' seeds (all seeds must cover the same images)."""
    try:
        return mean_over_seeds([r.evaluation for r in runs], metric)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def results_rows(test_set: str, runs: Sequence[RunInput], stats: Stats) -> list[dict[str, Any]]:
    """One row per arm on one test set: means over seeds, CIs over images (BCa) and, from
    MIN_SEEDS_FOR_T seeds on, across seeds (t)."""
    groups = by_arm(runs)
    aggs = arm_aggregates(((r.arm, r.seed, r.evaluation) for items in groups.values() for r in items), stats.confidence)
    rows = []
    for agg in aggs:
        items = groups[agg.arm]
        what = f"arm {agg.arm} on test set {test_set!r}"
        mean = {key: s.mean for key, s in agg.values.items()}
        seed_ci = {key: (s.ci_low, s.ci_high) for key, s in agg.values.items() if s.n_seeds >= MIN_SEEDS_FOR_T}

        row: dict[str, Any] = {
            "arm": agg.arm, "test_set": test_set, "n_seeds": len(agg.seeds), "n_images": agg.n_images,
            "mean_iou": mean.get("mean_iou"), "iou_seed_ci": seed_ci.get("mean_iou"),
            "iou_per_seed": [float(r.evaluation["mean_iou"]) for r in items],
            "std_iou": agg.std_iou, "mean_f1": mean.get("mean_f1"), "std_f1": agg.std_f1, "es": mean.get("es"),
            "thresholded_jaccard": mean.get("thresholded_jaccard"), "mask_ap": mean.get("mask_ap"),
            "mask_ap_seed_ci": seed_ci.get("mask_ap"), "lesion_recall": mean.get("lesion_recall"),
            "fp_per_image": mean.get("fp_per_image"),
        }
        for metric in IMAGE_CI_METRICS.values():
            per_image = seed_averaged(items, metric, what)
            values = np.array([per_image[k] for k in sorted(per_image)])
            ci = bootstrap_ci(values, stats.n_bootstrap, stats.seed, stats.confidence, "bca") if values.size else None
            row[f"{metric}_ci"] = ci
        rows.append(row)
    return rows


def comparison_rows(test_sets: Mapping[str, Sequence[RunInput]], baseline: str, stats: Stats,
                    metric: str = "iou", notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every arm against `baseline` on every test set where both were evaluated: paired
    difference of the seed-averaged per-image `metric` (BCa CI, Wilcoxon p), then Holm's
    adjustment over all of these comparisons together (``p_holm``)."""
    rows = []
    for label, runs in test_sets.items():
        groups = by_arm(runs)
        if baseline not in groups:
            if notes is not None and len(groups) > 1:
                notes.append(f"test set {label}: no paired comparisons (the baseline arm {baseline} was not evaluated on it)")
            continue
        base = seed_averaged(groups[baseline], metric, f"arm {baseline} on test set {label!r}")
        for arm, items in groups.items():
            if arm == baseline:
                continue
            _, va, vb = aligned(seed_averaged(items, metric, f"arm {arm} on test set {label!r}"), base)
            c = paired_comparison(va, vb, metric, stats.n_bootstrap, stats.seed, stats.confidence, method="bca")
            rows.append({"test_set": label, "arm": arm, "baseline": baseline, "n_seeds": len(items),
                         "n_seeds_baseline": len(groups[baseline]), **c.as_dict()})
    adjusted = holm_adjust(np.array([float(r["p_value"]) for r in rows]))
    for row, p in zip(rows, adjusted):
        row["p_holm"] = float(p)
    return rows


def domain_rows(results: Mapping[str, Sequence[Mapping[str, Any]]], comparisons: Sequence[Mapping[str, Any]],
                baseline: str) -> list[dict[str, Any]]:
    """In-domain vs out-of-domain: per arm, its mean IoU on every test set and its change
    against the baseline there (CI, Holm p). Long form: one row per arm × test set."""
    by_key = {(c["test_set"], c["arm"]): c for c in comparisons}
    arms = list(dict.fromkeys(r["arm"] for rows in results.values() for r in rows))
    out = []
    for arm in arms:
        for label, rows in results.items():
            row = next((r for r in rows if r["arm"] == arm), None)
            if row is None:
                continue
            c = by_key.get((label, arm))
            out.append({
                "arm": arm, "test_set": label, "baseline": baseline, "mean_iou": row["mean_iou"],
                "mean_difference": c["mean_difference"] if c else None,
                "ci_low": c["ci_low"] if c else None, "ci_high": c["ci_high"] if c else None,
                "p_value": c["p_value"] if c else None, "p_holm": c["p_holm"] if c else None,
            })
    return out


def per_seed_rows(runs: Sequence[RunInput], training: Mapping[tuple[str, int], TrainingSummary]) -> list[dict[str, Any]]:
    """One row per arm × seed × test set: that run's aggregates (the evaluation's own
    percentile CI over images) and its training budget."""
    rows = []
    for r in runs:
        ev = r.evaluation
        iou = ev.get("metrics", {}).get("iou", {})
        t = training.get((r.arm, r.seed))
        rows.append({
            "test_set": r.test_set, "arm": r.arm, "seed": r.seed, "n_images": int(ev["n_images"]),
            "mean_iou": ev.get("mean_iou"), "iou_ci": (iou["ci_low"], iou["ci_high"]) if "ci_low" in iou else None,
            **{key: ev.get(key) for key in SEED_AGGREGATES if key != "mean_iou"},
            "steps": t.steps if t else None, "images_seen": t.images_seen if t else None,
            "selected": t.selected if t else None,
        })
    return rows


def per_image_rows(runs: Sequence[RunInput]) -> list[dict[str, Any]]:
    """Every per-image score of every run (images × arms × seeds × test sets rows), so that
    anyone can redo the statistics."""
    rows = []
    for r in runs:
        for row in r.evaluation["per_image"]:
            rows.append({"test_set": r.test_set, "arm": r.arm, "seed": r.seed, "image_id": int(row["image_id"]),
                         "image": str(row["image"]), **{k: row.get(k) for k in PER_IMAGE_METRICS},
                         **{k: row.get(k) for k in PER_IMAGE_COUNTS}})
    return rows
