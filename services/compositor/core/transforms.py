"""Per-foreground and per-background transforms.

Foregrounds are RGBA uint8 crops whose alpha is the instance mask. Colour operations touch
RGB only (the thesis' brightness change also scaled alpha, leaving lesions half transparent
while the label said fully present). Geometric operations move RGB and alpha together: a
paste's flip, scale and rotation are one warp onto a window sized to where the object lands,
so no corner of the object is ever clipped.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def flip_rgba(rgba: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    """Flip; returns a contiguous array (cv2.flip is faster than a numpy copy)."""
    if horizontal and vertical:
        return cv2.flip(rgba, -1)
    if horizontal:
        return cv2.flip(rgba, 1)
    if vertical:
        return cv2.flip(rgba, 0)
    return rgba


def rotated_size(width: float, height: float, degrees: float) -> tuple[float, float]:
    """Bounding box of a width×height rectangle rotated by `degrees`."""
    rad = math.radians(degrees)
    c, s = abs(math.cos(rad)), abs(math.sin(rad))
    return width * c + height * s, width * s + height * c


#: A pyramid level is used while the paste's scale relative to it stays at or above this:
#: bilinear sampling aliases when shrinking further, so a smaller level is taken instead.
MIN_LEVEL_SCALE = 0.6


class ForegroundPyramid:
    """A foreground prepared once for all its pastes (`warp_foreground`) with a blur of
    radius ≤ `margin` pixels after the warp.

    Level k is the asset shrunk k times by half with area averaging, so that every paste,
    whatever its scale, is one bilinear warp from a level it shrinks by no less than
    `MIN_LEVEL_SCALE` (no aliasing). Each level gets a transparent ring whose RGB repeats the
    edge colours, wide enough that every pixel a warp can make within `margin` + 2 pixels of
    the object samples it: so every transparent pixel that a blurred alpha can reach carries
    a plausible colour (no dark fringe of naive RGBA warping pulled into the outline), and
    the warp reads only real pixels (its fast path; OpenCV's border handling doubles its
    cost). With a level comes the convex hull of its visible pixels (alpha > 0), where a
    linear map takes its extremes: the window a warp makes is computed from a few vertices.
    Levels are made at first use.
    """

    def __init__(self, rgba: np.ndarray, margin: int = 0):
        self.height, self.width = int(rgba.shape[0]), int(rgba.shape[1])
        # source pixels per output pixel ≤ 1 / MIN_LEVEL_SCALE; + the bilinear footprint
        self.ring = math.ceil((margin + 4) / MIN_LEVEL_SCALE)
        self._content = [np.ascontiguousarray(rgba)]  # level k without its ring
        self._levels: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def level_for(self, factor: float) -> int:
        """The smallest level a paste at `factor` (of the asset's size) still shrinks by no
        less than MIN_LEVEL_SCALE, stopping at ~4 pixels."""
        k, w, h = 0, self.width, self.height
        while factor * self.width / w < MIN_LEVEL_SCALE and min(w, h) > 4:
            k, w, h = k + 1, max(1, round(w / 2)), max(1, round(h / 2))
        return k

    def level(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(RGBA of level k with its ring, n×2 hull of its visible pixels or None)."""
        made = self._levels.get(k)
        if made is None:
            while len(self._content) <= k:
                above = self._content[-1]
                size = (max(1, round(above.shape[1] / 2)), max(1, round(above.shape[0] / 2)))
                self._content.append(cv2.resize(above, size, interpolation=cv2.INTER_AREA))
            r = self.ring
            ringed = cv2.copyMakeBorder(self._content[k], r, r, r, r, cv2.BORDER_REPLICATE)
            ringed[:r, :, 3] = ringed[-r:, :, 3] = ringed[:, :r, 3] = ringed[:, -r:, 3] = 0
            _, visible = cv2.threshold(cv2.extractChannel(ringed, 3), 0, 255, cv2.THRESH_BINARY)
            outlines, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            hull = cv2.convexHull(np.concatenate(outlines)).reshape(-1, 2).astype(np.float64) if outlines else None
            made = self._levels[k] = (ringed, hull)
        return made


def warp_foreground(pyramid: ForegroundPyramid, factor: float, degrees: float, hflip: bool = False,
                    vflip: bool = False, margin: int = 0) -> np.ndarray:
    """The foreground flipped, scaled by `factor` and rotated by `degrees` (counter-clockwise)
    in one bilinear warp, onto the smallest window that holds everything visible plus `margin`
    + 1 transparent pixels on every side (room for a blur of radius `margin`, the pyramid's).

    Nothing of the object is ever clipped: the window is where its visible pixels land, not
    the asset's rotated frame. One warp from a pyramid level resamples the pixels once (a
    resize, a flip and a rotation would each resample or copy them) and costs no more than
    the rotation alone. Returns an all-transparent 1×1 image for an asset with nothing visible.
    """
    k = pyramid.level_for(factor)
    image, hull = pyramid.level(k)
    if hull is None:
        return np.zeros((1, 1, 4), np.uint8)
    r = pyramid.ring
    h_k, w_k = image.shape[0] - 2 * r, image.shape[1] - 2 * r
    sx, sy = factor * pyramid.width / w_k, factor * pyramid.height / h_k
    fx, fy = (-1.0 if hflip else 1.0), (-1.0 if vflip else 1.0)
    # ringed pixel p → content p - r → flipped → scaled (pixel centres, as cv2.resize) → rotated
    bx = -r * fx + (w_k - 1 if hflip else 0)
    by = -r * fy + (h_k - 1 if vflip else 0)
    cx, cy = sx * (bx + 0.5) - 0.5, sy * (by + 0.5) - 0.5
    rad = math.radians(degrees)
    a, b = math.cos(rad), math.sin(rad)
    matrix = np.array([[a * sx * fx, b * sy * fy, a * cx + b * cy],
                       [-b * sx * fx, a * sy * fy, -b * cx + a * cy]])
    landed = hull @ matrix[:, :2].T + matrix[:, 2]
    low, high = landed.min(axis=0), landed.max(axis=0)
    # A sample within one source pixel of a visible one is visible: it lands within these of it.
    reach_x = abs(matrix[0, 0]) + abs(matrix[0, 1]) + margin + 1
    reach_y = abs(matrix[1, 0]) + abs(matrix[1, 1]) + margin + 1
    x0, y0 = math.floor(low[0] - reach_x), math.floor(low[1] - reach_y)
    x1, y1 = math.ceil(high[0] + reach_x) + 1, math.ceil(high[1] + reach_y) + 1
    matrix[0, 2] -= x0
    matrix[1, 2] -= y0
    # Beyond the ring (farther than margin + 2 from the object) transparent black is fine.
    return cv2.warpAffine(image, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))


