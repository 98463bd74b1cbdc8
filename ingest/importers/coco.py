"""Import a COCO instances JSON + image folder (Supervisely, CVAT, Label Studio exports).

Every annotation becomes one instance: all of its polygons together (objects split by an
occluder are one annotation with several polygons), or its RLE (compressed string counts or
uncompressed integer counts). `iscrowd` and every category are kept as they are, with their
COCO ids. The whole file is checked before anything is decoded, and every problem is listed.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TypeGuard

import numpy as np
from pycocotools import mask as mask_utils

from ingest.importers.pipeline import (
    Decoded,
    ImportOptions,
    ImportProblems,
    ImportSummary,
    ImportTask,
    outside_problem,
    read_source,
    require_dir,
    run_import,
)
from services.common.errors import InvalidArgument
from services.common.store import ObjectStore

#: Polygon points may sit this far outside the image (exporters write vertices on the border
#: as x = width); anything further is an annotation for a different image size.
POLYGON_TOLERANCE = 1.0


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_segmentation(seg: Any, height: int, width: int, where: str) -> list[str]:
    """Problems with one annotation's segmentation (empty list when it is usable)."""
    if isinstance(seg, list):
        if not seg:
            return [f"{where}: empty polygon list"]
        problems = []
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                problems.append(f"{where}: polygon {j} is not a list of numbers")
                continue
            if len(poly) < 6 or len(poly) % 2:
                problems.append(f"{where}: polygon {j} has {len(poly)} coordinates; needs an even number ≥ 6 (3 points)")
                continue
            xs, ys = poly[0::2], poly[1::2]
            lo, hi_x, hi_y = -POLYGON_TOLERANCE, width + POLYGON_TOLERANCE, height + POLYGON_TOLERANCE
            bad = [(x, y) for x, y in zip(xs, ys) if not (lo <= x <= hi_x and lo <= y <= hi_y)]
            if bad:
                x, y = bad[0]
                problems.append(
                    f"{where}: polygon {j} has {len(bad)} point(s) outside the {width}×{height} image, e.g. ({x:g}, {y:g})"
                )
        return problems
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return [f"{where}: RLE without a valid size [height, width]"]
        if list(size) != [height, width]:
            return [f"{where}: RLE size {size[1]}×{size[0]} differs from the {width}×{height} image"]
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return [f"{where}: uncompressed RLE counts must be non-negative integers"]
            if sum(counts) != height * width:
                return [f"{where}: uncompressed RLE covers {sum(counts)} pixels, image has {height * width}"]
            return []
        if isinstance(counts, str) and counts:
            return []
        return [f"{where}: RLE counts must be a string (compressed) or a list of integers"]
    if seg is None:
        return [f"{where}: no segmentation (bounding-box-only annotations cannot be imported)"]
    return [f"{where}: segmentation must be a polygon list or an RLE object, got {type(seg).__name__}"]


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """H×W bool mask of a checked segmentation (all polygons of an annotation merged)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in seg], height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def decode_coco_task(task: ImportTask) -> Decoded:
    """Read one image and rasterise its annotations (task.source = (height, width, annotations))."""
    height, width, anns = task.source
    data, image = read_source(task.image_path)
    if image.shape[:2] != (height, width):
        raise InvalidArgument(
            f"{task.file_name}: image is {image.shape[1]}×{image.shape[0]}, the annotation file says {width}×{height}"
        )
    masks, labels, crowd = [], [], []
    empty = 0
    for ann in anns:
        m = segmentation_to_mask(ann["segmentation"], height, width)
        if not m.any():  # a sub-pixel polygon: nothing to learn from, nothing to evaluate
            empty += 1
            continue
        masks.append(m)
        labels.append(int(ann["category_id"]))
        crowd.append(bool(ann.get("iscrowd", 0)))
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return Decoded(image, stacked, labels, crowd, notes={"empty_annotations_dropped": empty} if empty else {},
                   source=data, source_suffix=Path(task.image_path).suffix)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ImportProblems("import coco", [f"{path}: file not found"]) from None
    except OSError as exc:
        raise ImportProblems("import coco", [f"{path}: cannot read ({exc.strerror})"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportProblems("import coco", [f"{path}: not valid JSON ({exc})"]) from None


_DRIVE = re.compile(r"^[A-Za-z]:")


def _resolve_image(root: Path, file_name: str) -> tuple[Path | None, str]:
    """(`root/file_name`, else `root/<basename>` (exports often keep a sub-folder in
    file_name), '') or (None, the problem). A file_name never reaches outside `root`: absolute
    paths and '..' are refused, and so are symlinks that dangle or lead out of it."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    if file_name.startswith(("/", "\\")) or _DRIVE.match(file_name):
        return None, f"file_name is an absolute path; it must be relative to {root}"
    if ".." in parts:
        return None, f"file_name contains '..'; it must stay inside {root}"
    for candidate in (root / file_name, root / Path(file_name).name):
        problem = outside_problem(root, candidate)
        if problem:
            return None, problem
        if candidate.is_file():
            return candidate, ""
    return None, f"file not found in {root}"


