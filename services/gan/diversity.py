"""How varied is a set of images? Spread of per-image mean CIE-Lab colour, overall and by region.

Mode collapse in the thesis showed as one skin tone and one lesion look for every output. The
figures here measure exactly that: for each image, the mean Lab colour of the whole image, of
its foreground (the union of its masks: the lesion) and of its background (the skin); the
spread of a set is sqrt(trace(covariance)) of those per-image means (Lab units, ΔE-like:
the RMS distance of an image's mean colour from the set's mean colour). Real images give the
target; a collapsed generator gives a much smaller figure.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

REGIONS = ("image", "lesion", "background")


def to_lab(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB → H×W×3 float32 Lab (L in [0, 100])."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def mean_lab(image: np.ndarray, region: np.ndarray | None = None) -> np.ndarray | None:
    """Mean Lab colour over `region` (H×W bool; all pixels if None); None for an empty region."""
    lab = to_lab(image).reshape(-1, 3)
    if region is None:
        return lab.mean(axis=0)
    sel = region.reshape(-1)
    return lab[sel].mean(axis=0) if sel.any() else None


def spread(points: Sequence[np.ndarray]) -> float:
    """sqrt(trace(cov)) (population covariance) of a set of Lab vectors; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    p = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(((p - p.mean(axis=0)) ** 2).sum(axis=1).mean()))


def diversity(images: Sequence[np.ndarray], foregrounds: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """`{image,lesion,background}_lab_spread` and the mean L / spread of L of the background.

    `foregrounds` are H×W bool lesion regions (e.g. the union of an image's masks); without
    them only the whole-image figures are computed.
    """
    whole = [m for m in map(mean_lab, images) if m is not None]  # never None without a region
    out = {"n_images": float(len(images)), "image_lab_spread": spread(whole)}
    out["image_L_std"] = float(np.std([w[0] for w in whole])) if whole else 0.0
    if foregrounds is not None:
        if len(foregrounds) != len(images):
            raise ValueError(f"{len(images)} images but {len(foregrounds)} foregrounds")
        fg = [mean_lab(im, f) for im, f in zip(images, foregrounds)]
        bg = [mean_lab(im, ~f) for im, f in zip(images, foregrounds)]
        out["lesion_lab_spread"] = spread([v for v in fg if v is not None])
        out["background_lab_spread"] = spread([v for v in bg if v is not None])
    return out
