"""Test support for the segmenter: synthetic shapes (filled ellipses, "lesions", on textured
skin-like backgrounds, with exact instance masks; small, fast, deterministic from the seed)
and a toy architecture registered by name, which trains and predicts through the same
Trainer and predictor as Mask R-CNN in a fraction of the time."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.segmenter.architectures import Architecture, register, unregister
from services.segmenter.core.data import Example, InMemorySource
from services.segmenter.core.models import ModelSpec

CATEGORIES = [{"id": 1, "name": "lesion"}]
TOY = "toy_pixel_logistic"


def make_example(image_id: int, size: int, seed: int, max_objects: int = 2,
                 category_ids: tuple[int, ...] = (1,)) -> Example:
    rng = np.random.default_rng([seed, image_id])
    base = rng.uniform(150, 220, size=3)
    noise = cv2.GaussianBlur(rng.normal(0, 12, size=(size, size, 3)).astype(np.float32), (0, 0), 2)
    image = np.clip(base + noise, 0, 255)
    masks, cats = [], []
    for k in range(int(rng.integers(1, max_objects + 1))):
        m = np.zeros((size, size), np.uint8)
        center = tuple(int(v) for v in rng.integers(size // 5, size - size // 5, 2))
        axes = tuple(int(v) for v in rng.integers(size // 10, size // 4, 2))
        cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        colour = rng.uniform(40, 100, size=3)
        image[m.astype(bool)] = colour + rng.normal(0, 5, size=(int(m.sum()), 3))
        masks.append(m.astype(bool))
        cats.append(category_ids[k % len(category_ids)])
    # Later ellipses occlude earlier ones: keep instances disjoint, as real annotations are.
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            masks[i] &= ~masks[j]
    return Example(image_id, np.clip(image, 0, 255).astype(np.uint8), np.stack(masks), np.array(cats, np.int64))


def make_source(name: str, n: int, size: int = 64, seed: int = 0, first_id: int = 1, kind: str = "real",
                **kw) -> InMemorySource:
    return InMemorySource(name, list(CATEGORIES if "category_ids" not in kw else
                                     [{"id": c, "name": f"c{c}"} for c in kw["category_ids"]]),
                          [make_example(first_id + i, size, seed, **kw) for i in range(n)], kind=kind)


class ToySegmenter(nn.Module):
    """Per-pixel logistic regression on colour; one detection per image: the foreground
    probability map, scored by its mean probability over the predicted foreground."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.pixel = nn.Conv2d(3, 1, kernel_size=1)
        self.num_classes = num_classes
        self.score_threshold = 0.0
        self.detections_per_image = 100  # at most one detection anyway
        self.thresholds_seen: list[float] = []  # score_threshold at each eval call

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width  # no resize

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        logits = [self.pixel(im[None])[0, 0] for im in images]
        if self.training:
            assert targets is not None
            losses = [F.binary_cross_entropy_with_logits(logit, t["masks"].amax(0).to(logit.dtype))
                      for logit, t in zip(logits, targets)]
            return {"loss_mask": torch.stack(losses).mean()}
        self.thresholds_seen.append(self.score_threshold)
        out = []
        for logit in logits:
            prob = logit.sigmoid()
            fg = prob >= 0.5
            score = prob[fg].mean() if fg.any() else prob.max()
            h, w = prob.shape
            if fg.any():
                ys, xs = torch.nonzero(fg, as_tuple=True)
                box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).to(prob.dtype)
            else:
                box = torch.tensor([0.0, 0.0, w, h], dtype=prob.dtype)
            keep = bool(score >= self.score_threshold)
            n = 1 if keep else 0
            out.append({"boxes": box[None][:n], "labels": torch.ones(n, dtype=torch.int64),
                        "scores": score[None][:n], "masks": prob[None, None][:n]})
        return out


def build_toy(spec: ModelSpec, detector_weights: Any = None, backbone_weights: Any = None) -> ToySegmenter:
    assert detector_weights is None and backbone_weights is None
    return ToySegmenter(spec.num_classes)


@contextlib.contextmanager
def toy_architecture() -> Iterator[Architecture]:
    """The toy architecture, registered as TOY while the block runs."""
    torch.set_num_threads(1)
    try:
        yield register(Architecture(TOY, f"{__name__}:build_toy", "per-pixel logistic regression (tests)"))
    finally:
        unregister(TOY)
