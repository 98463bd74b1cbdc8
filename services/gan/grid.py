"""Sample grids (condition | real | generated) and condition visualisation, as uint8 RGB."""
from __future__ import annotations

import numpy as np

from services.gan.rendering import HINT_CHANNELS, RenderSpec

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    dtype=np.uint8,
)


def to_uint8(t: np.ndarray) -> np.ndarray:
    """C×H×W in [-1, 1] → H×W×C uint8."""
    return np.clip(np.rint((np.asarray(t, dtype=np.float32).transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def visualize_condition(cond: np.ndarray, spec: RenderSpec) -> np.ndarray:
    """H×W×3 uint8: class colours over the colour hint (or black), boundaries in white."""
    n = len(spec.category_ids)
    h, w = cond.shape[1:]
    if spec.color_hint:
        start = n + int(spec.boundary)
        out = to_uint8(cond[start:start + HINT_CHANNELS])
    else:
        out = np.zeros((h, w, 3), dtype=np.uint8)
    for c in range(n):
        out[cond[c] > 0] = PALETTE[c % len(PALETTE)]
    if spec.boundary:
        out[cond[n] > 0] = 255
    return out


def make_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized H×W×3 uint8 images row by row with a white padding."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = img
    return grid
