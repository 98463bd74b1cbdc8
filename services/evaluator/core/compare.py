"""Comparison of arms: paired per-image differences between two evaluations of the same test
images, and each arm's aggregates across seeds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    check_metric,
)
from services.evaluator.core.stats import (
    PairedComparison,
    SeedSummary,
    across_seeds,
    paired_comparison,
)

# Aggregates summarised across seeds (keys of the evaluation JSON) and the per-image metric
# whose bootstrap CI stands in when an arm has a single seed.
SEED_AGGREGATES = {
    "mean_iou": "iou",
    "mean_f1": "f1",
    "es": "es",
    "thresholded_jaccard": "thresholded_jaccard",
    "mask_ap": None,
    "box_ap": None,
    "lesion_recall": None,
    "fp_per_image": None,
}


def per_image_values(evaluation: Mapping[str, Any], metric: str, what: str = "evaluation") -> dict[tuple[int, str], float]:
    """(image id, image name) → value of one per-image metric."""
    rows = evaluation.get("per_image")
    if not isinstance(rows, list):
        raise InvalidArgument(f"{what}: not an evaluation JSON (no per_image list)")
    out = {}
    for row in rows:
        try:
            out[(int(row["image_id"]), str(row["image"]))] = float(row[metric])
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(f"{what}: per-image row {str(row)[:80]} lacks image_id, image or {metric}") from None
    return out


def aligned(a: Mapping[tuple[int, str], float], b: Mapping[tuple[int, str], float]) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
    """Values of two arms on the same images, in a common order; different image sets are an error."""
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        example = (only_a or only_b)[0][1]
        raise InvalidArgument(
            f"the evaluations cover different test images ({len(only_a)} only in a, {len(only_b)} only in b, "
            f"e.g. {example!r}); a paired comparison needs the same images"
        )
    keys = sorted(a)
    return keys, np.array([a[k] for k in keys]), np.array([b[k] for k in keys])


def compare_evaluations(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    metric: str = "iou",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> PairedComparison:
    """Paired difference a − b of a per-image metric: bootstrap CI and Wilcoxon signed-rank p."""
    metric = check_metric(metric)
    _, va, vb = aligned(per_image_values(a, metric, "evaluation a"), per_image_values(b, metric, "evaluation b"))
    return paired_comparison(va, vb, metric, n_bootstrap, seed, confidence)


def mean_over_seeds(evaluations: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[int, str], float]:
    """Per-image metric averaged over an arm's seeds (all seeds must cover the same images)."""
    maps = [per_image_values(e, metric) for e in evaluations]
    keys = set(maps[0])
    for m in maps[1:]:
        if set(m) != keys:
            raise InvalidArgument("the seeds of one arm were evaluated on different test images")
    return {k: float(np.mean([m[k] for m in maps])) for k in keys}


@dataclass(frozen=True)
class ArmAggregate:
    arm: str
    seeds: list[int]
    n_images: int
    values: dict[str, SeedSummary]  # aggregate key → mean ± CI across seeds
    std_iou: float  # per-image std, averaged over seeds (the thesis' "std IoU")
    std_f1: float


def arm_aggregates(runs: Iterable[tuple[str, int, Mapping[str, Any]]], confidence: float = DEFAULT_CONFIDENCE) -> list[ArmAggregate]:
    """Each arm's aggregates across its seeds; arms in order of first appearance."""
    by_arm: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for arm, seed, ev in runs:
        by_arm.setdefault(arm, []).append((seed, ev))
    out = []
    for arm, items in by_arm.items():
        evs = [ev for _, ev in items]
        values: dict[str, SeedSummary] = {}
        for key, metric in SEED_AGGREGATES.items():
            if any(ev.get(key) is None for ev in evs):
                continue
            xs = [ev[key] for ev in evs]
            single = None
            if metric is not None and len(evs) == 1:
                m = evs[0]["metrics"][metric]
                single = (m["ci_low"], m["ci_high"])
            bounds = (0.0, float("inf")) if key == "fp_per_image" else (0.0, 1.0)
            values[key] = across_seeds(xs, confidence, single, bounds)
        out.append(
            ArmAggregate(
                arm=arm,
                seeds=[s for s, _ in items],
                n_images=int(evs[0]["n_images"]),
                values=values,
                std_iou=float(np.mean([ev["std_iou"] for ev in evs])),
                std_f1=float(np.mean([ev["std_f1"] for ev in evs])),
            )
        )
    return out
