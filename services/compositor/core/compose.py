"""Copy-paste composition of one image.

Every random choice of image `index` comes from one generator, services.common.seeding's
stream (seed, "compositor/image", index), so an image depends on nothing but (seed, index,
params, assets): any number of worker processes produce byte-identical output.

Labels follow what the eye sees. Each pasted object gets its own weight map: its blending
alpha, multiplied by (1 - alpha) of every later paste on top of it. An object's mask is
where its weight exceeds 0.5 - i.e. where it contributes more than half of the pixel. So
masks of different objects never overlap, a later paste removes the pixels it covers from
earlier masks (exactly, for hard alpha), every mask pixel is visibly the object's, and with
Gaussian feathering the mask is the object's true outline (the ramp crosses 0.5 on it).
"""
from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import cv2
import numpy as np

from services.common.seeding import rng as seeded_rng
from services.compositor.config import ComposeParams
from services.compositor.core.transforms import (
    ForegroundPyramid,
    apply_color,
    brightness_contrast,
    color_matrix,
    flip_rgba,
    object_mean_grey,
    rotated_size,
    tone_gains,
    warp_foreground,
)

_POISSON_PAD = 4
_LUMA = (0.299, 0.587, 0.114)


class Assets(Protocol):
    """Where composition gets its inputs; implementations may load lazily and cache."""

    num_foregrounds: int
    num_backgrounds: int

    def foreground(self, i: int) -> tuple[np.ndarray, int]:
        """(RGBA uint8 crop, category id) of foreground `i`."""

    def background(self, i: int) -> np.ndarray:
        """RGB uint8 background `i` (any size; cropped/resized to the output size here)."""

    def foreground_stats(self, i: int, dark_threshold: int) -> ForegroundStats:
        """`foreground_stats` of foreground `i`, computed once per asset (not once per paste)."""

    def foreground_pyramid(self, i: int, margin: int) -> ForegroundPyramid:
        """Foreground `i` prepared for warping (`ForegroundPyramid(rgba, margin)`), made once
        per asset (not once per paste)."""


@dataclass(frozen=True)
class ForegroundStats:
    """What colour jitter and tone matching need to know about a foreground's pixels.

    Measured on the asset itself rather than on each resized paste: a mean does not depend
    on the paste's scale, and this saves two colour conversions and masked means per object.
    A foreground set records them for each asset at full size (`stats_record`, for the
    default dark_threshold), so composition does not measure them in every job and worker;
    for a set without them (or another threshold) they are measured on the asset as the
    Assets hold it (StoreAssets shrinks very large ones).
    """

    mean_grey: float               # of the object (alpha ≥ 128); the contrast pivot
    skin: np.ndarray | None        # mean RGB of the original surroundings (alpha 0, not dark)


def foreground_stats(rgba: np.ndarray, dark_threshold: int) -> ForegroundStats:
    rgba = np.ascontiguousarray(rgba)
    return ForegroundStats(object_mean_grey(rgba), _source_skin(rgba, dark_threshold))


def stats_record(stats: ForegroundStats, dark_threshold: int) -> dict[str, Any]:
    """The JSON a foreground set keeps of an asset's stats (floats round-trip exactly)."""
    return {"dark_threshold": int(dark_threshold), "mean_grey": float(stats.mean_grey),
            "skin": None if stats.skin is None else [float(v) for v in stats.skin]}


