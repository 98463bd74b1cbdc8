"""COCO structures: ground truth and predictions as RLE, mask/box AP through pycocotools,
and lesion-level (instance) matching.

Predictions are a **COCO results list** — ``[{"image_id", "category_id", "segmentation":
{"size": [h, w], "counts"}, "score", "bbox"?}]`` — or the segmenter's wrapper object
``{"results": [...], "export_threshold" (or "score_threshold"): s, "mask_threshold": m, "images"?: [...]}``.
Masks in results are already binary (the segmenter binarised them at ``mask_threshold``).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from services.common.errors import InvalidArgument

RLE = dict[str, Any]  # pycocotools RLE: {"size": [h, w], "counts": bytes}


# --- RLE helpers ---------------------------------------------------------------------------


def to_rle(segmentation: Any, height: int, width: int, what: str) -> RLE:
    """pycocotools RLE (bytes counts) of a COCO segmentation: compressed RLE (str/bytes
    counts), uncompressed RLE (list counts) or polygons. ``what`` names the item in errors."""
    if isinstance(segmentation, Mapping):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
            raise InvalidArgument(f"{what}: segmentation RLE needs 'size' [h, w] and 'counts'")
        h, w = int(size[0]), int(size[1])
        if (h, w) != (height, width):
            raise InvalidArgument(f"{what}: mask size {w}×{h} differs from image size {width}×{height}")
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise InvalidArgument(f"{what}: RLE counts must be a string or a list of integers")
        return {"size": [h, w], "counts": counts}
    if isinstance(segmentation, list) and segmentation:
        try:
            polys = [list(map(float, p)) for p in segmentation]
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what}: polygons must be lists of numbers") from None
        if any(len(p) < 6 or len(p) % 2 for p in polys):
            raise InvalidArgument(f"{what}: each polygon needs ≥ 3 (x, y) points")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    raise InvalidArgument(f"{what}: segmentation must be an RLE object or a list of polygons")


def rle_json(rle: RLE) -> dict[str, Any]:
    """JSON-ready RLE (counts as str)."""
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def union_rle(rles: Sequence[RLE]) -> RLE | None:
    """Union of RLEs; None for no RLE (an empty mask)."""
    if not rles:
        return None
    if len(rles) == 1:
        return rles[0]
    return mask_utils.merge(list(rles), intersect=False)


def rle_area(rle: RLE | None) -> int:
    return 0 if rle is None else int(mask_utils.area(rle))


def intersection_area(a: RLE | None, b: RLE | None) -> int:
    if a is None or b is None:
        return 0
    return int(mask_utils.area(mask_utils.merge([a, b], intersect=True)))


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """N×H×W bool → RLEs (bytes counts)."""
    if masks.shape[0] == 0:
        return []
    return list(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))))


def decode_union(rles: Sequence[RLE], height: int, width: int) -> np.ndarray:
    """H×W bool union of RLEs (for drawing)."""
    u = union_rle(rles)
    if u is None:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(u).astype(bool)


# --- ground truth --------------------------------------------------------------------------


@dataclass
class Instance:
    """One instance (truth annotation or prediction) of one image."""

    rle: RLE
    category_id: int
    score: float = 1.0
    iscrowd: bool = False
    bbox: list[float] | None = None


@dataclass
class GroundTruth:
    """Test images and their instances, ready for scoring.

    ``images``: ``{"id", "file_name", "height", "width"}`` records (extra keys kept);
    ``instances[image_id]``: the image's truth instances; ``categories``: COCO categories.
    """

    images: list[dict[str, Any]]
    instances: dict[int, list[Instance]]
    categories: list[dict[str, Any]]
    source: str = ""

    @classmethod
    def from_coco(cls, coco: Mapping[str, Any], split: str = "", source: str = "") -> GroundTruth:
        """From a COCO instances JSON (a synthaug dataset manifest is one); ``split`` selects
        images whose ``split`` field equals it ('' = all)."""
        for key in ("images", "annotations", "categories"):
            if not isinstance(coco.get(key), list):
                raise InvalidArgument(f"{source or 'truth'}: COCO instances JSON needs a '{key}' list")
        images = []
        seen: set[int] = set()
        for rec in coco["images"]:
            try:
                image_id, h, w = int(rec["id"]), int(rec["height"]), int(rec["width"])
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument(f"{source or 'truth'}: image record {str(rec)[:80]} needs integer id, height, width") from None
            if image_id in seen:
                raise InvalidArgument(f"{source or 'truth'}: image id {image_id} appears twice")
            seen.add(image_id)
            if split and rec.get("split", "") != split:
                continue
            images.append({**rec, "id": image_id, "height": h, "width": w, "file_name": str(rec.get("file_name", image_id))})
        if not images:
            raise InvalidArgument(f"{source or 'truth'}: no images" + (f" in split {split!r}" if split else ""))
        by_id = {r["id"]: r for r in images}
        instances: dict[int, list[Instance]] = {r["id"]: [] for r in images}
        for ann in coco["annotations"]:
            image_id = int(ann.get("image_id", -1))
            rec = by_id.get(image_id)
            if rec is None:
                if image_id not in seen:
                    raise InvalidArgument(f"{source or 'truth'}: annotation {ann.get('id')} names unknown image id {image_id}")
                continue
            rle = to_rle(ann.get("segmentation"), rec["height"], rec["width"], f"truth annotation {ann.get('id')} of image {rec['file_name']}")
            instances[image_id].append(Instance(rle, int(ann.get("category_id", 1)), 1.0, bool(ann.get("iscrowd", 0)), ann.get("bbox")))
        categories = [dict(c) for c in coco["categories"]] or [{"id": 1, "name": "object"}]
        return cls(sorted(images, key=lambda r: r["id"]), instances, categories, source)

    @property
    def category_ids(self) -> list[int]:
        return sorted(int(c["id"]) for c in self.categories)

    def record(self, image_id: int) -> dict[str, Any]:
        for r in self.images:
            if r["id"] == image_id:
                return r
        raise InvalidArgument(f"no truth image with id {image_id}")


# --- predictions ---------------------------------------------------------------------------


@dataclass
class Predictions:
    """Predicted instances per truth image id, plus what could not be matched."""

    instances: dict[int, list[Instance]]
    score_threshold: float | None = None  # recorded by the producer, if any
    mask_threshold: float | None = None
    unmatched: list[str] = field(default_factory=list)  # predictions naming no truth image
    # Truth image ids for which the source had no prediction at all (a mask folder without
    # the file); None when the source cannot tell (COCO results omit images without
    # detections), in which case images without any result are reported instead.
    missing: set[int] | None = None

    def count(self) -> int:
        return sum(len(v) for v in self.instances.values())


def split_results_object(obj: Any, source: str = "predictions") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(results list, metadata) from a COCO results list or the segmenter's wrapper object."""
    if isinstance(obj, list):
        return obj, {}
    if isinstance(obj, Mapping) and isinstance(obj.get("results"), list):
        meta = {k: v for k, v in obj.items() if k != "results"}
        return obj["results"], meta
    raise InvalidArgument(f"{source}: expected a COCO results list or an object with a 'results' list")


