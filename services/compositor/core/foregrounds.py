"""Cutting instances out of annotated images as RGBA foregrounds."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.errors import InvalidArgument


@dataclass
class Cutout:
    """One instance cut out of a source image.

    `rgba` alpha is the instance mask (255 inside, 0 outside; a soft ramp when feathered).
    The RGB under alpha 0 is the real surrounding image (padding), so a soft edge fades into
    plausible context instead of a flat colour.
    """

    rgba: np.ndarray
    category_id: int
    instance_index: int
    area: int
    bbox: tuple[int, int, int, int]  # x, y, w, h of the crop in the source image


def feather_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 alpha from a boolean mask; with sigma > 0 a Gaussian ramp centred on the edge.

    The ramp is 128 on the mask boundary, so thresholding at 128 gives the mask back (up to
    corners thinner than ~sigma).
    """
    alpha = mask.astype(np.uint8) * 255
    if sigma <= 0:
        return alpha
    return cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


def extract_cutouts(image: np.ndarray, masks: np.ndarray, labels: np.ndarray, *,
                    min_area: int = 1, feather_sigma: float = 0.0, padding: int = 0,
                    iscrowd: np.ndarray | None = None) -> tuple[list[Cutout], int]:
    """Cut every instance of one image; returns (cutouts, number skipped by `min_area`).

    Crowd annotations are skipped (they do not describe one object). The crop is the
    instance's box grown by `padding` plus room for the feathering ramp, clipped to the image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgument(f"image must be H×W×3, got shape {image.shape}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise InvalidArgument(f"masks must be N×{image.shape[0]}×{image.shape[1]}, got {masks.shape}")
    if min_area < 0 or padding < 0 or feather_sigma < 0:
        raise InvalidArgument("min_area, padding and feather_sigma must be ≥ 0")
    h, w = image.shape[:2]
    grow = padding + (math.ceil(3 * feather_sigma) if feather_sigma > 0 else 0)
    out: list[Cutout] = []
    skipped = 0
    for i in range(masks.shape[0]):
        if iscrowd is not None and bool(iscrowd[i]):
            continue
        mask = masks[i]
        area = int(np.count_nonzero(mask))
        if area == 0 or area < min_area:
            skipped += 1
            continue
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        x0, x1 = max(0, int(xs[0]) - grow), min(w, int(xs[-1]) + 1 + grow)
        y0, y1 = max(0, int(ys[0]) - grow), min(h, int(ys[-1]) + 1 + grow)
        rgba = np.empty((y1 - y0, x1 - x0, 4), dtype=np.uint8)
        rgba[..., :3] = image[y0:y1, x0:x1]
        rgba[..., 3] = feather_alpha(mask[y0:y1, x0:x1], feather_sigma)
        out.append(Cutout(rgba=rgba, category_id=int(labels[i]), instance_index=i, area=area,
                          bbox=(x0, y0, x1 - x0, y1 - y0)))
    return out, skipped
