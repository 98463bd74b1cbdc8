"""The one mask → network-input rendering, used by training and by generation alike.

The thesis trained its generator on random-colour masks and fed it white ones at generation
time. Here both paths call `render_condition` with a `RenderSpec` stored in the checkpoint, so
what the generator sees at generation is by construction what it saw in training.

Channels (each in [-1, 1], like pix2pix's normalised inputs):
  * one per category, in `spec.category_ids` order: +1 where any instance of that class is;
  * optionally an instance-boundary channel (+1 on each instance's inner 1-px rim), which
    keeps touching instances of one class apart;
  * optionally 3 colour-hint channels (the diversity remedy): the image's background — the
    pixels outside every mask — averaged on a coarse `hint_size`² grid, smoothed and
    up-sampled. In training it comes from the real image, in generation from the composite
    image the masks belong to, so generated skin follows that background's tone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from services.common.errors import InvalidArgument

HINT_CHANNELS = 3


@dataclass(frozen=True)
class RenderSpec:
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...] = field(default=())
    boundary: bool = False
    color_hint: bool = False
    hint_size: int = 8

    @property
    def num_channels(self) -> int:
        return len(self.category_ids) + int(self.boundary) + (HINT_CHANNELS if self.color_hint else 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["category_ids"] = list(self.category_ids)
        d["category_names"] = list(self.category_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderSpec:
        return cls(
            category_ids=tuple(int(c) for c in d["category_ids"]),
            category_names=tuple(str(n) for n in d.get("category_names", ())),
            boundary=bool(d["boundary"]),
            color_hint=bool(d["color_hint"]),
            hint_size=int(d["hint_size"]),
        )

    @classmethod
    def for_categories(cls, categories: Sequence[dict[str, Any]], boundary: bool, color_hint: bool, hint_size: int) -> RenderSpec:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        if not cats:
            raise InvalidArgument("dataset has no categories: nothing to render masks from")
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats), boundary, color_hint, hint_size)


def instance_boundaries(masks: np.ndarray) -> np.ndarray:
    """H×W bool: pixels of an instance with a 4-neighbour outside it (image edges don't count)."""
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], dtype=bool)
    p = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    interior = p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return (masks & ~interior).any(axis=0)


def color_hint(image: np.ndarray, masks: np.ndarray, hint_size: int) -> np.ndarray:
    """H×W×3 float32 in [0, 1]: the coarse, smooth colour of the image outside all masks.

    Cells with no background pixel take the mean background colour (mid-grey if the masks
    cover everything), so the hint never shows the lesion's own colours.
    """
    h, w = image.shape[:2]
    bg = np.asarray(~masks.any(axis=0)) if masks.shape[0] else np.ones((h, w), dtype=bool)
    weight = bg.astype(np.float32)
    rgb = image.astype(np.float32) / 255.0 * weight[..., None]
    small_rgb = cv2.resize(rgb, (hint_size, hint_size), interpolation=cv2.INTER_AREA)
    small_w = cv2.resize(weight, (hint_size, hint_size), interpolation=cv2.INTER_AREA)[..., None]
    mean: np.ndarray = rgb.reshape(-1, 3).sum(0) / weight.sum() if weight.sum() > 0 else np.full(3, 0.5, np.float32)
    cells: np.ndarray = np.where(small_w > 1e-3, small_rgb / np.maximum(small_w, 1e-6), mean[None, None, :]).astype(np.float32)
    cells = cv2.GaussianBlur(cells, (3, 3), 0, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_LINEAR)


def render_condition(masks: np.ndarray, labels: np.ndarray, spec: RenderSpec, image: np.ndarray | None = None) -> np.ndarray:
    """C×H×W float32 in [-1, 1] from N×H×W bool instance masks and their N category ids.

    `labels` are category ids in the spec's id space; `image` (H×W×3 uint8) is needed only
    with the colour hint and is never seen anywhere inside the masks.
    """
    masks = np.asarray(masks, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if masks.ndim != 3 or masks.shape[0] != labels.shape[0]:
        raise InvalidArgument(f"masks must be N×H×W with N labels, got masks {masks.shape} and {labels.shape[0]} labels")
    h, w = masks.shape[1:]
    unknown = sorted(set(labels.tolist()) - set(spec.category_ids))
    if unknown:
        raise InvalidArgument(f"mask category id(s) {unknown} are not among the generator's categories {list(spec.category_ids)}")
    out = np.empty((spec.num_channels, h, w), dtype=np.float32)
    for c, cat in enumerate(spec.category_ids):
        out[c] = masks[labels == cat].any(axis=0) if (labels == cat).any() else False
    c = len(spec.category_ids)
    if spec.boundary:
        out[c] = instance_boundaries(masks)
        c += 1
    out[:c] = out[:c] * 2.0 - 1.0
    if spec.color_hint:
        if image is None:
            raise InvalidArgument("the colour-hint remedy needs the image the masks belong to, got none")
        if image.shape[:2] != (h, w):
            raise InvalidArgument(f"image size {image.shape[:2]} differs from mask size {(h, w)}")
        out[c:c + HINT_CHANNELS] = color_hint(image, masks, spec.hint_size).transpose(2, 0, 1) * 2.0 - 1.0
    return out
