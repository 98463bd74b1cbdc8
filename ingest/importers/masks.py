"""Import an image folder + a mask folder (ISIC-style binary masks or instance-id PNGs).

Mask files are found by a pattern on the image's stem (`{stem}_segmentation.png`, `{stem}.png`,
`{name}` for the full image file name). A mask is read with its values unchanged:

- *binary* (one non-zero value, e.g. {0, 255}): one instance per 8-connected component.
  Components smaller than the minimum area are fragments (annotation specks, a lesion split by
  a hair) and join the nearest larger component instead of becoming instances of their own,
  so no annotated pixel is ever lost. `binary_instances="single"` makes the whole foreground
  one instance (semantic masks with one object per image).
- *instance ids* (several non-zero values): one instance per value, never split or merged.

`mask_type="auto"` decides per file by the number of distinct non-zero values.

A mask whose values compression or resampling has changed is refused, never guessed at: a JPEG
file, or a mask whose non-zero values are mostly grey levels found only in thin lines along
edges (auto mode would make each grey level an instance; binary mode would grow every object
by its blurred rim). `mask_threshold` (binary only) is the explicit way to read such masks:
foreground = value ≥ threshold.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ingest.importers.pipeline import (
    Decoded,
    ImportOptions,
    ImportProblems,
    ImportSummary,
    ImportTask,
    list_images,
    outside_problem,
    read_source,
    require_dir,
    run_import,
)
from services.common.errors import InvalidArgument
from services.common.imageio import LOSSY_FORMATS, read_mask_and_format
from services.common.store import ObjectStore

MASK_TYPES = ("auto", "binary", "instance")
BINARY_INSTANCES = ("components", "single")
PATTERN_FIELDS = {"stem", "name", "ext"}


@dataclass(frozen=True)
class MaskOptions:
    pattern: str = "{stem}.png"
    mask_type: str = "auto"
    binary_instances: str = "components"
    min_area: float = 0.01  # < 1: fraction of the image area; ≥ 1: pixels; 0: every component counts
    category: str = "lesion"
    mask_threshold: int | None = None  # binary only: foreground = value ≥ threshold (for lossy masks)

    def validate(self) -> MaskOptions:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.pattern) if f is not None}
        if not fields & {"stem", "name"}:
            raise InvalidArgument(f"--pattern {self.pattern!r} must contain {{stem}} or {{name}}")
        unknown = fields - PATTERN_FIELDS
        if unknown:
            raise InvalidArgument(f"--pattern {self.pattern!r}: unknown field(s) {sorted(unknown)}; use {{stem}}, {{name}}, {{ext}}")
        if "/" in self.pattern or "\\" in self.pattern:
            raise InvalidArgument(f"--pattern {self.pattern!r} must be a file name, not a path")
        if self.mask_type not in MASK_TYPES:
            raise InvalidArgument(f"--mask-type must be one of {MASK_TYPES}, got {self.mask_type!r}")
        if self.binary_instances not in BINARY_INSTANCES:
            raise InvalidArgument(f"--binary-instances must be one of {BINARY_INSTANCES}, got {self.binary_instances!r}")
        if not self.min_area >= 0:
            raise InvalidArgument(f"--min-area must be ≥ 0, got {self.min_area}")
        if not self.category.strip():
            raise InvalidArgument("--category must not be empty")
        if self.mask_threshold is not None:
            if isinstance(self.mask_threshold, bool) or not isinstance(self.mask_threshold, int) or not 1 <= self.mask_threshold <= 65535:
                raise InvalidArgument(f"--mask-threshold must be an integer in [1, 65535], got {self.mask_threshold!r}")
            if self.mask_type != "binary":
                raise InvalidArgument(f"--mask-threshold needs --mask-type binary (got --mask-type {self.mask_type})")
        return self

    def mask_name(self, image: Path) -> str:
        return self.pattern.format(stem=image.stem, name=image.name, ext=image.suffix.lstrip("."))

    def min_area_pixels(self, height: int, width: int) -> float:
        return self.min_area * height * width if self.min_area < 1 else self.min_area


def binary_components(fg: np.ndarray, min_area: float) -> tuple[np.ndarray, int]:
    """N×H×W instances from a foreground mask: 8-connected components ≥ `min_area` pixels, with
    smaller components merged into the nearest kept one. Returns (masks, merged fragment count).

    The largest component is always kept, so a foreground never vanishes; the union of the
    returned masks is exactly `fg`.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros((0,) + fg.shape, dtype=bool), 0
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = [i + 1 for i in range(count - 1) if areas[i] >= min_area]
    if not kept:
        kept = [int(np.argmax(areas)) + 1]
    small = count - 1 - len(kept)
    if small:
        fragment = (labels != 0) & ~np.isin(labels, kept)
        labels = labels.copy()
        if len(kept) == 1:
            labels[fragment] = kept[0]
        else:  # each fragment, as a whole, joins the kept component nearest to it
            dist = np.stack([cv2.distanceTransform((labels != k).astype(np.uint8), cv2.DIST_L2, 5) for k in kept])
            original = labels.copy()
            for f in np.unique(original[fragment]):
                where = original == f
                labels[where] = kept[int(np.argmin(dist[:, where].min(axis=1)))]
    masks = np.stack([labels == k for k in kept])
    return masks, small