def _threshold(meta: Mapping[str, Any], key: str, source: str) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{source}: '{key}' must be a number") from None


def predictions_from_results(
    obj: Any,
    truth: GroundTruth,
    source: str = "predictions",
    image_id_map: Mapping[int, int] | None = None,
) -> Predictions:
    """Predictions from COCO results (list or wrapper). Each result's ``image_id`` names a
    truth image (through ``image_id_map`` when the ids are foreign); results for images not
    in ``truth`` are listed in ``unmatched`` and otherwise ignored."""
    results, meta = split_results_object(obj, source)
    by_id = {r["id"]: r for r in truth.images}
    out: dict[int, list[Instance]] = {r["id"]: [] for r in truth.images}
    unmatched: set[str] = set()
    for i, res in enumerate(results):
        what = f"{source}: result {i}"
        if not isinstance(res, Mapping):
            raise InvalidArgument(f"{what}: must be an object")
        try:
            raw_id = int(res["image_id"])
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(f"{what}: needs an integer 'image_id'") from None
        image_id = image_id_map.get(raw_id, -1) if image_id_map is not None else raw_id
        rec = by_id.get(image_id)
        if rec is None:
            unmatched.add(str(raw_id))
            continue
        score = res.get("score", 1.0)
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what}: 'score' must be a number") from None
        if not math.isfinite(score):
            raise InvalidArgument(f"{what}: 'score' must be finite")
        if "segmentation" not in res:
            raise InvalidArgument(f"{what}: needs a 'segmentation' (mask results)")
        rle = to_rle(res["segmentation"], rec["height"], rec["width"], f"prediction for image {rec['file_name']} (result {i})")
        out[image_id].append(Instance(rle, int(res.get("category_id", 1)), score, False, res.get("bbox")))
    # The segmenter records the score it exported from as "export_threshold"; other producers
    # may say "score_threshold". Either is the lowest score present, which AP must know.
    exported = _threshold(meta, "export_threshold", source)
    if exported is None:
        exported = _threshold(meta, "score_threshold", source)
    return Predictions(out, exported, _threshold(meta, "mask_threshold", source), sorted(unmatched))


