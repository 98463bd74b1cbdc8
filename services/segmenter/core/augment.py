"""Training augmentation of a whole batch, on whatever device holds it.

The geometric jitter of an image (scale, crop or pad back to the image size, horizontal and
vertical flips, rotation by multiples of 90°) is axis-aligned, so it is a resize followed by
index operations: each image is resized bilinearly to its drawn size (half-pixel centres,
edges clamped, no antialiasing), its frame of the stored size is cropped from the result or
the result is pasted on zeros, and the flips and quarter turns are reversals of rows and
columns and a transpose (AugmentParams). The masks follow the same geometry exactly,
nearest-neighbour, as two integer gathers of stored rows and columns (_nearest_stored), so
they stay exact labels. The colour jitter (brightness, contrast, saturation) is one 3×3
colour matrix and offset per image, applied after the conversion to float.

Two implementations of the same geometry, chosen by the device (augment_batch):
- on CPU, image by image with OpenCV, straight from the training cache (augment_rows_opencv):
  resize on the uint8 pixels, flips and turns, and the colour matrix within the conversion
  to float, while the image is in cache, then its masks and their boxes; no batched torch
  operation, so no torch thread-pool barrier after each small step; about three times
  faster than the batched torch operations on CPU;
- elsewhere (CUDA), batched torch operations (augment_batch_torch): the resize one small
  kernel per image on float32, the colour one batched matrix product.
Their masks are identical; their images differ by the resize's rounding (uint8 vs float32),
at most a level or two of 255 (tests/unit/test_segmenter_core.py).

The parameters of each image are drawn on the host from ``seeding.rng(seed,
"segmenter/augment", draw)`` — the image's position in the training stream — in the same
order as the per-image implementation this replaced, so a resumed run, another number of
processes or another batch composition augments every draw identically.

What differs from the per-image implementation it replaced, by design: on CUDA the resize is
torch's bilinear on float32 rather than ``cv2.resize``'s on uint8 (the same sampling
positions, another rounding), the masks' nearest pixels are taken with half-pixel centres
(computed exactly in integers), contrast pivots on
the mean grey of the stored image (computed once, when the image is cached) instead of that
of the geometrically jittered image, and the result stays in floating point instead of being
rounded back to uint8. The parameters are the same; the exact pixels differ slightly.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from services.common import seeding

#: ITU-R BT.601 luma weights (they sum to 1, which the colour matrix below relies on).
GREY = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class AugmentConfig:
    """Geometric and photometric augmentation, applied identically to image and masks
    (boxes are recomputed from the masks afterwards, so they always agree)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    scale: tuple[float, float] = (0.8, 1.25)


@dataclass(frozen=True)
class AugmentParams:
    """The drawn parameters of a batch of images (host arrays, one entry per image).

    The geometry of image i: resize the stored h×w image to ``size[i]``, take the h×w frame
    whose top-left pixel is ``origin[i]`` in the resized image (a crop when it is larger, the
    resized image pasted on zeros when it is smaller), reverse the frame's rows and columns
    as ``reverse[i]`` says, and transpose it if ``transposed[i]``. The drawn flips
    (horizontal, then vertical) followed by k quarter turns are exactly such reversals and an
    optional transpose (see draw_params), so each output pixel reads one resized pixel."""

    #: (n, 2) int64 size (nh, nw) of the resized image.
    size: np.ndarray
    #: (n, 2) int64 (ty, tx): the frame's origin in the resized image (negative: pasted).
    origin: np.ndarray
    #: (n, 2) bool: whether the frame's rows, its columns, are reversed.
    reverse: np.ndarray
    #: (n,) bool: whether the output is the transposed frame (rot90 by an odd multiple).
    transposed: np.ndarray
    #: (n, 3, 3) colour matrices and (n, 3) offsets mapping uint8 RGB to [0, 1] RGB.
    colour: np.ndarray
    offset: np.ndarray

    def subset(self, positions: Sequence[int]) -> AugmentParams:
        """The parameters of the images at ``positions``."""
        index = np.asarray(positions, dtype=np.int64)
        return AugmentParams(self.size[index], self.origin[index], self.reverse[index], self.transposed[index],
                             self.colour[index], self.offset[index])


