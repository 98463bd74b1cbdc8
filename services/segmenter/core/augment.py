"""Training augmentation as batched tensor operations, on whatever device holds the batch.

Every image of a step is augmented in one pass over the batch, not one image at a time in
Python: the geometric jitter (scale, crop or pad back to the image size, horizontal and
vertical flips, rotation by multiples of 90°) of every image is one affine map; a single
bilinear ``grid_sample`` resamples the images of the batch, and as every map is axis-aligned,
two integer gathers on the uint8 masks resample the masks nearest-neighbour (sample_masks),
so they stay exact labels; the colour jitter (brightness, contrast, saturation) is one 3×3
colour matrix and offset per image, applied as one batched matrix product. On CUDA this is
a handful of kernels per step; on CPU the same code runs in chunks that stay in cache.

The parameters of each image are drawn on the host from ``seeding.rng(seed,
"segmenter/augment", draw)`` — the image's position in the training stream — in the same
order as the per-image implementation this replaced, so a resumed run, another number of
processes or another batch composition augments every draw identically.

What differs from the per-image (OpenCV/numpy) implementation it replaced, by design: the
resampling is bilinear with zero padding (``grid_sample``'s; nearest, ties to even, for
masks) instead of ``cv2.resize`` followed by a crop or pad, contrast pivots on the mean grey
of the stored image (computed once, when the image is cached) instead of that of the
geometrically jittered image, and the result stays in floating point instead of being
rounded back to uint8. The parameters are the same; the exact pixels differ slightly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from services.common import seeding

#: ITU-R BT.601 luma weights (they sum to 1, which the colour matrix below relies on).
GREY = np.array([0.299, 0.587, 0.114])

#: The output → input map of k quarter turns, k = 0 … 3 (one quarter turn: [[0, −1], [1, 0]]).
_QUARTER_TURNS = np.stack([np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), k) for k in range(4)])


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
    """The drawn parameters of a batch of images (host arrays, one entry per image)."""

    #: (n, 2, 3) affine maps from output to input coordinates (grid_sample's normalised ones).
    theta: np.ndarray
    #: Whether the output is transposed relative to the input (rot90 by an odd multiple).
    transposed: np.ndarray
    #: (n, 3, 3) colour matrices and (n, 3) offsets mapping uint8 RGB to [0, 1] RGB.
    colour: np.ndarray
    offset: np.ndarray

    def subset(self, positions: Sequence[int]) -> AugmentParams:
        """The parameters of the images at ``positions``."""
        index = np.asarray(positions, dtype=np.int64)
        return AugmentParams(self.theta[index], self.transposed[index], self.colour[index], self.offset[index])


def draw_params(seed: int, draws: Sequence[int], sizes: Sequence[tuple[int, int]], mean_grey: Sequence[float],
                cfg: AugmentConfig) -> AugmentParams:
    """The parameters of the images at stream positions ``draws`` (sizes (h, w) and mean
    grey levels of the stored images), each from its own stream (module docstring).

    Only the draws run per image (each image has its own generator); the maps and colour
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
    h, w = hw[:, 0], hw[:, 1]
    # The image resized by s to nh×nw (rounded half to even, as Python's round) is cropped
    # (s > 1) or pasted (s < 1) at an offset drawn from u; t is the output's origin in the
    # resized image's pixels.
    nh, nw = np.maximum(1, np.rint(h * scale)), np.maximum(1, np.rint(w * scale))
    oy = np.minimum(np.floor(u[:, 0] * (np.abs(nh - h) + 1)), np.abs(nh - h))
    ox = np.minimum(np.floor(u[:, 1] * (np.abs(nw - w) + 1)), np.abs(nw - w))
    ty, tx = np.where(nh > h, oy, -oy), np.where(nw > w, ox, -ox)
    sy, sx = nh / h, nw / w
    # Output coordinates → flipped, scaled coordinates → input coordinates:
    # linear = diag(1/sx, 1/sy) · diag(±1, ±1) · rotateᵏ, row by row.
    signs = np.where(flips < np.array([cfg.hflip, cfg.vflip]), -1.0, 1.0)
    theta = np.zeros((n, 2, 3))
    theta[:, :, :2] = (1 / np.stack([sx, sy], axis=1))[:, :, None] * (signs[:, :, None] * _QUARTER_TURNS[quarter_turns])
    theta[:, 0, 2] = 1 / sx - 1 + 2 * tx / (sx * w)
    theta[:, 1, 2] = 1 / sy - 1 + 2 * ty / (sy * h)
    # brightness b, contrast c around the mean grey (b·mu after brightness), saturation
    # sat towards each pixel's grey: x ↦ c·b·S·x + (1 − c)·b·mu, S = sat·I + (1 − sat)·1·greyᵀ
    # (S·1 = 1 since the grey weights sum to 1), then to [0, 1].
    b, c, sat = jitter[:, 0, None, None], jitter[:, 1, None, None], jitter[:, 2, None, None]
    saturate = sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), GREY)
    colour = c * b * saturate / 255.0
    offset = np.repeat((1 - jitter[:, 1]) * jitter[:, 0] * np.asarray(mean_grey, dtype=np.float64) / 255.0, 3).reshape(n, 3)
    return AugmentParams(theta, quarter_turns % 2 == 1, colour, offset)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (n, ·, h, w), align_corners=False)`` for maps with one zero
    linear coefficient per row (ours: scales, flips, quarter turns), where it is exact: each
    coordinate is one broadcast add of a per-column and a per-row term, written in place
    (several times faster on CPU than torch's, which goes through a batched matmul)."""
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    grid = torch.empty((theta.shape[0], h, w, 2), device=theta.device, dtype=theta.dtype)
    for c in range(2):
        per_column = theta[:, c, 0, None] * xs + theta[:, c, 2, None]
        torch.add(per_column[:, None, :], (theta[:, c, 1, None] * ys)[:, :, None], out=grid[..., c])
    return grid


def augment_batch(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor, params: AugmentParams,
                  chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` (n×H×W×3 uint8) and their instance ``masks`` (m×H×W uint8,
    ``owner[i]`` the image of mask i), all with the same output orientation (``params``
    either all transposed or none: the caller groups them). Returns float32 images in [0, 1]
    (n×3×H'×W') and uint8 masks, on the images' device. ``chunk`` > 0 processes that many
    images at a time (on CPU, so that intermediates stay in cache). Square images need the
    grouping too: the masks of transposed ones are gathered along swapped axes (sample_masks)."""
    n, h, w, _ = images.shape
    transposed = bool(n and params.transposed[0])
    if n and not np.all(params.transposed == transposed):
        raise ValueError("augment_batch needs images of one output orientation: group them by params.transposed")
    out_h, out_w = (w, h) if transposed else (h, w)
    device = images.device
    theta = torch.as_tensor(params.theta, dtype=torch.float32).to(device)
    colour = torch.as_tensor(params.colour, dtype=torch.float32).to(device)
    offset = torch.as_tensor(params.offset, dtype=torch.float32).to(device)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32, device=device)
    step = chunk if chunk > 0 else max(n, 1)
    for a in range(0, n, step):
        b = min(n, a + step)
        grid = affine_grid(theta[a:b], out_h, out_w)
        # A channels-last source (the cache's layout) keeps quarter turns cache-friendly.
        source = images[a:b].permute(0, 3, 1, 2).float()
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        torch.baddbmm(offset[a:b, :, None], colour[a:b], sampled.view(b - a, 3, -1), out=out[a:b].view(b - a, 3, -1))
        out[a:b].clamp_(0.0, 1.0)
    return out, sample_masks(masks, owner, params.theta, out_h, out_w, transposed)


def _nearest(coords: np.ndarray, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest pixels of normalised coordinates along an axis of ``size`` pixels, as
    grid_sample's nearest mode finds them (align_corners=False, ties to even): (the index,
    clamped into the axis; whether it lies inside: outside is zero padding)."""
    pixel = np.rint(((coords + 1) * size - 1) / 2)
    index = np.clip(pixel, 0, size - 1).astype(np.int64)
    return torch.from_numpy(index).to(device), torch.from_numpy((pixel >= 0) & (pixel < size)).to(device)


def sample_masks(masks: torch.Tensor, owner: torch.Tensor, theta: np.ndarray, out_h: int, out_w: int,
                 transposed: bool) -> torch.Tensor:
    """Nearest-neighbour resampling of uint8 ``masks`` (m×H×W, ``owner[i]`` the image of
    mask i) by the maps ``theta`` (n×2×3, float64, grid_sample's convention) to m×out_h×out_w.

    Every map is axis-aligned (scale, flips and quarter turns, shift), so an output row reads
    a single source row — a single source column when ``transposed`` — and an output column a
    single source column (row): the result is two integer gathers on the uint8 masks, exact
    labels by construction and several times faster on CPU than ``grid_sample`` on float
    copies. Indices come from the float64 maps, so they can differ from grid_sample's float32
    grid only at exact ties."""
    m, h, w = masks.shape
    if m == 0:
        return masks.new_zeros((0, out_h, out_w))
    device = masks.device
    xs = (np.arange(out_w) * 2 + 1) / out_w - 1  # normalised output columns
    ys = (np.arange(out_h) * 2 + 1) / out_h - 1  # and rows
    if transposed:  # input y follows the output column, input x the output row
        rows, row_inside = _nearest(theta[:, 1, 0, None] * xs + theta[:, 1, 2, None], h, device)
        cols, col_inside = _nearest(theta[:, 0, 1, None] * ys + theta[:, 0, 2, None], w, device)
    else:  # input y follows the output row, input x the output column
        rows, row_inside = _nearest(theta[:, 1, 1, None] * ys + theta[:, 1, 2, None], h, device)
        cols, col_inside = _nearest(theta[:, 0, 0, None] * xs + theta[:, 0, 2, None], w, device)
    rows, row_inside, cols, col_inside = (t.index_select(0, owner) for t in (rows, row_inside, cols, col_inside))
    # picked[i, r] = masks[i, rows[i, r]]: whole source rows, one memcpy each.
    first = (rows + torch.arange(m, device=device)[:, None] * h).view(-1)
    picked = masks.reshape(m * h, w).index_select(0, first).view(m, rows.shape[1], w)
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
