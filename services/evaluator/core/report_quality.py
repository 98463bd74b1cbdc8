"""The report's "Synthetic data quality" section, as rows of plain values: one quality JSON
(quality.py, format ``synthaug.quality/1``) per feature space, checked; its rows flattened
for the tables and quality.csv; and the points of the gain-against-distance figure (each
arm's paired IoU change against the baseline, with its CI, at its source's FD vs test)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.core.features import check_feature_space
from services.evaluator.core.quality import (
    FIDELITY_QUANTILES,
    FLOOR,
    FORMAT,
    RATIO_QUANTILES,
    SET_METRICS,
    quantile_key,
)
from services.evaluator.core.report_inputs import RunInput

#: The note shown when no quality result is in the Inception feature space.
NO_INCEPTION = "no Inception weights supplied; task-aware segmenter features only"
#: Columns of quality.csv, in order: one row per feature space × row (floor and sources).
QUALITY_FIELDS = (
    "feature_space", "label", "kind", "dataset", "n_images", "sample_size",
    *(f"{m}_{vs}" for vs in ("test", "train") for m in SET_METRICS),
    "near_copy_threshold", "near_copy_share", "near_copies", "memorisation_images",
    *(f"ratio_{quantile_key(q)}" for q in RATIO_QUANTILES),
    "fidelity_images", "fidelity_mean_iou", "fidelity_std_iou", *(f"fidelity_{quantile_key(q)}" for q in FIDELITY_QUANTILES),
)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{what} must be a number, got {value!r}")
    return float(value)


def parse_quality(doc: Any, what: str = "quality") -> dict[str, Any]:
    """A quality JSON, checked for what the report reads (errors name `what` and the item)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidArgument(f"{what}: format must be {FORMAT!r} (a quality JSON, outputs['quality'] of SubmitQuality)")
    check_feature_space(str(doc.get("feature_space")), f"{what}.feature_space")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or rows[0].get("label") != FLOOR:
        raise InvalidArgument(f"{what}.rows must start with the {FLOOR!r} row")
    for i, row in enumerate(rows):
        where = f"{what}.rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("label"), str):
            raise InvalidArgument(f"{where} needs a label")
        for vs in ("vs_test", "vs_train"):
            values = row.get(vs)
            if not isinstance(values, dict):
                raise InvalidArgument(f"{where}.{vs} must be an object")
            for m in SET_METRICS:
                _number(values.get(m), f"{where}.{vs}.{m}")
        if not isinstance(row.get("memorisation"), dict) or not isinstance(row.get("closest_pairs", []), list):
            raise InvalidArgument(f"{where}: memorisation must be an object and closest_pairs a list")
        _number(row["memorisation"].get("near_copy_share"), f"{where}.memorisation.near_copy_share")
    labels = [r["label"] for r in rows]
    if len(set(labels)) != len(labels):
        raise InvalidArgument(f"{what}.rows: a label appears twice")
    _number(doc.get("sample_size"), f"{what}.sample_size")
    _number(doc.get("near_copy_threshold"), f"{what}.near_copy_threshold")
    return doc


def check_quality(docs: Sequence[Mapping[str, Any]], runs: Sequence[RunInput]) -> None:
    """At most one quality result per feature space; every run's quality_source names a
    source of one of them."""
    spaces = [d["feature_space"] for d in docs]
    for space in spaces:
        if spaces.count(space) > 1:
            raise InvalidArgument(f"quality: feature space {space!r} appears twice (one quality result per feature space)")
    sources = {r["label"] for d in docs for r in d["rows"][1:]}
    for r in runs:
        if r.quality_source and r.quality_source not in sources:
            raise InvalidArgument(f"run {r.arm} seed {r.seed}: quality_source {r.quality_source!r} is not a source of the "
                                  f"quality results ({', '.join(sorted(sources)) or 'none given'})")


def quality_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per floor/source of a quality JSON (numbers as numbers; quality.csv)."""
    out = []
    for row in doc["rows"]:
        mem = row["memorisation"]
        fid = row.get("mask_fidelity") or {}
        flat: dict[str, Any] = {
            "feature_space": doc["feature_space"], "label": row["label"], "kind": row.get("kind", ""),
            "dataset": row.get("dataset", ""), "n_images": row.get("n_images"), "sample_size": doc["sample_size"],
            "near_copy_threshold": doc["near_copy_threshold"], "near_copy_share": mem.get("near_copy_share"),
            "near_copies": mem.get("near_copies"), "memorisation_images": mem.get("n_images"),
            "fidelity_images": fid.get("n_images"), "fidelity_mean_iou": fid.get("mean_iou"),
            "fidelity_std_iou": fid.get("std_iou"),
        }
        for vs in ("test", "train"):
            for m in SET_METRICS:
                flat[f"{m}_{vs}"] = row[f"vs_{vs}"][m]
        for q in RATIO_QUANTILES:
            flat[f"ratio_{quantile_key(q)}"] = (mem.get("ratio_quantiles") or {}).get(quantile_key(q))
        for q in FIDELITY_QUANTILES:
            flat[f"fidelity_{quantile_key(q)}"] = (fid.get("quantiles") or {}).get(quantile_key(q))
        # What the page shows in one cell.
        flat["kid_test_text"] = _kid_text(flat["kid_mean_test"], flat["kid_std_test"])
        flat["kid_train_text"] = _kid_text(flat["kid_mean_train"], flat["kid_std_train"])
        flat["row"] = f"{row['label']} (floor)" if row.get("kind") == "floor" else row["label"]
        flat["fidelity_text"] = (f"{fid['mean_iou']:.3f} [{fid['quantiles']['q25']:.2f}, {fid['quantiles']['q75']:.2f}]"
                                 if fid else "")
        out.append(flat)
    return out


def _kid_text(mean: float, std: float) -> str:
    """KID ×10³ with its std over subsets, the way it is usually printed."""
    return f"{mean * 1e3:.2f} ± {std * 1e3:.2f}"


@dataclass(frozen=True)
class GainPoint:
    """One arm on one test set: its paired IoU change against the baseline (with CI) at the
    FD vs test of the source(s) its seeds trained on (mean, and range over seeds' sources)."""

    arm: str
    generator: str
    test_set: str
    fd: float
    fd_low: float
    fd_high: float
    gain: float
    ci_low: float
    ci_high: float
    sources: tuple[str, ...]


def gain_points(doc: Mapping[str, Any], runs: Sequence[RunInput], comparisons: Sequence[Mapping[str, Any]]) -> list[GainPoint]:
    """The points of the gain-against-distance figure in one feature space: every compared
    arm whose runs name quality sources of `doc` (comparisons: report_rows.comparison_rows)."""
    fd = {r["label"]: float(r["vs_test"]["fd"]) for r in doc["rows"][1:]}
    points = []
    for c in comparisons:
        items = [r for r in runs if r.arm == c["arm"] and r.test_set == c["test_set"]]
        sources = tuple(sorted({r.quality_source for r in items if r.quality_source in fd}))
        if not sources:
            continue
        values = np.array([fd[s] for s in sources])
        points.append(GainPoint(c["arm"], items[0].generator, c["test_set"], float(values.mean()), float(values.min()),
                                float(values.max()), float(c["mean_difference"]), float(c["ci_low"]), float(c["ci_high"]),
                                sources))
    return points
