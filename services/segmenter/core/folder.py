"""Prediction on a folder of images, written as instance-id PNGs or COCO results.

The predictions are the segmenter's own (core/predictor.py `predict`, the code a plan's
predict step runs): every image at the model's input size, masks back at the image's own
size, cut at the mask threshold. Two outputs, both complete or absent (written to a hidden
sibling folder, renamed into place at the end):

* ``png``: ``OUT/<stem>.png``, an instance-id map per image at the image's own size (0
  background, 1 = the highest-scoring detection, 2 the next, …; where detections overlap the
  higher-scoring one is drawn; uint8, or uint16 past 255 detections), with the detections
  scoring at least the score threshold — the same pixels as the union the evaluator scores
  at that threshold, so ``synthaug evaluate --truth … --pred OUT`` gives the plan's IoU per
  image; ``OUT/union/<stem>.png`` the binary union (0/255); ``OUT/info.json``.
* ``coco``: ``OUT/results.json``, a COCO results list (image_id, category_id, RLE
  segmentation, bbox, score) of the detections scoring at least the threshold (default: the
  export threshold, so that AP can use them all); ``OUT/images.json``, the COCO images and
  categories they refer to (``COCO("images.json").loadRes("results.json")``);
  ``OUT/info.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from services.common.errors import InvalidArgument, NotFound
from services.common.imageio import read_image, write_png
from services.evaluator.core.coco import to_rle
from services.segmenter.core.data import Example
from services.segmenter.core.export import read_export
from services.segmenter.core.predictor import load_model_file, predict
from services.segmenter.core.trainer import select_device

#: Files read as images (by suffix, case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
FORMATS = ("png", "coco")
#: Unreadable images named in the error (all are counted).
SHOWN = 50
UNION_FOLDER = "union"
PREDICTIONS_FORMAT = "synthaug.folder-predictions/1"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FolderImage:
    image_id: int
    path: Path
    height: int
    width: int

    @property
    def stem(self) -> str:
        return self.path.stem


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, by name; NotFound / InvalidArgument when there is
    no such folder or no image in it, or when two files share a stem (their outputs would)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"--images {folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidArgument(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise InvalidArgument(f"--images {folder}: {stems[p.stem].name} and {p.name} would write the same prediction {p.stem}.png")
        stems[p.stem] = p
    return paths


def check_images(paths: Sequence[Path], progress: Progress | None = None) -> list[FolderImage]:
    """Decode every image once; InvalidArgument listing every unreadable one (nothing is
    predicted then). Ids are 1… in the given order."""
    images, bad = [], []
    for i, path in enumerate(paths):
        try:
            h, w = read_image(path).shape[:2]
            images.append(FolderImage(i + 1, path, int(h), int(w)))
        except InvalidArgument as exc:
            bad.append(str(exc))
        if progress is not None:
            progress(i + 1, len(paths))
    if bad:
        shown = "\n  ".join(bad[:SHOWN]) + (f"\n  … and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        raise InvalidArgument(f"{len(bad)} of {len(paths)} images cannot be read (nothing was predicted):\n  {shown}")
    return images


class FolderSource:
    """An ExampleSource (core/data.py) over checked folder images: no truth instances."""

    split = ""
    kind = "real"

    def __init__(self, folder: str | Path, images: Sequence[FolderImage], categories: list[dict[str, Any]]):
        self.folder = Path(folder)
        self.images = {im.image_id: im for im in images}
        self.categories = categories

    @property
    def name(self) -> str:
        return f"folder {self.folder}"

    @property
    def dataset_id(self) -> str:
        return str(self.folder)

    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def num_annotations(self) -> int:
        return 0

    def image_size(self, image_id: int) -> tuple[int, int]:
        im = self.images[image_id]
        return im.height, im.width

    def load(self, image_id: int) -> Example:
        im = self.images[image_id]
        image = read_image(im.path)
        if image.shape[:2] != (im.height, im.width):
            raise InvalidArgument(f"{im.path}: changed while predicting")
        return Example(image_id, image, np.zeros((0, im.height, im.width), dtype=bool), np.zeros(0, dtype=np.int64))


def by_image(results: Sequence[dict[str, Any]], score_threshold: float) -> dict[int, list[dict[str, Any]]]:
    """Results scoring at least `score_threshold`, per image id, by decreasing score."""
    out: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            out.setdefault(int(r["image_id"]), []).append(r)
    for items in out.values():
        items.sort(key=lambda r: -r["score"])
    return out


def instance_map(detections: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """H×W instance ids of `detections` (by decreasing score: id 1 is the first); where they
    overlap, the higher-scoring one (drawn last) wins. Its non-zero pixels are exactly the
    union of the detections' masks."""
    dtype = np.uint8 if len(detections) <= 255 else np.uint16
    if len(detections) > 65535:
        raise InvalidArgument(f"{len(detections)} detections in one image do not fit a 16-bit instance map")
    out = np.zeros((height, width), dtype=dtype)
    for index in range(len(detections) - 1, -1, -1):
        mask = mask_utils.decode(to_rle(detections[index]["segmentation"], height, width, f"detection {index}")).astype(bool)
        out[mask] = index + 1
    return out