def plan_coco(coco: Any, images_root: Path, source: str) -> tuple[list[dict[str, Any]], list[ImportTask]]:
    """Check the whole COCO document; return (categories, tasks) or raise listing every problem."""
    what = "import coco"
    if not isinstance(coco, dict):
        raise ImportProblems(what, [f"{source}: expected a JSON object with images, annotations, categories"])
    problems: list[str] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            problems.append(f"{source}: '{key}' is missing or not a list")
    if problems:
        raise ImportProblems(what, problems)

    categories: list[dict[str, Any]] = []
    cat_ids: set[int] = set()
    for i, cat in enumerate(coco["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid) or cid <= 0:
            problems.append(f"{source}: category #{i} has id {cid!r}; ids must be positive integers (0 is background)")
        elif cid in cat_ids:
            problems.append(f"{source}: category id {cid} appears twice")
        else:
            cat_ids.add(cid)
            categories.append({"id": cid, "name": str(cat.get("name", cid)), "supercategory": str(cat.get("supercategory", "") or "")})
    if not coco["categories"]:
        problems.append(f"{source}: no categories")

    images: dict[int, dict[str, Any]] = {}
    paths: dict[int, Path] = {}
    names: set[str] = set()
    for i, img in enumerate(coco["images"]):
        iid = img.get("id") if isinstance(img, dict) else None
        if not _is_int(iid):
            problems.append(f"{source}: image #{i} has no integer id")
            continue
        name = img.get("file_name")
        w, h = img.get("width"), img.get("height")
        if not isinstance(name, str) or not name:
            problems.append(f"image {iid}: no file_name")
            continue
        if iid in images:
            problems.append(f"image {iid} ({name}): id appears twice")
            continue
        if name in names:
            problems.append(f"image {iid} ({name}): file_name appears twice")
            continue
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            problems.append(f"image {iid} ({name}): width/height must be positive integers, got {w!r}×{h!r}")
            continue
        path, problem = _resolve_image(images_root, name)
        if path is None:
            problems.append(f"image {iid} ({name}): {problem}")
            continue
        images[iid] = img
        paths[iid] = path
        names.add(name)
    if not coco["images"]:
        problems.append(f"{source}: no images")

    per_image: dict[int, list[dict[str, Any]]] = {iid: [] for iid in images}
    known_ids = {img.get("id") for img in coco["images"] if isinstance(img, dict)}
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"{source}: annotation #{i} is not an object")
            continue
        aid = ann.get("id", f"#{i}")
        iid = ann.get("image_id")
        if iid not in known_ids:
            problems.append(f"annotation {aid}: image_id {iid!r} is not among the images")
            continue
        if iid not in images:  # the image itself has a problem, already listed
            continue
        img = images[iid]
        where = f"annotation {aid} (image {img['file_name']})"
        if ann.get("category_id") not in cat_ids:
            problems.append(f"{where}: category_id {ann.get('category_id')!r} is not among the categories {sorted(cat_ids)}")
            continue
        if ann.get("iscrowd", 0) not in (0, 1, True, False):
            problems.append(f"{where}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
            continue
        seg_problems = check_segmentation(ann.get("segmentation"), img["height"], img["width"], where)
        if seg_problems:
            problems.extend(seg_problems)
            continue
        per_image[iid].append(
            {"segmentation": ann["segmentation"], "category_id": ann["category_id"], "iscrowd": int(bool(ann.get("iscrowd", 0)))}
        )
    if problems:
        raise ImportProblems(what, problems)

    tasks: list[ImportTask] = []
    for iid in sorted(images):
        img = images[iid]
        tasks.append(ImportTask(len(tasks), img["file_name"], str(paths[iid]), (img["height"], img["width"], per_image[iid])))
    return categories, tasks


def import_coco(
    store: ObjectStore,
    annotations: str | Path,
    images_dir: str | Path,
    options: ImportOptions = ImportOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import a COCO instances JSON and its images as one 'real' dataset."""
    options.validate()
    images_root = require_dir(images_dir, "image folder")
    path = Path(annotations)
    categories, tasks = plan_coco(_load_json(path), images_root, path.name)
    params = {"source": "coco", "annotations": str(path), "images": str(images_root)}
    return run_import(store, "import coco", tasks, decode_coco_task, categories, options, params, progress)