def _level(value: Any) -> bool:
    """A finite grey or colour level in [0, 255] (a JSON number, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 255.0


def valid_stats_record(record: Any) -> bool:
    """Whether `record` is what `stats_record` writes (sets.load_set checks every entry's)."""
    if not isinstance(record, dict) or set(record) != {"dark_threshold", "mean_grey", "skin"}:
        return False
    threshold, skin = record["dark_threshold"], record["skin"]
    return (isinstance(threshold, int) and _level(threshold) and _level(record["mean_grey"])
            and (skin is None or (isinstance(skin, list) and len(skin) == 3 and all(_level(v) for v in skin))))


def stats_from_record(record: Mapping[str, Any] | None, dark_threshold: int) -> ForegroundStats | None:
    """The stats a set recorded (`valid_stats_record`), if measured with `dark_threshold`."""
    if record is None or record["dark_threshold"] != dark_threshold:
        return None
    skin = record["skin"]
    return ForegroundStats(float(record["mean_grey"]), None if skin is None else np.asarray(skin, dtype=np.float64))


class DerivedForegrounds(abc.ABC):
    """What a foreground's pastes need that depends on the asset alone (colour statistics,
    the warp pyramid): made at its first paste and kept, as a foreground is pasted many
    times. A mixin for Assets implementations that provide `foreground(i)`."""

    @abc.abstractmethod
    def foreground(self, i: int) -> tuple[np.ndarray, int]:
        """(RGBA uint8 crop, category id) of foreground `i`."""

    def foreground_stats(self, i: int, dark_threshold: int) -> ForegroundStats:
        def make() -> ForegroundStats:
            recorded = self.recorded_stats(i, dark_threshold)
            return recorded if recorded is not None else foreground_stats(self.foreground(i)[0], dark_threshold)

        return self._derived(("stats", i, dark_threshold), make)

    def recorded_stats(self, i: int, dark_threshold: int) -> ForegroundStats | None:
        """Stats of foreground `i` measured when its set was made (none here)."""
        return None

    def foreground_pyramid(self, i: int, margin: int) -> ForegroundPyramid:
        return self._derived(("pyramid", i, margin), lambda: ForegroundPyramid(self.foreground(i)[0], margin))

    def _derived(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """The value cached under `key`, made by `make()` at first use."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]


@dataclass
class InMemoryAssets(DerivedForegrounds):
    """Assets held in lists (tests, small sets)."""

    foregrounds: Sequence[np.ndarray]
    categories: Sequence[int]
    backgrounds: Sequence[np.ndarray]

    @property
    def num_foregrounds(self) -> int:
        return len(self.foregrounds)

    @property
    def num_backgrounds(self) -> int:
        return len(self.backgrounds)

    def foreground(self, i: int) -> tuple[np.ndarray, int]:
        return self.foregrounds[i], int(self.categories[i])

    def background(self, i: int) -> np.ndarray:
        return self.backgrounds[i]


@dataclass
class Composite:
    image: np.ndarray                 # S×S×3 uint8
    masks: np.ndarray                 # N×S×S bool, one per kept instance, disjoint; a view of a
    #                                   column-major S×S×N array (each mask stored column by column)
    labels: np.ndarray                # N int64 category ids
    audit: dict[str, Any] = field(default_factory=dict)


def rng_for(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index`: the shared seed derivation's stream
    (seed, "compositor/image", index)."""
    return seeded_rng(int(seed), "compositor/image", int(index))


def _prepare_background(bg: np.ndarray, p: ComposeParams, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    size = p.output_size
    h, w = bg.shape[:2]
    side = min(h, w)
    y0 = int(rng.integers(0, h - side + 1)) if h > side else 0
    x0 = int(rng.integers(0, w - side + 1)) if w > side else 0
    square = bg[y0:y0 + side, x0:x0 + side]
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        square = cv2.resize(np.ascontiguousarray(square), (size, size), interpolation=interp)
    hflip = vflip = False
    k = 0
    if p.background_flip:
        hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        k = int(rng.integers(0, 4))
        square = flip_rgba(np.ascontiguousarray(square), hflip, vflip)
        if k:
            square = cv2.rotate(square, (cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180,
                                         cv2.ROTATE_90_CLOCKWISE)[k - 1])
    out = np.ascontiguousarray(square)
    if out is bg or out.base is not None:
        out = out.copy()
    u = rng.random(2).tolist()
    b, c = p.background_brightness.at(u[0]), p.background_contrast.at(u[1])
    if b != 1.0 or c != 1.0:
        mean = float(np.dot(cv2.mean(out)[:3], _LUMA))  # mean grey, without a grey image
        out = brightness_contrast(out, mean, b, c)
    audit = {"crop": [x0, y0, side], "flip_h": hflip, "flip_v": vflip, "rot90": k,
             "brightness": round(b, 6), "contrast": round(c, 6)}
    return out, audit


def _find_position(rng: np.random.Generator, size: int, tw: int, th: int,
                   placed: list[tuple[int, int, int, int]], p: ComposeParams,
                   usable_int: np.ndarray | None) -> tuple[int, int] | None:
    """Top-left of the object's tight box: the first of `max_placement_attempts` random
    candidates that overlaps no placed box (x0, y0, x1, y1) by an IoU over
    `max_overlap_iou` (at 0: not at all) and lies on enough usable background; None when
    none does. The candidates are drawn in two calls, and tested in plain Python: on a
    handful of boxes that is faster than numpy."""
    n = p.max_placement_attempts
    xs = rng.integers(0, size - tw + 1, n).tolist()
    ys = rng.integers(0, size - th + 1, n).tolist()
    area, max_iou = tw * th, p.max_overlap_iou
    need = p.min_usable_background * area
    for x, y in zip(xs, ys):
        x1, y1 = x + tw, y + th
        ok = True
        for a0, b0, a1, b1 in placed:
            iw, ih = min(x1, a1) - max(x, a0), min(y1, b1) - max(y, b0)
            if iw > 0 and ih > 0 and iw * ih > max_iou * (area + (a1 - a0) * (b1 - b0) - iw * ih):
                ok = False
                break
        if ok and usable_int is not None:
            ok = usable_int[y1, x1] - usable_int[y, x1] - usable_int[y1, x] + usable_int[y, x] >= need
        if ok:
            return x, y
    return None


def _source_skin(rgba: np.ndarray, dark_threshold: int) -> np.ndarray | None:
    """Mean RGB of the object's original surroundings (alpha 0, not dark), if enough is kept."""
    context = (rgba[..., 3] == 0) & (cv2.cvtColor(rgba, cv2.COLOR_RGBA2GRAY) >= dark_threshold)
    if np.count_nonzero(context) < 16:
        return None
    return np.asarray(cv2.mean(rgba, mask=context.astype(np.uint8))[:3])


def _destination_skin(canvas: np.ndarray, usable: np.ndarray, usable_int: np.ndarray,
                      box: tuple[int, int, int, int]) -> np.ndarray | None:
    """Mean RGB (of the canvas before this paste) over the usable background (the
    background's pixels not darker than dark_threshold, `usable`, with its integral image)
    around and under the object's box."""
    bx, by, tw, th = box
    gx, gy = max(4, tw // 4), max(4, th // 4)
    x0, y0 = max(0, bx - gx), max(0, by - gy)
    x1, y1 = min(canvas.shape[1], bx + tw + gx), min(canvas.shape[0], by + th + gy)
    if usable_int[y1, x1] - usable_int[y0, x1] - usable_int[y1, x0] + usable_int[y0, x0] < 16:
        return None
    return np.asarray(cv2.mean(canvas[y0:y1, x0:x1], mask=usable[y0:y1, x0:x1])[:3])


@functools.lru_cache(maxsize=8)
def _feather_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    size = round(sigma * 3 * 2 + 1) | 1
    kernel = cv2.getGaussianKernel(size, sigma, cv2.CV_32F)
    return kernel, kernel * np.float32(1.0 / 255.0)


def _alpha_for_blend(alpha: np.ndarray, p: ComposeParams) -> np.ndarray:
    if p.blend == "gaussian":
        # the Gaussian's kernels as cv2.GaussianBlur sizes them for 8-bit images (radius
        # ≤ the object's transparent margin), one of them scaled by 1/255: one separable
        # filter pass gives the float alpha directly (3× faster than GaussianBlur + scaling)
        column, row = _feather_kernels(p.blend_sigma)
        return cv2.sepFilter2D(alpha, cv2.CV_32F, row, column, borderType=cv2.BORDER_CONSTANT)
    if p.blend == "poisson":
        return (alpha >= 128).astype(np.float32)
    return np.multiply(alpha, np.float32(1.0 / 255.0), dtype=np.float32)


def compose_image(assets: Assets, params: ComposeParams, seed: int, index: int) -> Composite:
    """Compose image `index` of the sequence defined by `seed` (params must be validated)."""
    p = params
    size = p.output_size
    rng = rng_for(seed, index)
    bg_index = int(rng.integers(0, assets.num_backgrounds))
    canvas, bg_audit = _prepare_background(assets.background(bg_index), p, rng)
    bg_audit["index"] = bg_index
    # the background's usable pixels (not dark), for placement and for tone matching
    usable = (cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY) >= p.dark_threshold).view(np.uint8)
    usable_int = cv2.integral(usable)

    margin = math.ceil(3 * p.blend_sigma) if p.blend == "gaussian" else (1 if p.blend == "poisson" else 0)
    count = int(rng.integers(p.min_objects, p.max_objects + 1))
    placed_boxes: list[tuple[int, int, int, int]] = []
    weights: list[np.ndarray] = []
    pasted_masks: list[np.ndarray | None] = []  # weights > 0.5 while nothing covers the object
    regions: list[tuple[int, int, int, int]] = []
    objects: list[dict[str, Any]] = []
    skipped = 0
    for _ in range(count):
        fi = int(rng.integers(0, assets.num_foregrounds))
        rgba, category = assets.foreground(fi)
        u = rng.random(8).tolist()  # every draw of the object's transform in one call
        hflip, vflip = p.flip and u[0] < 0.5, p.flip and u[1] < 0.5
        scale, angle = p.scale.at(u[2]), p.rotation.at(u[3])
        jitter = dict(brightness=p.brightness.at(u[4]), contrast=p.contrast.at(u[5]),
                      saturation=p.saturation.at(u[6]), hue_degrees=p.hue.at(u[7]))
        h, w = rgba.shape[:2]
        factor = scale * size / max(h, w)
        rw, rh = rotated_size(w * factor, h * factor, angle)
        if max(rw, rh) > size - 2:  # larger than the canvas: scale down to fit, never clip
            factor *= (size - 2) / max(rw, rh)
        stats = assets.foreground_stats(fi, p.dark_threshold)
        # colour is applied after placement, in one pass with the tone gains (it never
        # changes alpha, so placement does not depend on it)
        fg = warp_foreground(assets.foreground_pyramid(fi, margin), factor, angle, hflip, vflip, margin)
        alpha8 = cv2.extractChannel(fg, 3)
        hard = alpha8 >= 128
        tx0, ty0, tw, th = cv2.boundingRect(hard.view(np.uint8))  # tight box of the object
        record: dict[str, Any] = {
            "foreground": fi, "category_id": int(category), "flip_h": hflip, "flip_v": vflip,
            "scale": round(scale, 6), "rotation": round(angle, 6),
            **{k: round(v, 6) for k, v in jitter.items()},
        }
        if tw == 0:
            record["status"] = "empty"
            skipped += 1
            objects.append(record)
            continue
        pos = None if (tw > size or th > size) else _find_position(
            rng, size, tw, th, placed_boxes, p, usable_int if p.min_usable_background > 0 else None)
        if pos is None:
            record["status"] = "skipped"
            skipped += 1
            objects.append(record)
            continue
        bx, by = pos
        ox, oy = bx - tx0, by - ty0  # crop origin in image coordinates (may be negative)
        gains = None
        if p.tone_match > 0 and stats.skin is not None:
            target = _destination_skin(canvas, usable, usable_int, (bx, by, tw, th))
            if target is not None:
                gains = tone_gains(stats.skin, target, p.tone_match)
                record["tone_gains"] = [round(float(g), 6) for g in gains]
        color = None
        if gains is not None or any(v != (0.0 if k == "hue_degrees" else 1.0) for k, v in jitter.items()):
            mean_grey = stats.mean_grey if jitter["contrast"] != 1.0 else 128.0
            color = color_matrix(**jitter, mean_grey=mean_grey, gains=gains)
        ch, cw = fg.shape[:2]
        ix0, iy0, ix1, iy1 = max(0, ox), max(0, oy), min(size, ox + cw), min(size, oy + ch)
        inside = (slice(iy0 - oy, iy1 - oy), slice(ix0 - ox, ix1 - ox))  # the part on the canvas
        alpha = np.ascontiguousarray(_alpha_for_blend(alpha8, p)[inside])
        rest = 1.0 - alpha  # what this object leaves of the pixels below it
        if p.blend == "poisson":
            if color is not None:
                fg = apply_color(fg, color)
            canvas = _poisson_paste(canvas, fg, hard, (bx, by, tw, th))
        else:
            rgb = cv2.cvtColor(fg[inside], cv2.COLOR_RGBA2RGB)
            if color is not None:  # RGB only: the 3×4 part of the RGBA matrix
                rgb = cv2.transform(rgb, color[:3, [0, 1, 2, 4]])
            region = np.ascontiguousarray(canvas[iy0:iy1, ix0:ix1])
            canvas[iy0:iy1, ix0:ix1] = cv2.blendLinear(rgb, region, alpha, rest)
        # occlusion: each earlier object's weight map (over its own canvas region) loses
        # (1 - alpha) of this one where the regions intersect
        for k, (wmap, (rx0, ry0, rx1, ry1)) in enumerate(zip(weights, regions)):
            x0, y0, x1, y1 = max(rx0, ix0), max(ry0, iy0), min(rx1, ix1), min(ry1, iy1)
            if x0 < x1 and y0 < y1:
                wmap[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] *= rest[y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]
                pasted_masks[k] = None  # occluded: its mask is recomputed from the weights
        mask = alpha > 0.5
        weights.append(alpha)
        pasted_masks.append(mask)
        regions.append((ix0, iy0, ix1, iy1))
        placed_boxes.append((bx, by, bx + tw, by + th))
        record.update(status="placed", box=[bx, by, tw, th], pasted_area=int(np.count_nonzero(mask)))
        objects.append(record)

    labels: list[int] = []
    kept: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
    dropped = 0
    placed_records = [r for r in objects if r["status"] == "placed"]
    for record, wmap, as_pasted, box in zip(placed_records, weights, pasted_masks, regions):
        pasted = record["pasted_area"]
        if as_pasted is None:
            mask = wmap > 0.5
            visible = int(np.count_nonzero(mask))
        else:  # never occluded: the mask as pasted
            mask, visible = as_pasted, pasted
        record["visible_area"] = visible
        if visible == 0 or visible < p.min_visible_fraction * pasted:
            record["instance"] = -1
            record["status"] = "dropped"
            dropped += 1
            continue
        record["instance"] = len(kept)
        kept.append((mask, box))
        labels.append(record["category_id"])
    # column-major, as RLE encoding reads masks (masks_to_rle then encodes them without a copy)
    columns = np.zeros((size, size, len(kept)), dtype=bool, order="F")
    for m, (mask, (rx0, ry0, rx1, ry1)) in enumerate(kept):
        columns[ry0:ry1, rx0:rx1, m] = mask
    audit = {"seed": int(seed), "index": int(index), "background": bg_audit, "objects": objects,
             "requested": count, "skipped": skipped, "dropped": dropped}
    return Composite(image=canvas, masks=columns.transpose(2, 0, 1), labels=np.asarray(labels, dtype=np.int64), audit=audit)


def _poisson_paste(canvas: np.ndarray, fg: np.ndarray, hard: np.ndarray,
                   box: tuple[int, int, int, int]) -> np.ndarray:
    """cv2.seamlessClone of the object's hard mask with its tight box at `box` (x, y, w, h).

    The canvas is padded by reflection first: seamlessClone needs a border around the
    mask's bounding rectangle, and an object may touch the image edge.
    """
    bx, by, tw, th = box
    pad = _POISSON_PAD
    mask = hard.astype(np.uint8) * 255
    mask[0, :] = mask[-1, :] = 0
    mask[:, 0] = mask[:, -1] = 0
    if not mask.any():
        return canvas
    rx, ry, rw, rh = cv2.boundingRect(mask)
    # boundingRect of the edge-cleared mask may be smaller than the tight box; keep its
    # top-left where the tight box's content lies.
    tx0 = int(np.flatnonzero(hard.any(axis=0))[0])
    ty0 = int(np.flatnonzero(hard.any(axis=1))[0])
    left, top = bx + (rx - tx0) + pad, by + (ry - ty0) + pad
    center = (left + rw // 2, top + rh // 2)
    dst = cv2.copyMakeBorder(canvas, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    src = np.ascontiguousarray(fg[..., :3])
    out = cv2.seamlessClone(src, dst, mask, center, cv2.NORMAL_CLONE)
    return np.ascontiguousarray(out[pad:pad + canvas.shape[0], pad:pad + canvas.shape[1]])
