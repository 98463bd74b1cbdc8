"""Contact sheets: a grid of a dataset's images with every instance outlined.

Works for any synthaug dataset (real, composite, gan); the quickest way to see whether
composites look like the real thing or like stickers, and whether masks sit on objects.
"""
from __future__ import annotations

import cv2
import numpy as np

from services.common.datasets import Dataset
from services.common.errors import InvalidArgument

# Distinct outline colours (RGB), cycled by instance index within an image.
PALETTE = [(0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 215, 0), (255, 0, 255), (0, 255, 255),
           (255, 140, 0), (160, 255, 160)]
CAPTION_PX = 18


def _tile(image: np.ndarray, masks: np.ndarray, tile: int, caption: str, thickness: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((tile + CAPTION_PX, tile, 3), np.uint8)
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    view = np.ascontiguousarray(cv2.resize(image, (nw, nh), interpolation=interp))
    for i, mask in enumerate(masks):
        small = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(view, contours, -1, PALETTE[i % len(PALETTE)], thickness)
    canvas[y0:y0 + nh, x0:x0 + nw] = view
    cv2.putText(canvas, caption[: max(4, tile // 7)], (3, tile + CAPTION_PX - 5), cv2.FONT_HERSHEY_SIMPLEX,
                0.38, (230, 230, 230), 1, cv2.LINE_AA)
    return canvas


def draw_contact_sheet(dataset: Dataset, count: int = 16, columns: int = 4, tile: int = 256, split: str = "",
                       seed: int | None = None, thickness: int = 1) -> np.ndarray:
    """RGB uint8 grid of `count` images of `dataset` (first ones, or a seeded random sample)."""
    if count < 1:
        raise InvalidArgument(f"count must be ≥ 1, got {count}")
    if columns < 1:
        raise InvalidArgument(f"columns must be ≥ 1, got {columns}")
    if not 32 <= tile <= 2048:
        raise InvalidArgument(f"tile must be in [32, 2048], got {tile}")
    records = dataset.image_records(split)
    if not records:
        raise InvalidArgument(f"dataset {dataset.id}: split {split or '(all)'!r} has no images")
    if seed is not None and len(records) > count:
        pick = np.sort(np.random.default_rng(seed).choice(len(records), count, replace=False))
        records = [records[i] for i in pick]
    records = records[:count]
    tiles = []
    for record in records:
        sample = dataset.load_sample(record)
        tiles.append(_tile(sample.image, sample.masks, tile, f"{record['file_name']} ({sample.masks.shape[0]})", thickness))
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    gap = 2
    th, tw = tiles[0].shape[:2]
    sheet = np.full((rows * th + (rows - 1) * gap, columns * tw + (columns - 1) * gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = t
    return sheet