_LUMA = np.array([0.299, 0.587, 0.114])
# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, luma untouched.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


# The hue rotation R(t) of the (I, Q) plane in RGB: _YIQ2RGB @ R(t) @ _RGB2YIQ
# = _HUE_FIXED + cos(t) * _HUE_COS + sin(t) * _HUE_SIN (luma row/column untouched).
_HUE_FIXED = np.outer(_YIQ2RGB[:, 0], _RGB2YIQ[0])
_HUE_COS = _YIQ2RGB[:, 1:] @ _RGB2YIQ[1:]
_HUE_SIN = _YIQ2RGB[:, 1:] @ np.array([[0.0, -1.0], [1.0, 0.0]]) @ _RGB2YIQ[1:]
_ONES = np.ones(3)
_GREY = np.outer(_ONES, _LUMA)  # every channel replaced by luma


def color_matrix(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue_degrees: float = 0.0, mean_grey: float = 128.0,
                 gains: np.ndarray | None = None) -> np.ndarray:
    """4×5 affine colour transform for RGBA pixels (cv2.transform), alpha row = identity.

    Every colour operation here is affine in RGB, so all of them cost one pass: hue is a
    rotation in YIQ, saturation a blend with luma, contrast a blend with the object's mean
    grey, brightness and per-channel gains are scalings. (Built from precomputed 3×3 parts:
    it runs once per pasted object.)
    """
    t = math.radians(hue_degrees)
    m = _HUE_FIXED + math.cos(t) * _HUE_COS + math.sin(t) * _HUE_SIN
    m = saturation * m + (1.0 - saturation) * (_GREY @ m)
    gain = brightness * (_ONES if gains is None else np.asarray(gains, dtype=np.float64))
    out = np.zeros((4, 5))
    out[:3, :3] = (contrast * gain)[:, None] * m
    out[:3, 4] = gain * ((1.0 - contrast) * mean_grey)
    out[3, 3] = 1.0
    return out