def staging_folder(out: Path) -> Path:
    """A new hidden sibling of `out` to write into; InvalidArgument when `out` exists and is
    not an empty folder (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgument(f"--out {out} exists and is not an empty folder; give a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` folder to `out` (an empty `out` is replaced)."""
    if out.is_dir():
        out.rmdir()  # empty (staging_folder checked); fails rather than overwrite anything
    os.rename(tmp, out)


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_png_predictions(tmp: Path, images: Sequence[FolderImage], results: Sequence[dict[str, Any]], score_threshold: float) -> int:
    """Instance-id and union PNGs of every image (one file each, empty maps included);
    returns the number of detections drawn."""
    (tmp / UNION_FOLDER).mkdir()
    kept = by_image(results, score_threshold)
    for im in images:
        ids = instance_map(kept.get(im.image_id, []), im.height, im.width)
        write_png(tmp / f"{im.stem}.png", ids)
        write_png(tmp / UNION_FOLDER / f"{im.stem}.png", np.where(ids > 0, 255, 0).astype(np.uint8))
    return sum(len(v) for v in kept.values())


def write_coco_predictions(tmp: Path, images: Sequence[FolderImage], results: Sequence[dict[str, Any]], score_threshold: float,
               categories: list[dict[str, Any]], info: dict[str, Any]) -> int:
    """results.json (a COCO results list) and images.json (its images and categories);
    returns the number of results written."""
    kept = [r for r in results if r["score"] >= score_threshold]
    _json(tmp / "results.json", kept)
    _json(tmp / "images.json", {
        "info": info,
        "images": [{"id": im.image_id, "file_name": im.path.name, "height": im.height, "width": im.width} for im in images],
        "annotations": [],
        "categories": categories,
    })
    return len(kept)


@dataclass(frozen=True)
class FolderPrediction:
    """What `predict_folder` wrote."""

    out: Path
    format: str
    images: int
    detections: int
    score_threshold: float


def predict_folder(model: bytes, what: str, images_dir: str | Path, out: str | Path, fmt: str = "png",
                   score_threshold: float | None = None, device: str = "",
                   on_check: Progress | None = None, on_predict: Progress | None = None) -> FolderPrediction:
    """Predict every image of `images_dir` with the exported `model` (core/export.py) and
    write the `fmt` output to `out` (see the module docstring), all or nothing.

    `score_threshold` (default: the plan's score threshold for png, its export threshold for
    coco) must be at least the export's export threshold. Unreadable images fail the call
    before anything is predicted, all of them named."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    exported = read_export(model, what)
    t = exported.thresholds
    threshold = (t.score if fmt == "png" else t.export) if score_threshold is None else float(score_threshold)
    if not t.export <= threshold <= 1.0:
        raise InvalidArgument(f"--score-threshold must be in [{t.export:g}, 1] (the model's export threshold keeps "
                              f"nothing below {t.export:g}), got {threshold:g}")
    out = Path(out)
    paths = list_images(images_dir)
    tmp = staging_folder(out)
    try:
        images = check_images(paths, on_check)
        torch_device = select_device(device)
        loaded = load_model_file(model, what, torch_device)
        cfg = exported.predict_config()
        source = FolderSource(images_dir, images, exported.categories)

        def progress(fraction: float, _message: str, _metrics: Any) -> None:
            if on_predict is not None:
                on_predict(round(fraction * len(images)), len(images))

        results = predict(loaded, source, torch_device, cfg, progress=progress)
        info = {
            "format": PREDICTIONS_FORMAT, "output": fmt, "images_dir": str(Path(images_dir).resolve()), "images": len(images),
            "score_threshold": threshold, "thresholds": {"export": t.export, "score": t.score, "mask": t.mask},
            "image_size": exported.image_size, "architecture": exported.spec.architecture,
            "model": exported.provenance,
        }
        if fmt == "png":
            detections = write_png_predictions(tmp, images, results, threshold)
        else:
            detections = write_coco_predictions(tmp, images, results, threshold, exported.categories, info)
        write_info(tmp, {**info, "detections": detections})
        publish(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    return FolderPrediction(out, fmt, len(images), detections, threshold)


def write_info(tmp: Path, info: dict[str, Any]) -> None:
    _json(tmp / "info.json", info)
