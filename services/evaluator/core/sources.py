"""Reading truth and predictions from files, so any model's output can be scored.

* **Mask folder**: one PNG per image, matched by file stem. A mask is an instance-id map:
  0 is background and every other value one instance (a binary {0,1} or {0,255} mask is
  therefore one instance). A trailing ``_segmentation`` or ``_mask`` in the stem is ignored,
  so ISIC's ``ISIC_0000000_segmentation.png`` matches a prediction ``ISIC_0000000.png``.
  Every instance belongs to category 1.
* **COCO instances JSON** (a synthaug ``dataset.json`` is one): truth, or predictions
  (annotations with an optional ``score``) matched to the truth by file-name stem.
* **COCO results JSON**: a list of results or the segmenter's wrapper object. Results name
  images by id, so they need a COCO truth with the same ids, or a wrapper carrying an
  ``images`` list ``[{"id", "file_name"}]`` to match by stem.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from services.common.datasets import Dataset
from services.common.errors import InvalidArgument, NotFound
from services.common.imageio import read_mask
from services.evaluator.core.coco import GroundTruth, Instance, Predictions, encode_masks, predictions_from_results, to_rle

MASK_SUFFIXES = (".png",)
STEM_SUFFIXES = ("_segmentation", "_mask")
DEFAULT_CATEGORY = {"id": 1, "name": "object", "supercategory": ""}


def match_stem(name: str) -> str:
    """The key a file is matched by: its stem without a trailing _segmentation/_mask."""
    stem = Path(name).stem
    for suffix in STEM_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """Instance-id map H×W → N×H×W bool, one instance per distinct non-zero value (ascending)."""
    if mask.ndim != 2:
        raise InvalidArgument(f"mask must be H×W, got shape {mask.shape}")
    ids = np.unique(mask)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros((0,) + mask.shape, dtype=bool)
    return mask[None, :, :] == ids[:, None, None]


def list_mask_folder(folder: Path) -> dict[str, Path]:
    """Stem → PNG path; two files with the same stem are an error."""
    if not folder.is_dir():
        raise NotFound(f"mask folder {folder} not found")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MASK_SUFFIXES or not path.is_file():
            continue
        key = match_stem(path.name)
        if key in out:
            raise InvalidArgument(f"{folder}: {out[key].name} and {path.name} both match image {key!r}")
        out[key] = path
    if not out:
        raise InvalidArgument(f"{folder}: no PNG masks")
    return out


def truth_from_mask_folder(folder: str | Path) -> GroundTruth:
    """Ground truth from a folder of instance-id / binary PNG masks (ids in stem order)."""
    folder = Path(folder)
    images, instances = [], {}
    for image_id, (key, path) in enumerate(list_mask_folder(folder).items(), start=1):
        mask = read_mask(path)
        masks = instances_from_mask(mask)
        h, w = mask.shape
        images.append({"id": image_id, "file_name": key, "height": int(h), "width": int(w), "path": str(path)})
        instances[image_id] = [Instance(rle, 1) for rle in encode_masks(masks)]
    return GroundTruth(images, instances, [dict(DEFAULT_CATEGORY)], str(folder))


def _truth_keys(truth: GroundTruth) -> dict[str, int]:
    keys: dict[str, int] = {}
    for rec in truth.images:
        key = match_stem(str(rec["file_name"]))
        if key in keys:
            raise InvalidArgument(f"truth images {keys[key]} and {rec['id']} both have the file stem {key!r}")
        keys[key] = rec["id"]
    return keys


def predictions_from_mask_folder(folder: str | Path, truth: GroundTruth) -> Predictions:
    """Predictions from a mask folder matched to truth images by stem. Every instance has
    score 1 and category 1. Truth images without a file are listed as missing; files
    without a truth image as unmatched."""
    folder = Path(folder)
    files = list_mask_folder(folder)
    keys = _truth_keys(truth)
    out: dict[int, list[Instance]] = {r["id"]: [] for r in truth.images}
    by_id = {r["id"]: r for r in truth.images}
    category = truth.category_ids[0]
    unmatched = sorted(k for k in files if k not in keys)
    missing = set()
    for key, image_id in keys.items():
        path = files.get(key)
        if path is None:
            missing.add(image_id)
            continue
        mask = read_mask(path)
        rec = by_id[image_id]
        if mask.shape != (rec["height"], rec["width"]):
            raise InvalidArgument(
                f"prediction {path.name}: size {mask.shape[1]}×{mask.shape[0]} differs from truth image "
                f"{rec['file_name']} ({rec['width']}×{rec['height']})"
            )
        out[image_id] = [Instance(rle, category) for rle in encode_masks(instances_from_mask(mask))]
    return Predictions(out, None, None, unmatched, missing)


def predictions_from_coco_instances(coco: Mapping[str, Any], truth: GroundTruth, source: str) -> Predictions:
    """Predictions stored as a COCO instances JSON: matched to truth images by file stem."""
    keys = _truth_keys(truth)
    id_map: dict[int, int] = {}
    for rec in coco.get("images", []):
        key = match_stem(str(rec.get("file_name", "")))
        if key in keys:
            id_map[int(rec["id"])] = keys[key]
    results = [dict(a) for a in coco.get("annotations", [])]
    preds = predictions_from_results(results, truth, source, id_map)
    present = set(id_map.values())
    preds.missing = {r["id"] for r in truth.images if r["id"] not in present}
    return preds


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{path}: not valid JSON ({exc})") from None


def is_coco_instances(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("images"), list) and isinstance(obj.get("annotations"), list)


def load_truth(path: str | Path, split: str = "") -> GroundTruth:
    """Truth from a mask folder or a COCO instances JSON file (e.g. a dataset.json)."""
    path = Path(path)
    if path.is_dir():
        if split:
            raise InvalidArgument(f"--split {split!r} applies to COCO/dataset truth, not to the mask folder {path}")
        return truth_from_mask_folder(path)
    obj = load_json(path)
    if not is_coco_instances(obj):
        raise InvalidArgument(f"{path}: truth must be a mask folder or a COCO instances JSON (images, annotations, categories)")
    return GroundTruth.from_coco(obj, split, str(path))


def load_predictions(path: str | Path, truth: GroundTruth) -> Predictions:
    """Predictions from a mask folder, a COCO results JSON (list or wrapper) or a COCO
    instances JSON."""
    path = Path(path)
    if path.is_dir():
        return predictions_from_mask_folder(path, truth)
    obj = load_json(path)
    if is_coco_instances(obj):
        return predictions_from_coco_instances(obj, truth, str(path))
    truth_is_folder = all("path" in r for r in truth.images) and not truth.source.endswith(".json")
    if isinstance(obj, Mapping) and isinstance(obj.get("images"), list) and isinstance(obj.get("results"), list):
        keys = _truth_keys(truth)
        id_map = {int(r["id"]): keys[match_stem(str(r.get("file_name", "")))]
                  for r in obj["images"] if match_stem(str(r.get("file_name", ""))) in keys}
        return predictions_from_results(obj, truth, str(path), id_map)
    if truth_is_folder:
        raise InvalidArgument(
            f"{path}: COCO results name images by id; score them against a COCO/dataset truth with the same ids, "
            "or add an 'images' list [{id, file_name}] to the results object"
        )
    return predictions_from_results(obj, truth, str(path))


__all__ = [
    "instances_from_mask",
    "load_predictions",
    "load_truth",
    "match_stem",
    "predictions_from_mask_folder",
    "truth_from_mask_folder",
    "to_rle",
    "truth_from_dataset",
]


# --- synthaug datasets (through services.common.datasets) -----------------------------------


def truth_from_dataset(dataset: Dataset, split: str = "") -> GroundTruth:
    """Ground truth of one split of a synthaug dataset (its manifest is COCO instances)."""
    records = dataset.image_records(split)  # validates the split name
    if not records:
        raise InvalidArgument(f"dataset {dataset.id} has no images" + (f" in split {split!r}" if split else ""))
    return GroundTruth.from_coco(dataset.manifest, split, f"dataset {dataset.name or dataset.id}")