def object_mean_grey(rgba: np.ndarray) -> float:
    """Mean grey level of the object (alpha ≥ 128); 128 when there is none."""
    inside = (rgba[..., 3] >= 128).astype(np.uint8)
    if not inside.any():
        return 128.0
    return float(cv2.mean(cv2.cvtColor(rgba, cv2.COLOR_RGBA2GRAY), mask=inside)[0])


def apply_color(rgba: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a `color_matrix`; alpha comes back bit for bit (its row is the identity)."""
    out = cv2.transform(np.ascontiguousarray(rgba), matrix)
    out[..., 3] = rgba[..., 3]  # belt and braces: never let rounding touch alpha
    return out


def color_jitter(rgba: np.ndarray, brightness: float = 1.0, contrast: float = 1.0,
                 saturation: float = 1.0, hue_degrees: float = 0.0) -> np.ndarray:
    """Brightness/contrast/saturation factors and a hue shift applied to RGB only.

    Contrast pivots on the mean grey level of the object (alpha ≥ 128), so it changes the
    object's own contrast rather than pulling it toward mid-grey. The alpha channel of the
    result is the input's, bit for bit.
    """
    if brightness == 1.0 and contrast == 1.0 and saturation == 1.0 and hue_degrees == 0.0:
        return rgba.copy()
    mean = object_mean_grey(rgba) if contrast != 1.0 else 128.0
    return apply_color(rgba, color_matrix(brightness, contrast, saturation, hue_degrees, mean))


def brightness_contrast(image: np.ndarray, mean: float, brightness: float, contrast: float) -> np.ndarray:
    """((x - mean) * contrast + mean) * brightness on uint8 values, rounded and saturated
    (one cv2.addWeighted: twice as fast as a lookup table on a 3-channel image)."""
    return cv2.addWeighted(image, contrast * brightness, image, 0.0, (mean - mean * contrast) * brightness)


def tone_gains(source_skin: np.ndarray, target_skin: np.ndarray, strength: float,
               max_gain: float = 1.6) -> np.ndarray:
    """Per-channel gains re-lighting an object from its source context to its destination.

    They map the mean colour of the object's original surroundings (`source_skin`) to the
    destination's (`target_skin`), as a white-balance transfer: a lesion photographed under
    warm light pasted onto skin under bluish light takes the bluish cast too. `strength` in
    [0, 1] interpolates in log space.
    """
    src = np.maximum(np.asarray(source_skin, dtype=np.float64), 1.0)
    dst = np.maximum(np.asarray(target_skin, dtype=np.float64), 1.0)
    return np.clip((dst / src) ** strength, 1.0 / max_gain, max_gain)


def match_tone(rgba: np.ndarray, source_skin: np.ndarray, target_skin: np.ndarray,
               strength: float, max_gain: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """`tone_gains` applied to RGB (alpha untouched); returns (new rgba, gains)."""
    gains = tone_gains(source_skin, target_skin, strength, max_gain)
    return apply_color(rgba, color_matrix(gains=gains)), gains
