"""Synthetic shapes for segmenter tests: filled ellipses ("lesions") on textured skin-like
backgrounds, with exact instance masks. Small, fast, deterministic from the seed."""
from __future__ import annotations

import cv2
import numpy as np

from services.segmenter.core.data import Example, InMemorySource

CATEGORIES = [{"id": 1, "name": "lesion"}]


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


def make_source(name: str, n: int, size: int = 64, seed: int = 0, first_id: int = 1, **kw) -> InMemorySource:
    return InMemorySource(name, list(CATEGORIES if "category_ids" not in kw else
                                     [{"id": c, "name": f"c{c}"} for c in kw["category_ids"]]),
                          [make_example(first_id + i, size, seed, **kw) for i in range(n)])
