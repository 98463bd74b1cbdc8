"""Backgrounds without objects, harvested automatically from annotated images.

A user with no photos of "empty" scenes (healthy skin) still gets backgrounds in matching
tones: either every instance is removed by inpainting its dilated mask, or square crops
that touch no instance are taken.
"""
from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from services.common.errors import InvalidArgument

#: BackgroundParams.method names of the inpainting methods → OpenCV flags.
INPAINT_METHODS = {"inpaint_telea": cv2.INPAINT_TELEA, "inpaint_ns": cv2.INPAINT_NS}


def dilated_union(masks: np.ndarray, shape: tuple[int, int], dilate_px: int) -> np.ndarray:
    """uint8 {0, 255}: every instance's pixels grown by `dilate_px` (elliptic structuring element)."""
    union: np.ndarray = np.zeros(shape, dtype=np.uint8)
    if masks.shape[0]:
        union[masks.any(axis=0)] = 255
    if dilate_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        union = cv2.dilate(union, kernel)
    return union


def inpaint_objects(image: np.ndarray, masks: np.ndarray, method: str, dilate_px: int,
                    radius: int = 5, texture_seed: int | None = None) -> np.ndarray:
    """The image with every instance (dilated by `dilate_px`) filled in from its surroundings.

    Large holes are filled coarse-to-fine: inpainting at a quarter of the resolution gives a
    smooth skin-tone fill with no radial streaks, the full-resolution pass then restores the
    detail near the hole's border. Where `texture_seed` is given, a little grain matched to the
    surrounding skin's own fine-scale variation is added inside the hole, so the fill does not
    look airbrushed next to real skin.
    """
    if method not in INPAINT_METHODS:
        raise InvalidArgument(f"inpaint method must be one of {sorted(INPAINT_METHODS)}, got {method!r}")
    flag = INPAINT_METHODS[method]
    h, w = image.shape[:2]
    hole = dilated_union(masks, (h, w), dilate_px)
    if not hole.any():
        return image.copy()
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    small_w, small_h = max(8, w // 4), max(8, h // 4)
    if small_w < w:
        small = cv2.resize(bgr, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(hole, (small_w, small_h), interpolation=cv2.INTER_NEAREST)
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        coarse = cv2.inpaint(small, small_hole, max(1, radius // 2), flag)
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        seeded = bgr.copy()
        inner = cv2.erode(hole, np.ones((5, 5), np.uint8))
        seeded[inner > 0] = coarse[inner > 0]
        filled = cv2.inpaint(seeded, cv2.subtract(hole, inner), radius, flag)
    else:
        filled = cv2.inpaint(bgr, hole, radius, flag)
    if texture_seed is not None:
        ring = cv2.subtract(cv2.dilate(hole, np.ones((15, 15), np.uint8)), hole) > 0
        if ring.any():
            smooth = cv2.GaussianBlur(bgr, (0, 0), 2.0).astype(np.float32)
            detail = bgr.astype(np.float32) - smooth
            # robust scale (hairs and the lesion's edge in the ring must not inflate it)
            mad = np.median(np.abs(detail[ring]), axis=0) * 1.4826
            rng = np.random.default_rng(texture_seed)
            noise = rng.standard_normal((h, w)).astype(np.float32)  # one luminance-like grain
            noise = cast(np.ndarray, cv2.GaussianBlur(noise, (0, 0), 1.0))  # float32 in, float32 out
            noise /= max(float(noise.std()), 1e-6)
            grain = noise[..., None] * mad.reshape(1, 1, 3)
            out = filled.astype(np.float32)
            sel = hole > 0
            out[sel] += grain[sel]
            filled = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return cv2.cvtColor(filled, cv2.COLOR_BGR2RGB)


def free_crops(image: np.ndarray, masks: np.ndarray, crop_size: int, dilate_px: int,
               dark_threshold: int = 25, max_dark_fraction: float = 0.05,
               stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of square crops that touch no (dilated) instance.

    Crops that are mostly dark (the black border of dermoscopy images, letterboxing) are
    left out too. Candidates lie on a grid with `stride` (default half the crop size).
    """
    h, w = image.shape[:2]
    if crop_size < 8:
        raise InvalidArgument(f"crop_size must be ≥ 8, got {crop_size}")
    if crop_size > min(h, w):
        return []
    stride = stride or max(1, crop_size // 2)
    hole = dilated_union(masks, (h, w), dilate_px) > 0
    dark = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) < dark_threshold
    hole_int = cv2.integral(hole.astype(np.uint8))
    dark_int = cv2.integral(dark.astype(np.uint8))
    limit = max_dark_fraction * crop_size * crop_size
    corners = []
    for y in range(0, h - crop_size + 1, stride):
        for x in range(0, w - crop_size + 1, stride):
            y1, x1 = y + crop_size, x + crop_size
            if hole_int[y1, x1] - hole_int[y, x1] - hole_int[y1, x] + hole_int[y, x] > 0:
                continue
            if dark_int[y1, x1] - dark_int[y, x1] - dark_int[y1, x] + dark_int[y, x] > limit:
                continue
            corners.append((x, y))
    return corners
