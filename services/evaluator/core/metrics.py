"""Per-image pixel metrics: the one implementation of IoU / F1 in synthaug.

Conventions (tested in tests/unit/test_evaluator_metrics.py, relied on by the segmenter):

* An image is scored by the **union of predicted instances** (those with score ≥ the score
  threshold, each binarised at probability ≥ the mask threshold) against the **union of
  ground-truth instances**. Overlapping instances therefore count each pixel once.
* With tp, fp, fn the pixel counts of the two binary masks::

      IoU       = tp / (tp + fp + fn)       (Jaccard)
      F1        = 2tp / (2tp + fp + fn)     (Dice)
      precision = tp / (tp + fp)
      recall    = tp / (tp + fn)

* A ratio whose denominator is zero is never computed by division: it is **1 when both
  masks are empty** (nothing to find, nothing predicted: a perfect answer) and **0
  otherwise** (empty prediction on a lesion, or a prediction on an empty image). So empty
  vs empty scores 1 on every metric; empty vs non-empty scores 0 on every metric.
* Results are float64.

Everything is vectorised over a batch axis so that thousands of 256 px images per second
are scored on one core.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class PixelScores:
    """Pixel metrics of one image (0-d arrays) or a batch (shape (B,)), all float64."""

    iou: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"iou": self.iou, "f1": self.f1, "precision": self.precision, "recall": self.recall}


def binarize(masks: np.ndarray, mask_threshold: float = 0.5) -> np.ndarray:
    """Binary masks from bool (as is), float probabilities (≥ mask_threshold) or integer
    masks (non-zero: {0,1} or {0,255} binary masks)."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if np.issubdtype(masks.dtype, np.floating):
        return masks >= mask_threshold
    if np.issubdtype(masks.dtype, np.integer):
        return masks != 0
    raise InvalidArgument(f"masks must be bool, float or integer arrays, got dtype {masks.dtype}")


def union_of_instances(
    masks: np.ndarray,
    scores: np.ndarray | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Union (H×W bool) of the instances whose score is ≥ ``score_threshold``.

    ``masks`` is N×H×W: bool, float probabilities (binarised at ≥ ``mask_threshold``) or
    integer binary masks (non-zero). ``scores`` (N,) may be None: every instance counts
    (ground truth). N = 0 gives an all-False H×W mask, never an error.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InvalidArgument(f"masks must be N×H×W, got shape {masks.shape}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != masks.shape[0]:
            raise InvalidArgument(
                f"scores has {scores.shape[0]} entries for {masks.shape[0]} masks"
            )
        masks = masks[scores >= score_threshold]
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], dtype=bool)
    return np.any(binarize(masks, mask_threshold), axis=0)


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts (tp, fp, fn) as int64 over the last two axes of bool masks."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise InvalidArgument(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if pred.ndim not in (2, 3):
        raise InvalidArgument(f"masks must be H×W or B×H×W, got shape {pred.shape}")
    pred = binarize(pred)
    truth = binarize(truth)
    lead = pred.shape[:-2]
    p = pred.reshape(lead + (-1,))
    t = truth.reshape(lead + (-1,))
    # Summing bool arrays along the last axis is the fastest plain-numpy popcount.
    tp = np.logical_and(p, t).sum(axis=-1, dtype=np.int64)
    n_pred = p.sum(axis=-1, dtype=np.int64)
    n_truth = t.sum(axis=-1, dtype=np.int64)
    return tp, n_pred - tp, n_truth - tp


def safe_ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    """num/den where den > 0; 1 where both masks are empty; 0 elsewhere. No division by 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.where(both_empty, 1.0, 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> PixelScores:
    """PixelScores from pixel counts, with the conventions of this module."""
    tp = np.asarray(tp, dtype=np.int64)
    fp = np.asarray(fp, dtype=np.int64)
    fn = np.asarray(fn, dtype=np.int64)
    both_empty = (tp + fp + fn) == 0
    return PixelScores(
        iou=safe_ratio(tp, tp + fp + fn, both_empty),
        f1=safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        precision=safe_ratio(tp, tp + fp, both_empty),
        recall=safe_ratio(tp, tp + fn, both_empty),
    )


def pixel_scores(pred: np.ndarray, truth: np.ndarray) -> PixelScores:
    """IoU, F1 (Dice), precision and recall of binary masks.

    ``pred`` and ``truth`` are H×W (→ 0-d results) or B×H×W (→ (B,) results) of the same
    shape; bool, or integer masks read as non-zero. Conventions: see the module docstring
    (empty vs empty = 1, empty vs non-empty = 0, never a division by zero).
    """
    return scores_from_counts(*confusion_counts(pred, truth))


def per_class_pixel_scores(
    pred_labels: np.ndarray, truth_labels: np.ndarray, class_ids: list[int] | np.ndarray
) -> dict[int, PixelScores]:
    """Per-class pixel scores of label maps (H×W or B×H×W integer class ids, 0 = background).

    For each class c, pred == c is scored against truth == c with the conventions above, so
    a class absent from both images scores 1 on that image.
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise InvalidArgument(
            f"prediction shape {pred_labels.shape} differs from truth shape {truth_labels.shape}"
        )
    return {int(c): pixel_scores(pred_labels == c, truth_labels == c) for c in class_ids}


def class_union(
    masks: np.ndarray,
    labels: np.ndarray,
    class_id: int,
    scores: np.ndarray | None = None,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Union of the instances of one class (labels == class_id): the per-class variant of
    :func:`union_of_instances`."""
    masks = np.asarray(masks)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != masks.shape[0]:
        raise InvalidArgument(f"labels has {labels.shape[0]} entries for {masks.shape[0]} masks")
    keep = labels == class_id
    return union_of_instances(
        masks[keep], None if scores is None else np.asarray(scores).reshape(-1)[keep],
        score_threshold, mask_threshold,
    )
