"""Per-foreground and per-background transforms.

Foregrounds are RGBA uint8 crops whose alpha is the instance mask. Colour operations touch
RGB only (the thesis' brightness change also scaled alpha, leaving lesions half transparent
while the label said fully present). Geometric operations move RGB and alpha together, and
rotation draws on an expanded canvas so no corner of the object is ever clipped.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def flip(rgba: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    if horizontal:
        rgba = rgba[:, ::-1]
    if vertical:
        rgba = rgba[::-1]
    return rgba


def rotated_size(width: float, height: float, degrees: float) -> tuple[float, float]:
    """Bounding box of a width×height rectangle rotated by `degrees`."""
    rad = math.radians(degrees)
    c, s = abs(math.cos(rad)), abs(math.sin(rad))
    return width * c + height * s, width * s + height * c


def resize_rgba(rgba: np.ndarray, factor: float) -> np.ndarray:
    """Resize by `factor`: area averaging when shrinking a lot (no aliasing), else bilinear."""
    h, w = rgba.shape[:2]
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    if (new_w, new_h) == (w, h):
        return rgba
    # area averaging only where bilinear would alias (shrinking to under ~60 %)
    interp = cv2.INTER_AREA if factor < 0.6 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgba), (new_w, new_h), interpolation=interp)


def flip_rgba(rgba: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    """Like `flip`, but returns a contiguous array (cv2.flip is faster than a numpy copy)."""
    if horizontal and vertical:
        return cv2.flip(rgba, -1)
    if horizontal:
        return cv2.flip(rgba, 1)
    if vertical:
        return cv2.flip(rgba, 0)
    return rgba


def rotate_expand(rgba: np.ndarray, degrees: float, margin: int = 0, *, trim: bool = False) -> np.ndarray:
    """Rotate by `degrees` (counter-clockwise) on an expanded canvas: nothing is clipped.

    The object first gets a transparent border of `margin` + 1 pixels whose RGB repeats the
    crop's edge colours, and the warp replicates that border into the canvas corners. So
    every transparent pixel carries a plausible colour: bilinear edges and a later blur of
    the alpha never pull black into the object's outline (the dark fringe of naive
    RGBA warping). Multiples of 90° are exact pixel moves; other angles are one bilinear
    warp of all four channels, so RGB and alpha stay aligned.

    With `trim`, only the part of that canvas that can show is made: the box where the
    visible pixels (alpha > 0) land, widened by `margin` + 3 pixels (a blur of radius
    `margin` reaches no further; the rest covers bilinear's footprint and rounding). The
    rest is transparent, and for a rotated lesion it is about half the canvas, so the warp
    and everything done to the result later cost about half as much. (The window's pixels
    are the full canvas's up to the warp's 1/32-pixel rounding, which depends on where the
    window starts: a value may differ by 1 or 2.)
    """
    degrees = degrees % 360.0
    right_angle = degrees in (0.0, 90.0, 180.0, 270.0)
    if right_angle and margin == 0:
        return np.ascontiguousarray(np.rot90(rgba, int(degrees // 90)))
    pad = margin + (0 if right_angle else 1)
    padded = cv2.copyMakeBorder(np.ascontiguousarray(rgba), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if pad:
        padded[:pad, :, 3] = 0
        padded[-pad:, :, 3] = 0
        padded[:, :pad, 3] = 0
        padded[:, -pad:, 3] = 0
    if right_angle:
        out = np.ascontiguousarray(np.rot90(padded, int(degrees // 90)))
        if trim:
            x0, y0, x1, y1 = _visible_window(cv2.extractChannel(out, 3), margin, out.shape[1], out.shape[0])
            out = np.ascontiguousarray(out[y0:y1, x0:x1])
        return out
    h, w = padded.shape[:2]
    bw, bh = rotated_size(w, h, degrees)
    out_w, out_h = math.ceil(bw - 1e-6), math.ceil(bh - 1e-6)
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    matrix[0, 2] += (out_w - 1) / 2.0 - (w - 1) / 2.0
    matrix[1, 2] += (out_h - 1) / 2.0 - (h - 1) / 2.0
    x0, y0, x1, y1 = 0, 0, out_w, out_h
    if trim:
        landed = _landed_box(cv2.extractChannel(padded, 3), matrix)
        if landed is not None:  # where the visible pixels land
            reach = margin + 3  # the blur's radius, bilinear's 1-pixel footprint, rounding
            x0 = max(0, math.floor(landed[0]) - reach)
            y0 = max(0, math.floor(landed[1]) - reach)
            x1 = min(out_w, math.ceil(landed[2]) + 1 + reach)
            y1 = min(out_h, math.ceil(landed[3]) + 1 + reach)
            matrix[0, 2] -= x0
            matrix[1, 2] -= y0
    return cv2.warpAffine(padded, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _landed_box(alpha: np.ndarray, matrix: np.ndarray) -> tuple[float, float, float, float] | None:
    """min x, min y, max x, max y of where `matrix` (2×3) moves the pixels with alpha > 0;
    None when there is none. A linear function's extremes over a region lie on its outer
    outline, at a vertex: only the outline's vertices are mapped."""
    _, visible = cv2.threshold(alpha, 0, 255, cv2.THRESH_BINARY)
    outlines, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not outlines:
        return None
    landed = cv2.transform(np.concatenate(outlines).astype(np.float32), matrix).reshape(-1, 2)
    low, high = landed.min(axis=0), landed.max(axis=0)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def _visible_window(alpha: np.ndarray, margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the pixels with alpha > 0 widened by `margin` + 3, within the image."""
    x, y, rw, rh = cv2.boundingRect(alpha)
    if not rw:
        return 0, 0, width, height
    reach = margin + 3
    return max(0, x - reach), max(0, y - reach), min(width, x + rw + reach), min(height, y + rh + reach)


def scale_rotate(rgba: np.ndarray, factor: float, degrees: float, margin: int = 0) -> np.ndarray:
    """`resize_rgba` then `rotate_expand`."""
    return rotate_expand(resize_rgba(rgba, factor), degrees, margin)


def _gain_lut(gain: float, offset: float) -> np.ndarray:
    values = np.arange(256, dtype=np.float32) * gain + offset
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


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


def brightness_contrast_lut(mean: float, brightness: float, contrast: float) -> np.ndarray:
    """Lookup table for ((x - mean) * contrast + mean) * brightness on uint8 values."""
    return _gain_lut(contrast * brightness, (mean - mean * contrast) * brightness)


def channel_gain_lut(gains: np.ndarray) -> np.ndarray:
    """(256, 1, 3) lookup table multiplying each RGB channel by its gain."""
    values = np.arange(256, dtype=np.float32)[:, None] * np.asarray(gains, dtype=np.float32)[None, :]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).reshape(256, 1, 3)


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
