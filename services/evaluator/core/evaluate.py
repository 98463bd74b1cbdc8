"""Evaluation of one set of predictions against ground truth: per-image metrics and the
aggregates a paper needs, as one JSON-ready dict (the "evaluation JSON").

Per image, the union of predicted instances with score ≥ ``score_threshold`` is scored
against the union of truth instances (see :mod:`.metrics` for the conventions). Aggregates:
mean / std / median / bootstrap CI of IoU, F1, precision, recall; ES = (IoU + F1) / 2 as the
thesis defined it (kept for comparability — per image F1 = 2·IoU/(1+IoU), so ES adds no
information beyond IoU); thresholded Jaccard (ISIC: per-image IoU below 0.65 counts as 0);
COCO mask and box AP (all predictions, no score threshold); lesion-level recall at IoU 0.5
and false positives per image (predictions with score ≥ ``score_threshold``).

Evaluation JSON (``format`` = ``synthaug.evaluation/1``), main keys::

    n_images, mean_iou, std_iou, mean_f1, std_f1, es, thresholded_jaccard,
    mask_ap, mask_ap50, mask_ap75, box_ap, box_ap50, box_ap75, lesion_recall, fp_per_image,
    metrics: {iou|f1|precision|recall|es|thresholded_jaccard: {n, mean, std, median, ci_low, ci_high}},
    coco: {segm: {AP, AP50, ...}, bbox: {...}}, lesion: {...}, per_class: {...} (multi-class),
    images_without_prediction: [file names], unmatched_predictions: [...], warnings: [...],
    per_image: [{image, image_id, iou, f1, precision, recall, es, n_truth, n_pred, n_matched, n_fp, has_prediction}]
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import PER_IMAGE_METRICS, EvalConfig
from services.evaluator.core.coco import (
    GroundTruth,
    Predictions,
    coco_ap,
    intersection_area,
    match_instances,
    rle_area,
    union_rle,
)
from services.evaluator.core.metrics import scores_from_counts
from services.evaluator.core.stats import summarize_many

log = logging.getLogger(__name__)

FORMAT = "synthaug.evaluation/1"
#: The threshold assumed when the predictions do not record the one they were binarised at.
DEFAULT_MASK_THRESHOLD = 0.5

Progress = Callable[[float, str], None]


def _effective_mask_threshold(config: EvalConfig, preds: Predictions) -> tuple[float, list[str]]:
    recorded = preds.mask_threshold
    if config.mask_threshold is None:
        return (recorded if recorded is not None else DEFAULT_MASK_THRESHOLD), []
    if recorded is not None and abs(recorded - config.mask_threshold) > 1e-9:
        raise InvalidArgument(
            f"mask_threshold {config.mask_threshold} asked, but the predictions were binarised at "
            f"{recorded} by their producer; binary masks cannot be re-thresholded (predict again)"
        )
    return config.mask_threshold, []


def _pixel_counts(truth_insts, pred_insts) -> tuple[int, int, int]:
    gu = union_rle([i.rle for i in truth_insts])
    pu = union_rle([i.rle for i in pred_insts])
    tp = intersection_area(gu, pu)
    return tp, rle_area(pu) - tp, rle_area(gu) - tp


def evaluate(
    truth: GroundTruth,
    preds: Predictions,
    config: EvalConfig = EvalConfig(),
    progress: Progress | None = None,
    predictions_source: str = "",
) -> dict[str, Any]:
    """Score ``preds`` against ``truth``; returns the evaluation JSON (see module docstring)."""
    config.validate()
    mask_threshold, warnings = _effective_mask_threshold(config, preds)
    if preds.score_threshold is not None and preds.score_threshold > config.score_threshold + 1e-12:
        warnings.append(
            f"predictions were already filtered at score ≥ {preds.score_threshold} by their producer; "
            f"the score threshold {config.score_threshold} asked for here is effectively {preds.score_threshold}"
        )
    cat_ids = truth.category_ids
    multi = len(cat_ids) > 1
    n = len(truth.images)
    counts = np.zeros((n, 3), dtype=np.int64)
    class_counts = np.zeros((len(cat_ids), n, 3), dtype=np.int64) if multi else None
    match_rows = np.zeros((n, 4), dtype=np.int64)
    names: list[str] = []
    without: list[str] = []
    has_pred = np.ones(n, dtype=bool)
    step = max(1, n // 20)
    for i, rec in enumerate(truth.images):
        image_id = rec["id"]
        t_insts = truth.instances.get(image_id, [])
        all_preds = preds.instances.get(image_id, [])
        p_insts = [p for p in all_preds if p.score >= config.score_threshold]
        names.append(rec["file_name"])
        if (preds.missing is not None and image_id in preds.missing) or (preds.missing is None and not all_preds):
            without.append(rec["file_name"])
            has_pred[i] = False
        counts[i] = _pixel_counts(t_insts, p_insts)
        if class_counts is not None:
            for c, cid in enumerate(cat_ids):
                class_counts[c, i] = _pixel_counts(
                    [t for t in t_insts if t.category_id == cid], [p for p in p_insts if p.category_id == cid]
                )
        m = match_instances(t_insts, p_insts, config.lesion_iou)
        match_rows[i] = (m.n_truth, m.n_pred, m.n_matched, m.n_fp)
        if progress is not None and (i + 1) % step == 0:
            progress(0.8 * (i + 1) / n, f"scored {i + 1}/{n} images")

    scores = scores_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
    per = {
        "iou": scores.iou,
        "f1": scores.f1,
        "precision": scores.precision,
        "recall": scores.recall,
        "es": (scores.iou + scores.f1) / 2.0,
        "thresholded_jaccard": np.where(scores.iou >= config.jaccard_threshold, scores.iou, 0.0),
    }
    summaries = summarize_many(per, config.n_bootstrap, config.seed, config.confidence)

    n_truth, n_pred, n_matched, n_fp = (int(v) for v in match_rows.sum(axis=0))
    lesion = {
        "iou_threshold": config.lesion_iou,
        "n_truth": n_truth,
        "n_predictions": n_pred,
        "n_matched": n_matched,
        "n_false_positives": n_fp,
        "recall": (n_matched / n_truth) if n_truth else None,
        "fp_per_image": n_fp / n,
    }

    if progress is not None:
        progress(0.85, "COCO AP")
    coco = coco_ap(truth, preds) if config.coco_ap else {}

    per_class: dict[str, Any] = {}
    if class_counts is not None:
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in truth.categories}
        for c, cid in enumerate(cat_ids):
            s = scores_from_counts(class_counts[c, :, 0], class_counts[c, :, 1], class_counts[c, :, 2])
            cs = summarize_many({"iou": s.iou, "f1": s.f1}, config.n_bootstrap, config.seed, config.confidence)
            per_class[str(cid)] = {"name": names_by_id.get(cid, str(cid)), "metrics": {k: v.as_dict() for k, v in cs.items()}}

    per_image = []
    for i, rec in enumerate(truth.images):
        row: dict[str, Any] = {"image": names[i], "image_id": int(rec["id"])}
        row.update({k: float(per[k][i]) for k in PER_IMAGE_METRICS})
        row.update(
            {"n_truth": int(match_rows[i, 0]), "n_pred": int(match_rows[i, 1]), "n_matched": int(match_rows[i, 2]),
             "n_fp": int(match_rows[i, 3]), "has_prediction": bool(has_pred[i])}
        )
        if class_counts is not None:
            row["per_class"] = {}
            for c, cid in enumerate(cat_ids):
                s = scores_from_counts(*class_counts[c, i])
                row["per_class"][str(cid)] = {"iou": float(s.iou), "f1": float(s.f1)}
        per_image.append(row)

    if n >= 4 and len(without) > n / 2:
        warnings.append(
            f"{len(without)} of {n} truth images have no prediction at all: were the predictions made for this "
            "split of these images?"
        )
    if without:
        log.info("%d of %d truth images have no prediction (scored as empty predictions)", len(without), n)
    segm, bbox = coco.get("segm", {}), coco.get("bbox", {})
    out: dict[str, Any] = {
        "format": FORMAT,
        "truth": truth.source,
        "predictions": predictions_source,
        "n_images": n,
        "score_threshold": config.score_threshold,
        "mask_threshold": mask_threshold,
        "jaccard_threshold": config.jaccard_threshold,
        "n_bootstrap": config.n_bootstrap,
        "seed": config.seed,
        "confidence": config.confidence,
        "mean_iou": summaries["iou"].mean,
        "std_iou": summaries["iou"].std,
        "mean_f1": summaries["f1"].mean,
        "std_f1": summaries["f1"].std,
        "es": summaries["es"].mean,
        "thresholded_jaccard": summaries["thresholded_jaccard"].mean,
        "mask_ap": segm.get("AP"),
        "mask_ap50": segm.get("AP50"),
        "mask_ap75": segm.get("AP75"),
        "box_ap": bbox.get("AP"),
        "box_ap50": bbox.get("AP50"),
        "box_ap75": bbox.get("AP75"),
        "lesion_recall": lesion["recall"],
        "fp_per_image": lesion["fp_per_image"],
        "metrics": {k: v.as_dict() for k, v in summaries.items()},
        "coco": coco,
        "lesion": lesion,
        "categories": [dict(c) for c in truth.categories],
        "per_class": per_class,
        "images_without_prediction": without,
        "unmatched_predictions": list(preds.unmatched),
        "warnings": warnings,
        "per_image": per_image,
    }
    if progress is not None:
        progress(1.0, "evaluated")
    return out


def headline_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The figures worth a JobResult.metrics map / a log line (None values left out)."""
    keys = ("mean_iou", "std_iou", "mean_f1", "std_f1", "es", "thresholded_jaccard", "mask_ap", "mask_ap50",
            "mask_ap75", "box_ap", "box_ap50", "box_ap75", "lesion_recall", "fp_per_image")
    out = {k: float(evaluation[k]) for k in keys if evaluation.get(k) is not None}
    for name in ("iou", "f1", "es"):
        m = evaluation["metrics"][name]
        out[f"{name}_ci_low"] = float(m["ci_low"])
        out[f"{name}_ci_high"] = float(m["ci_high"])
    out["n_images"] = float(evaluation["n_images"])
    return out