def edge_only_values(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The `values` that no pixel of `mask` holds together with all 8 of its neighbours: values
    found only in lines ≤ 2 px thick, as the grey levels a lossy or resampled mask has along
    its edges (a real instance, however small, almost always has an inside)."""
    h, w = mask.shape
    if h < 3 or w < 3:
        return values
    centre = mask[1:-1, 1:-1]
    inside = np.ones(centre.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                inside &= mask[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] == centre
    return np.setdiff1d(values, np.unique(centre[inside]))


def lossy_mask_problem(mask: np.ndarray, file_format: str, mask_type: str) -> str:
    """Why the values of `mask` cannot be taken as exact binary or instance ids ('' when they
    can): a lossy file format, or (unless the user said `instance`) non-zero values that are
    mostly edge-only grey levels."""
    if file_format in LOSSY_FORMATS:
        return f"is a {file_format} file: lossy compression changes mask values along every edge"
    if mask_type == "instance":
        return ""  # the user says these values are instance ids
    values = np.unique(mask)
    values = values[values != 0]
    if len(values) < 2:
        return ""
    grey = edge_only_values(mask, values)
    if len(grey) >= 3 and 2 * len(grey) >= len(values):
        return (f"has {len(values)} distinct non-zero values, {len(grey)} of them only along edges: grey levels of a "
                "resampled or lossily compressed mask, not a binary or instance-id mask")
    return ""


def decode_masks_task(task: ImportTask) -> Decoded:
    """Read one image + its mask file (task.source = (mask_path, MaskOptions))."""
    mask_path, opts = task.source
    data, image = read_source(task.image_path)
    mask, file_format = read_mask_and_format(mask_path)
    if mask.shape != image.shape[:2]:
        raise InvalidArgument(
            f"{task.file_name}: mask {Path(mask_path).name} is {mask.shape[1]}×{mask.shape[0]}, image is {image.shape[1]}×{image.shape[0]}"
        )
    if opts.mask_threshold is None:
        problem = lossy_mask_problem(mask, file_format, opts.mask_type)
        if problem:
            instead = "" if file_format in LOSSY_FORMATS else " (or, if these values really are instance ids, --mask-type instance)"
            raise InvalidArgument(
                f"{task.file_name}: mask {Path(mask_path).name} {problem}. Masks are never guessed at: save them as PNG, "
                f"or threshold them explicitly with --mask-type binary --mask-threshold 128{instead}"
            )
    values = np.unique(mask)
    values = values[values != 0]
    kind = opts.mask_type
    if kind == "auto":
        kind = "binary" if len(values) <= 1 else "instance"
    notes: dict[str, int] = {}
    if kind == "binary":
        fg = mask != 0 if opts.mask_threshold is None else mask >= opts.mask_threshold
        if opts.binary_instances == "single":
            masks = fg[None] if fg.any() else np.zeros((0,) + fg.shape, dtype=bool)
        else:
            masks, merged = binary_components(fg, opts.min_area_pixels(*fg.shape))
            if merged:
                notes["fragments_merged"] = merged
    else:
        masks = (mask[None, :, :] == values[:, None, None]) if len(values) else np.zeros((0,) + mask.shape, dtype=bool)
    n = len(masks)
    return Decoded(image=image, masks=masks, labels=[1] * n, iscrowd=[False] * n, notes=notes,
                   source=data, source_suffix=Path(task.image_path).suffix)


def import_masks(
    store: ObjectStore,
    images_dir: str | Path,
    masks_dir: str | Path,
    mask_options: MaskOptions = MaskOptions(),
    options: ImportOptions = ImportOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import every image of `images_dir` with its mask from `masks_dir` as one 'real' dataset."""
    what = "import masks"
    mask_options.validate()
    options.validate()
    images_root = require_dir(images_dir, "image folder")
    masks_root = require_dir(masks_dir, "mask folder")
    images, problems = list_images(images_root)
    if not images and not problems:
        raise ImportProblems(what, [f"no images (*{', *'.join(('.jpg', '.png', '.tif', '…'))}) in {images_root}"])
    tasks: list[ImportTask] = []
    seen: dict[str, str] = {}
    for image in images:
        mask_path = masks_root / mask_options.mask_name(image)
        if mask_path.name in seen:
            problems.append(f"{image.name}: mask {mask_path.name} is also the mask of {seen[mask_path.name]} (pattern {mask_options.pattern!r})")
            continue
        seen[mask_path.name] = image.name
        problem = outside_problem(masks_root, mask_path)
        if problem:
            problems.append(f"{image.name}: mask {mask_path.name}: {problem}")
            continue
        if not mask_path.is_file():
            problems.append(f"{image.name}: no mask {mask_path.name} in {masks_root}")
            continue
        tasks.append(ImportTask(len(tasks), image.name, str(image), (str(mask_path), mask_options)))
    if problems:
        raise ImportProblems(what, problems)
    params = {
        "source": "masks",
        "images": str(images_root),
        "masks": str(masks_root),
        "pattern": mask_options.pattern,
        "mask_type": mask_options.mask_type,
        "binary_instances": mask_options.binary_instances,
        "min_area": mask_options.min_area,
    }
    if mask_options.mask_threshold is not None:  # only when set: earlier imports keep their ids
        params["mask_threshold"] = mask_options.mask_threshold
    categories = [{"id": 1, "name": mask_options.category, "supercategory": ""}]
    return run_import(store, what, tasks, decode_masks_task, categories, options, params, progress)