def draw_params(seed: int, draws: Sequence[int], sizes: Sequence[tuple[int, int]], mean_grey: Sequence[float],
                cfg: AugmentConfig) -> AugmentParams:
    """The parameters of the images at stream positions ``draws`` (sizes (h, w) and mean
    grey levels of the stored images), each from its own stream (module docstring).

    Only the draws run per image (each image has its own generator); the geometry and colour
    matrices are computed for the whole batch at once, with the same float64 operations in
    the same order as the per-image formulas (which the comments give)."""
    n = len(draws)
    scale = np.empty(n)
    u = np.empty((n, 2))
    flips = np.empty((n, 2))
    quarter_turns = np.zeros(n, dtype=np.int64)
    jitter = np.empty((n, 3))  # brightness b, contrast c, saturation sat
    for k, draw in enumerate(draws):
        rng = seeding.rng(seed, "segmenter/augment", draw)
        scale[k] = rng.uniform(*cfg.scale)
        u[k] = rng.random(2)
        flips[k] = rng.random(2)
        if cfg.rot90:
            quarter_turns[k] = rng.integers(0, 4)
        jitter[k] = [rng.uniform(1 - j, 1 + j) for j in (cfg.brightness, cfg.contrast, cfg.saturation)]
    hw = np.asarray(sizes, dtype=np.float64).reshape(n, 2)
    # The image resized by s to nh×nw (rounded half to even, as Python's round) is cropped
    # (s > 1) or pasted (s < 1) at an offset drawn from u.
    resized = np.maximum(1, np.rint(hw * scale[:, None]))
    spare = np.abs(resized - hw)
    offset_yx = np.minimum(np.floor(u * (spare + 1)), spare)
    origin = np.where(resized > hw, offset_yx, -offset_yx)
    # Flips (horizontal, vertical), then k quarter turns (np.rot90: k = 1 is the transpose of
    # the horizontally flipped frame, k = 2 both flips, k = 3 the transpose of the vertically
    # flipped frame): rows reversed iff vflip xor k ∈ {2, 3}, columns iff hflip xor k ∈ {1, 2}.
    hflip, vflip = flips[:, 0] < cfg.hflip, flips[:, 1] < cfg.vflip
    reverse = np.stack([vflip ^ (quarter_turns >= 2), hflip ^ ((quarter_turns == 1) | (quarter_turns == 2))], axis=1)
    # brightness b, contrast c around the mean grey (b·mu after brightness), saturation
    # sat towards each pixel's grey: x ↦ c·b·S·x + (1 − c)·b·mu, S = sat·I + (1 − sat)·1·greyᵀ
    # (S·1 = 1 since the grey weights sum to 1), then to [0, 1].
    b, c, sat = jitter[:, 0, None, None], jitter[:, 1, None, None], jitter[:, 2, None, None]
    saturate = sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), GREY)
    colour = c * b * saturate / 255.0
    offset = np.repeat((1 - jitter[:, 1]) * jitter[:, 0] * np.asarray(mean_grey, dtype=np.float64) / 255.0, 3).reshape(n, 3)
    return AugmentParams(resized.astype(np.int64), origin.astype(np.int64), reverse, quarter_turns % 2 == 1,
                         colour, offset)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor,
                  params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` (n×H×W×3 uint8) and their instance ``masks`` (m×H×W uint8,
    ``owner[i]`` the image of mask i, in order of images), all with the same output
    orientation (``params`` either all transposed or none: the caller groups them). Returns
    float32 images in [0, 1] (n×3×H'×W') and uint8 masks, on the images' device: on CPU from
    OpenCV and numpy, one image at a time (augment_batch_opencv), elsewhere from batched torch
    operations (augment_batch_torch). Square images need the grouping too: the masks of
    transposed ones are read along swapped axes."""
    if images.device.type == "cpu":
        return augment_batch_opencv(images, masks, owner, params)
    return augment_batch_torch(images, masks, owner, params)


def _check_one_orientation(params: AugmentParams) -> None:
    if len(params.transposed) and not np.all(params.transposed == params.transposed[0]):
        raise ValueError("augmentation needs images of one output orientation: group them by params.transposed")


def augment_batch_opencv(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor,
                         params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """augment_batch on CPU (augment_rows_opencv of every image, empty masks kept); the
    masks must come in order of images, as augment_batch says."""
    n = images.shape[0]
    owners = owner.numpy()
    if np.any(np.diff(owners) < 0):
        raise ValueError("augment_batch_opencv needs the masks in order of their images (owner sorted)")
    mask_start = np.searchsorted(owners, np.arange(n + 1))
    out = augment_rows_opencv(images.numpy(), range(n), masks.numpy(), mask_start, params, drop_empty=False)
    return out.images, out.masks


@dataclass(frozen=True)
class AugmentedRows:
    """What augment_rows_opencv makes of a batch of cached images."""

    images: torch.Tensor  # n×3×H'×W' float32 in [0, 1]
    masks: torch.Tensor  # m'×H'×W' uint8: the kept masks, image by image
    boxes: torch.Tensor  # m'×4 float32 (x0, y0, x1, y1), x1/y1 one past the last pixel (masks_to_boxes)
    mask_rows: np.ndarray  # m' int64: each kept mask's row in the cached masks
    counts: list[int]  # kept masks per image


def augment_rows_opencv(images: np.ndarray, rows: Sequence[int], masks: np.ndarray, mask_start: np.ndarray,
                        params: AugmentParams, drop_empty: bool = True) -> AugmentedRows:
    """Images ``rows`` of a cache (``images`` N×H×W×3 uint8; the masks of image r are rows
    ``mask_start[r]`` … ``mask_start[r + 1]`` − 1 of ``masks``, M×H×W uint8) augmented by
    ``params`` (one entry per row, one output orientation), on CPU, image by image, so that
    each image stays in cache from its resize to its output planes: ``cv2.resize`` (bilinear,
    half-pixel centres, edges clamped, on the uint8 pixels), the frame cropped or pasted on
    zeros, one ``cv2.flip``/``cv2.rotate``/``cv2.transpose`` for the reversals and the
    transpose, the conversion to float32 and the colour matrix as one ``cv2.transform``,
    clamped, split into the output planes; each mask by two integer gathers of its nearest
    stored rows and columns (_nearest_stored) and its box from ``cv2.boundingRect``.
    ``drop_empty`` drops the masks the augmentation leaves empty (pushed out of the frame).

    It reads the cache in place and runs no batched torch operation: about three times
    faster on CPU than the batched torch operations, and free of torch's thread-pool barriers
    after every small operation (OpenCV may still split a large resize over its own threads).
    Raises ValueError when ``params`` mixes output orientations."""
    _check_one_orientation(params)
    n, (h, w) = len(rows), images.shape[1:3]
    transposed = bool(n and params.transposed[0])
    out_h, out_w = (w, h) if transposed else (h, w)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32)
    total = int(sum(mask_start[r + 1] - mask_start[r] for r in rows))
    out_masks = torch.zeros((total, out_h, out_w), dtype=torch.uint8)
    planes, sampled = out.numpy(), out_masks.numpy()
    boxes = np.zeros((total, 4), np.float32)
    mask_rows = np.zeros(total, np.int64)
    counts = [0] * n
    matrices = np.concatenate([params.colour, params.offset[:, :, None]], axis=2).astype(np.float32)
    kept = 0
    for k, r in enumerate(rows):
        frame = _Frame.of(params, k, h, w)
        _augment_image_opencv(images[r], frame, matrices[k], planes[k])
        for i in range(int(mask_start[r]), int(mask_start[r + 1])):
            # A dropped mask is all zeros (out_masks starts as zeros and a mask writes only
            # its frame region), so the next mask can reuse its slot as it is.
            frame.sample(masks[i:i + 1], sampled[kept:kept + 1])
            x, y, bw, bh = cv2.boundingRect(sampled[kept])
            if bw == 0 and drop_empty:
                continue
            boxes[kept] = (x, y, x + bw, y + bh)
            mask_rows[kept] = i
            counts[k] += 1
            kept += 1
    return AugmentedRows(out, out_masks[:kept], torch.from_numpy(boxes[:kept]), mask_rows[:kept], counts)


@dataclass(frozen=True)
class _Frame:
    """One image's geometry (AugmentParams) as the CPU path uses it: the h×w image resized to
    ``size``; its rows ``y0:y1`` and columns ``x0:x1`` are the part inside the frame, which
    lands at ``y0 − ty``, ``x0 − tx`` before the reversals (``origin`` = (ty, tx)); the rest
    of the frame is padding."""

    h: int
    w: int
    size: tuple[int, int]
    origin: tuple[int, int]
    y0: int
    y1: int
    x0: int
    x1: int
    reverse: tuple[bool, bool]
    transposed: bool

    @staticmethod
    def of(params: AugmentParams, k: int, h: int, w: int) -> _Frame:
        (nh, nw), (ty, tx) = params.size[k].tolist(), params.origin[k].tolist()
        return _Frame(h, w, (nh, nw), (ty, tx), max(ty, 0), min(ty + h, nh), max(tx, 0), min(tx + w, nw),
                      (bool(params.reverse[k, 0]), bool(params.reverse[k, 1])), bool(params.transposed[k]))

    @property
    def fills(self) -> bool:
        """Whether the resized image covers the whole frame (no padding)."""
        return self.y1 - self.y0 == self.h and self.x1 - self.x0 == self.w

    @property
    def landing(self) -> tuple[slice, slice]:
        """Where the part inside the frame lands in it, before the reversals."""
        ty, tx = self.origin
        return slice(self.y0 - ty, self.y1 - ty), slice(self.x0 - tx, self.x1 - tx)

    @functools.cached_property
    def _nearest(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored rows and columns nearest to the part's resized rows and columns."""
        (nh, nw) = self.size
        return (_nearest_stored(np.arange(self.y0, self.y1), self.h, nh),
                _nearest_stored(np.arange(self.x0, self.x1), self.w, nw))

    def sample(self, masks: np.ndarray, out: np.ndarray) -> None:
        """Nearest-neighbour ``masks`` (c×h×w uint8) of this frame into ``out`` (c×H'×W',
        zeros where the frame is padding): one gather of whole stored rows, one of columns,
        written through reversed and transposed views of ``out``."""
        rows, cols = self._nearest
        dest = out.transpose(0, 2, 1) if self.transposed else out
        if self.reverse[0]:
            dest = dest[:, ::-1]
        if self.reverse[1]:
            dest = dest[:, :, ::-1]
        into_rows, into_cols = self.landing
        dest[:, into_rows, into_cols] = masks.take(rows, axis=1).take(cols, axis=2)


#: cv2 codes for a frame's reversals (rows, columns) before a transpose (AugmentParams):
#: transpose∘(columns reversed) is a quarter turn counter-clockwise, transpose∘(rows
#: reversed) one clockwise.
_FLIP_CODE = {(True, False): 0, (False, True): 1, (True, True): -1}
_TURN_CODE = {(False, True): cv2.ROTATE_90_COUNTERCLOCKWISE, (True, False): cv2.ROTATE_90_CLOCKWISE}


def _augment_image_opencv(image: np.ndarray, frame: _Frame, matrix: np.ndarray, planes: np.ndarray) -> None:
    """One image of augment_rows_opencv (h×w×3 uint8), written into its 3 output ``planes``."""
    nh, nw = frame.size
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    part = resized[frame.y0:frame.y1, frame.x0:frame.x1]
    if frame.fills:
        pixels = part
    else:  # pasted on zeros
        pixels = np.zeros((frame.h, frame.w, 3), np.uint8)
        pixels[frame.landing] = part
    reverse = frame.reverse
    if frame.transposed:
        if reverse in _TURN_CODE:
            pixels = cv2.rotate(pixels, _TURN_CODE[reverse])
        else:
            pixels = cv2.transpose(pixels)
            if reverse == (True, True):  # transpose∘(both reversed) = (both reversed)∘transpose
                pixels = cv2.flip(pixels, -1)
    elif reverse in _FLIP_CODE:
        pixels = cv2.flip(pixels, _FLIP_CODE[reverse])
    coloured = cv2.transform(pixels.astype(np.float32), matrix)
    np.clip(coloured, 0.0, 1.0, out=coloured)
    cv2.split(coloured, [planes[0], planes[1], planes[2]])


def augment_batch_torch(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor,
                        params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """augment_batch from batched torch operations, on the images' device (the path on the
    GPU; it runs on CPU too): augment_images_torch, and the masks by two integer gathers for
    the whole batch (sample_masks). Exactly the masks of augment_batch_opencv; the images
    differ from it by the rounding of the resize (float32 here, uint8 there)."""
    _check_one_orientation(params)
    transposed = bool(images.shape[0] and params.transposed[0])
    return augment_images_torch(images, params), sample_masks(masks, owner, params, transposed)


def augment_images_torch(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """The images of augment_batch from batched torch operations, on the images' device (the
    path on the GPU; it runs on CPU too): each image resized bilinearly on float32 copies
    (``F.interpolate``, half-pixel centres, edges clamped, no antialiasing), its frame cropped
    or pasted on zeros, rows and columns reversed; then, for the whole batch, the transpose
    within one contiguous copy and the colour jitter as one batched matrix product."""
    n, h, w, _ = images.shape
    transposed = bool(n and params.transposed[0])
    device = images.device
    frames = images.new_zeros((n, h, w, 3), dtype=torch.float32)
    for k in range(n):
        frame = _Frame.of(params, k, h, w)
        resized = F.interpolate(images[k:k + 1].permute(0, 3, 1, 2).float(), size=frame.size, mode="bilinear",
                                align_corners=False, antialias=False)[0].permute(1, 2, 0)
        part = resized[frame.y0:frame.y1, frame.x0:frame.x1]
        rows, cols = frame.landing
        if frame.reverse[0]:  # torch has no negative steps: mirror the part and where it lands
            part, rows = part.flip(0), slice(h - rows.stop, h - rows.start)
        if frame.reverse[1]:
            part, cols = part.flip(1), slice(w - cols.stop, w - cols.start)
        frames[k, rows, cols] = part
    source = frames.permute(0, 3, 2, 1) if transposed else frames.permute(0, 3, 1, 2)
    out_h, out_w = source.shape[2:]
    colour = torch.as_tensor(params.colour, dtype=torch.float32).to(device)
    offset = torch.as_tensor(params.offset, dtype=torch.float32).to(device)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32, device=device)
    pixels = source.contiguous().view(n, 3, -1)
    torch.baddbmm(offset[:, :, None], colour, pixels, out=out.view(n, 3, -1))
    return out.clamp_(0.0, 1.0)


def _nearest_stored(q: np.ndarray, size: int, resized: np.ndarray | int) -> np.ndarray:
    """The stored pixel nearest to resized pixel ``q`` along an axis of ``size`` stored and
    ``resized`` resized pixels: q's centre lies at (q + ½)·size/resized − ½ in the stored
    image, so the nearest stored pixel is ⌊(2q + 1)·size / (2·resized)⌋ (ties upwards, exact
    in integers; within the axis for 0 ≤ q < resized)."""
    return (2 * q + 1) * size // (2 * resized)


def _source_pixels(origin: np.ndarray, resized: np.ndarray, reverse: np.ndarray, size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of ``size`` pixels (the stored image's and the frame's), the stored
    pixel nearest to each frame pixel of every image: frame pixel p is resized pixel
    q = p + origin (_nearest_stored). Returns (the indices, clamped into the axis; whether q
    exists: elsewhere the frame is padding), each n×size, reversed where ``reverse``."""
    q = origin[:, None] + np.arange(size)
    index = np.clip(_nearest_stored(q, size, resized[:, None]), 0, size - 1)
    inside = (q >= 0) & (q < resized[:, None])
    index, inside = (np.where(reverse[:, None], a[:, ::-1], a) for a in (index, inside))
    return torch.from_numpy(index).to(device), torch.from_numpy(inside).to(device)


def sample_masks(masks: torch.Tensor, owner: torch.Tensor, params: AugmentParams, transposed: bool) -> torch.Tensor:
    """Nearest-neighbour resampling of uint8 ``masks`` (m×H×W, ``owner[i]`` the image of
    mask i) by the geometry of ``params`` (all of one orientation, ``transposed`` or not), to
    m×W×H when transposed, else m×H×W.

    Every map is axis-aligned, so an output row reads a single stored row — a single stored
    column when ``transposed`` — and an output column a single stored column (row): the result
    is two integer gathers on the uint8 masks, exact labels by construction and several times
    faster on CPU than resampling float copies. A mask pixel is set where the image pixel
    comes from the resized image (not padding) and its nearest stored pixel is set."""
    m, h, w = masks.shape
    out_h, out_w = (w, h) if transposed else (h, w)
    if m == 0:
        return masks.new_zeros((0, out_h, out_w))
    device = masks.device
    rows, row_inside = _source_pixels(params.origin[:, 0], params.size[:, 0], params.reverse[:, 0], h, device)
    cols, col_inside = _source_pixels(params.origin[:, 1], params.size[:, 1], params.reverse[:, 1], w, device)
    rows, row_inside, cols, col_inside = (t.index_select(0, owner) for t in (rows, row_inside, cols, col_inside))
    # picked[i, r] = masks[i, rows[i, r]]: whole stored rows, one memcpy each.
    first = (rows + torch.arange(m, device=device)[:, None] * h).view(-1)
    picked = masks.reshape(m * h, w).index_select(0, first).view(m, h, w)
    if transposed:  # out[i, y, x] = picked[i, x, cols[i, y]]
        sampled = torch.gather(picked.transpose(1, 2), 1, cols[:, :, None].expand(m, out_h, out_w))
        inside = col_inside[:, :, None] & row_inside[:, None, :]
    else:  # out[i, y, x] = picked[i, y, cols[i, x]]
        sampled = torch.gather(picked, 2, cols[:, None, :].expand(m, out_h, out_w))
        inside = row_inside[:, :, None] & col_inside[:, None, :]
    return sampled.mul_(inside)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """m×4 float32 boxes (x0, y0, x1, y1) of non-empty m×H×W masks, x1/y1 one past the last
    pixel (so a one-pixel instance still has positive size); on the masks' device."""
    m, h, w = masks.shape
    if m == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows = masks.amax(dim=2).to(torch.uint8)  # m×H: rows that hold the instance
    cols = masks.amax(dim=1).to(torch.uint8)
    y0 = rows.argmax(dim=1)  # argmax returns the first maximal index
    x0 = cols.argmax(dim=1)
    y1 = h - rows.flip(1).argmax(dim=1)
    x1 = w - cols.flip(1).argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