# --- instance matching ---------------------------------------------------------------------


@dataclass(frozen=True)
class MatchCounts:
    n_truth: int  # non-crowd truth instances
    n_pred: int  # predictions considered (score ≥ threshold)
    n_matched: int  # truth instances matched by a prediction with IoU ≥ iou_threshold
    n_fp: int  # predictions matching no truth instance (those on crowd regions excluded)


def match_instances(
    truth: Sequence[Instance], preds: Sequence[Instance], iou_threshold: float = 0.5
) -> MatchCounts:
    """Greedy COCO-style matching within each category: predictions by descending score
    each take the best still-unmatched truth instance with IoU ≥ ``iou_threshold``; a
    prediction covering a crowd region (crowd IoU ≥ threshold) is neither TP nor FP."""
    n_truth = sum(1 for t in truth if not t.iscrowd)
    n_matched = n_fp = 0
    for cat in sorted({p.category_id for p in preds} | {t.category_id for t in truth}):
        gts = [t for t in truth if t.category_id == cat]
        dts = sorted((p for p in preds if p.category_id == cat), key=lambda p: -p.score)
        if not dts:
            continue
        if not gts:
            n_fp += len(dts)
            continue
        crowd = [int(g.iscrowd) for g in gts]
        ious = np.asarray(mask_utils.iou([d.rle for d in dts], [g.rle for g in gts], crowd)).reshape(len(dts), len(gts))
        crowd_arr = np.array(crowd, dtype=bool)
        taken = np.zeros(len(gts), dtype=bool)
        for d in range(len(dts)):
            candidates = np.where(~crowd_arr & ~taken, ious[d], -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] >= iou_threshold:
                taken[best] = True
                n_matched += 1
            elif crowd_arr.any() and ious[d][crowd_arr].max() >= iou_threshold:
                continue
            else:
                n_fp += 1
    return MatchCounts(n_truth, len(preds), n_matched, n_fp)


# --- COCO AP -------------------------------------------------------------------------------

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_ap(truth: GroundTruth, preds: Predictions) -> dict[str, dict[str, float | None]]:
    """Mask ("segm") and box ("bbox") AP, AP50, AP75 (and the rest of COCO's 12 figures)
    through pycocotools, over every prediction (AP integrates over score thresholds, so no
    score threshold is applied). A figure COCO cannot compute (no truth) is None.

    As in detectron2, mask AP uses mask areas for the size ranges (the bbox is dropped from
    results for the segm evaluation).
    """
    images = [{"id": r["id"], "height": r["height"], "width": r["width"], "file_name": r["file_name"]} for r in truth.images]
    anns: list[dict[str, Any]] = []
    for image_id, insts in truth.instances.items():
        for inst in insts:
            x, y, w, h = (float(v) for v in mask_utils.toBbox(inst.rle))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": inst.category_id,
                         "segmentation": inst.rle, "area": float(mask_utils.area(inst.rle)),
                         "bbox": [x, y, w, h], "iscrowd": int(inst.iscrowd)})
    segm_res, bbox_res = [], []
    for image_id, insts in preds.instances.items():
        for inst in insts:
            segm_res.append({"image_id": image_id, "category_id": inst.category_id, "segmentation": inst.rle, "score": inst.score})
            box = inst.bbox if inst.bbox is not None and len(inst.bbox) == 4 else [float(v) for v in mask_utils.toBbox(inst.rle)]
            bbox_res.append({"image_id": image_id, "category_id": inst.category_id, "bbox": [float(v) for v in box], "score": inst.score})
    out: dict[str, dict[str, float | None]] = {}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [dict(c) for c in truth.categories]}
        gt.createIndex()
        for iou_type, res in (("segm", segm_res), ("bbox", bbox_res)):
            if not anns:
                out[iou_type] = {k: None for k in AP_KEYS}
                continue
            if not res:
                out[iou_type] = {k: 0.0 for k in AP_KEYS}
                continue
            dt = gt.loadRes(res)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = [r["id"] for r in images]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, ev.stats)}
    return out
