"""Training augmentation as batched tensor operations, on whatever device holds the batch.

Every image of a step is augmented in one pass over the batch, not one image at a time in
Python: the geometric jitter (scale, crop or pad back to the image size, horizontal and
vertical flips, rotation by multiples of 90°) of every image is one affine map, and a single
``grid_sample`` resamples the whole batch (bilinear for images, nearest-neighbour for masks,
so masks stay exact labels); the colour jitter (brightness, contrast, saturation) is one 3×3
colour matrix and offset per image, applied as one batched matrix product. On CUDA this is
a handful of kernels per step; on CPU the same code runs in chunks that stay in cache.

The parameters of each image are drawn on the host from ``seeding.rng(seed,
"segmenter/augment", draw)`` — the image's position in the training stream — in the same
order as the per-image implementation this replaced, so a resumed run, another number of
processes or another batch composition augments every draw identically.

What differs from the per-image (OpenCV/numpy) implementation it replaced, by design: the
resampling is ``grid_sample``'s (bilinear with zero padding; nearest for masks) instead of
``cv2.resize`` followed by a crop or pad, contrast pivots on the mean grey of the stored image
(computed once, when the image is cached) instead of that of the geometrically jittered
image, and the result stays in floating point instead of being rounded back to uint8. The
parameters are the same; the exact pixels differ slightly.
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
    grey levels of the stored images), each from its own stream (module docstring)."""
    n = len(draws)
    theta = np.zeros((n, 2, 3))
    transposed = np.zeros(n, dtype=bool)
    colour = np.zeros((n, 3, 3))
    offset = np.zeros((n, 3))
    rotate = np.array([[0.0, -1.0], [1.0, 0.0]])  # one quarter turn, output → input
    saturate_base = np.outer(np.ones(3), GREY)
    for k, (draw, (h, w), mu) in enumerate(zip(draws, sizes, mean_grey)):
        rng = seeding.rng(seed, "segmenter/augment", draw)
        s = float(rng.uniform(*cfg.scale))
        u = rng.random(2)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        # The resized image is cropped (s > 1) or pasted (s < 1) at an offset drawn from u;
        # t is the output's origin in the resized image's pixels.
        oy, ox = min(int(u[0] * (abs(nh - h) + 1)), abs(nh - h)), min(int(u[1] * (abs(nw - w) + 1)), abs(nw - w))
        ty = oy if nh > h else -oy
        tx = ox if nw > w else -ox
        sy, sx = nh / h, nw / w
        flips = rng.random(2)
        quarter_turns = int(rng.integers(0, 4)) if cfg.rot90 else 0
        b, c, sat = (float(rng.uniform(1 - j, 1 + j)) for j in (cfg.brightness, cfg.contrast, cfg.saturation))
        # Output coordinates → flipped, scaled coordinates → input coordinates.
        linear = np.linalg.matrix_power(rotate, quarter_turns)
        linear = np.diag([-1.0 if flips[0] < cfg.hflip else 1.0, -1.0 if flips[1] < cfg.vflip else 1.0]) @ linear
        linear = np.diag([1 / sx, 1 / sy]) @ linear
        theta[k, :, :2] = linear
        theta[k, :, 2] = (1 / sx - 1 + 2 * tx / (sx * w), 1 / sy - 1 + 2 * ty / (sy * h))
        transposed[k] = quarter_turns % 2 == 1
        # brightness b, contrast c around the mean grey (b·mu after brightness), saturation
        # sat towards each pixel's grey: x ↦ c·b·S·x + (1 − c)·b·mu, S = sat·I + (1 − sat)·1·greyᵀ
        # (S·1 = 1 since the grey weights sum to 1), then to [0, 1].
        saturate = sat * np.eye(3) + (1 - sat) * saturate_base
        colour[k] = c * b * saturate / 255.0
        offset[k] = (1 - c) * b * mu / 255.0
    return AugmentParams(theta, transposed, colour, offset)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (n, ·, h, w), align_corners=False)``, computed as two broadcast
    multiply-adds (≈ 10× faster on CPU than torch's, which goes through a batched matmul)."""
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = ((torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1)[:, None]
    t = theta[:, :, :, None, None]
    grid = torch.empty((theta.shape[0], h, w, 2), device=theta.device, dtype=theta.dtype)
    grid[..., 0] = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    grid[..., 1] = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return grid


def augment_batch(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor, params: AugmentParams,
                  chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` (n×H×W×3 uint8) and their instance ``masks`` (m×H×W uint8,
    ``owner[i]`` the image of mask i), all with the same output orientation (``params``
    either all transposed or none: the caller groups them). Returns float32 images in [0, 1]
    (n×3×H'×W') and uint8 masks, on the images' device. ``chunk`` > 0 processes that many
    images at a time (on CPU, so that intermediates stay in cache)."""
    n, h, w, _ = images.shape
    out_h, out_w = (w, h) if n and bool(params.transposed[0]) else (h, w)
    device = images.device
    theta = torch.as_tensor(params.theta, dtype=torch.float32).to(device)
    colour = torch.as_tensor(params.colour, dtype=torch.float32).to(device)
    offset = torch.as_tensor(params.offset, dtype=torch.float32).to(device)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32, device=device)
    grids = []
    step = chunk if chunk > 0 else max(n, 1)
    for a in range(0, n, step):
        b = min(n, a + step)
        grid = affine_grid(theta[a:b], out_h, out_w)
        # A channels-last source (the cache's layout) keeps quarter turns cache-friendly.
        source = images[a:b].permute(0, 3, 1, 2).float()
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        torch.baddbmm(offset[a:b, :, None], colour[a:b], sampled.view(b - a, 3, -1), out=out[a:b].view(b - a, 3, -1))
        out[a:b].clamp_(0.0, 1.0)
        grids.append(grid)
    if masks.shape[0] == 0:
        return out, masks.new_zeros((0, out_h, out_w))
    grid = (grids[0] if len(grids) == 1 else torch.cat(grids)).index_select(0, owner)
    sampled_masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, (sampled_masks[:, 0] > 0.5).to(torch.uint8)


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
