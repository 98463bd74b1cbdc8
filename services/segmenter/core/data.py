"""Training data: sources, exact training-set sampling, category mapping, augmentation.

The thesis' dataset class replaced every index ≥ 80 by a random index below 80, so arms of
3000 and 15000 images trained on the same 80 images. Here a training set is an explicit list
of (source, image id) pairs — each source's first ``count`` images of its nested order
(services/common/sampling.py) — so the exact membership can be listed, tested and stored
with the run, and asking for more images than a source holds is an error, never silent
capping or repetition.

Every random choice (membership, the training stream, augmentation parameters) derives from
the seed through services/common/seeding.py, keyed by what it is for and by position, so
results do not depend on the number of DataLoader workers or processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from services.common.sampling import nested_order
from services.common import seeding
from services.common.errors import InvalidArgument


@dataclass
class Example:
    """One image with its instances (category ids as in the dataset, i.e. COCO ids)."""

    image_id: int
    image: np.ndarray  # H×W×3 uint8 RGB
    masks: np.ndarray  # N×H×W bool, one per instance
    category_ids: np.ndarray  # N int64
    iscrowd: np.ndarray | None = None  # N bool


class ExampleSource(Protocol):
    """Where examples come from: a synthaug dataset split, or an in-memory list in tests."""

    @property
    def name(self) -> str: ...

    @property
    def dataset_id(self) -> str:
        """The dataset's content id: with ``split`` it keys the source's nested order."""
        ...

    @property
    def split(self) -> str: ...

    @property
    def kind(self) -> str:
        """The dataset's kind: "real", "composite" or "gan" (real_fraction counts "real")."""
        ...

    @property
    def categories(self) -> list[dict[str, Any]]: ...

    def image_ids(self) -> list[int]: ...

    def num_annotations(self) -> int: ...

    def image_size(self, image_id: int) -> tuple[int, int]: ...

    def load(self, image_id: int) -> Example: ...


@dataclass
class InMemorySource:
    """An ExampleSource over examples held in memory (tests, demos)."""

    name: str
    categories: list[dict[str, Any]]
    examples: list[Example]
    split: str = ""
    kind: str = "real"

    def __post_init__(self) -> None:
        self._by_id = {e.image_id: e for e in self.examples}

    @property
    def dataset_id(self) -> str:
        return self.name

    def image_ids(self) -> list[int]:
        return sorted(self._by_id)

    def num_annotations(self) -> int:
        return sum(int(e.masks.shape[0]) for e in self.examples)

    def image_size(self, image_id: int) -> tuple[int, int]:
        h, w = self._by_id[image_id].image.shape[:2]
        return int(h), int(w)

    def load(self, image_id: int) -> Example:
        return self._by_id[image_id]


def sample_training_set(sources: Sequence[tuple[ExampleSource, int]], seed: int,
                        order_seeds: Sequence[int | None] | None = None) -> list[tuple[int, int]]:
    """Exactly ``count`` images of each source, without replacement: the first ``count`` of
    the source's nested order (services.common.sampling.nested_order) with its order seed
    (``order_seeds[i]``, None or absent = ``seed``). A smaller count is a prefix of a larger
    one, and a source draws the same images wherever it stands in the list.

    Returns (source index, image id) pairs, sorted. Raises InvalidArgument when a count is
    < 1 or larger than the source, or when the same source is listed twice (which would
    draw some images twice)."""
    if not sources:
        raise InvalidArgument("the training set needs at least one source")
    if order_seeds is not None and len(order_seeds) != len(sources):
        raise ValueError(f"{len(order_seeds)} order seeds for {len(sources)} sources")
    seen: dict[tuple[str, str], int] = {}
    items: list[tuple[int, int]] = []
    for i, (source, count) in enumerate(sources):
        key = (source.dataset_id, source.split)
        if key in seen:
            raise InvalidArgument(f"sources[{i}] ({source.name}) repeats sources[{seen[key]}]: "
                                  "list each dataset split once with the total count")
        seen[key] = i
        ids = source.image_ids()
        if count < 1:
            raise InvalidArgument(f"sources[{i}].count must be ≥ 1, got {count} ({source.name})")
        if count > len(ids):
            raise InvalidArgument(f"sources[{i}].count = {count} but {source.name} has only {len(ids)} images")
        own = order_seeds[i] if order_seeds is not None else None
        chosen = nested_order(seed if own is None else own, source.dataset_id, source.split, ids)[:count]
        items.extend((i, image_id) for image_id in sorted(chosen))
    return items


class CategoryMap:
    """COCO category ids ↔ contiguous labels 1..K (0 is background), by increasing id."""

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        by_id: dict[int, str] = {}
        for c in categories:
            cid, name = int(c["id"]), str(c.get("name", ""))
            if cid in by_id and by_id[cid] != name:
                raise InvalidArgument(f"category id {cid} is named both {by_id[cid]!r} and {name!r} in the inputs")
            by_id[cid] = name
        if not by_id:
            raise InvalidArgument("the datasets have no categories")
        self.categories: list[dict[str, Any]] = [{"id": cid, "name": by_id[cid]} for cid in sorted(by_id)]
        self._to_label = {cid: i + 1 for i, cid in enumerate(sorted(by_id))}

    @property
    def num_classes(self) -> int:
        return len(self.categories) + 1

    def to_labels(self, category_ids: np.ndarray) -> np.ndarray:
        try:
            return np.array([self._to_label[int(c)] for c in category_ids], dtype=np.int64)
        except KeyError as exc:
            raise InvalidArgument(f"annotation category id {exc.args[0]} is not among the categories") from None

    def to_category_ids(self, labels: np.ndarray) -> np.ndarray:
        return np.array([self.categories[int(label) - 1]["id"] for label in labels], dtype=np.int64)


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


def augment(image: np.ndarray, masks: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of ``image`` (H×W×3 uint8) and ``masks`` (N×H×W bool).

    Scale jitter resizes (image bilinear, masks nearest) and crops or pads back to H×W, so
    batch memory stays predictable. The order of random draws is fixed (for determinism)."""
    h, w = image.shape[:2]
    s = float(rng.uniform(*cfg.scale))
    u = rng.random(2)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        masks = np.stack([cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) for m in masks]).astype(bool) \
            if masks.shape[0] else np.zeros((0, nh, nw), dtype=bool)
        out_img = np.zeros((h, w, 3), dtype=np.uint8)
        out_masks = np.zeros((masks.shape[0], h, w), dtype=bool)
        # Offsets of the crop (s > 1) or of the pasted image (s < 1), drawn from u.
        oy, ox = int(u[0] * (abs(nh - h) + 1)), int(u[1] * (abs(nw - w) + 1))
        oy, ox = min(oy, abs(nh - h)), min(ox, abs(nw - w))
        ch, cw = min(h, nh), min(w, nw)
        src_y, dst_y = (oy, 0) if nh > h else (0, oy)
        src_x, dst_x = (ox, 0) if nw > w else (0, ox)
        out_img[dst_y:dst_y + ch, dst_x:dst_x + cw] = image[src_y:src_y + ch, src_x:src_x + cw]
        out_masks[:, dst_y:dst_y + ch, dst_x:dst_x + cw] = masks[:, src_y:src_y + ch, src_x:src_x + cw]
        image, masks = out_img, out_masks
    flips = rng.random(2)
    k = int(rng.integers(0, 4)) if cfg.rot90 else 0
    if flips[0] < cfg.hflip:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if flips[1] < cfg.vflip:
        image, masks = image[::-1], masks[:, ::-1]
    if k:
        image, masks = np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
    b, c, sat = (float(rng.uniform(1 - j, 1 + j)) for j in (cfg.brightness, cfg.contrast, cfg.saturation))
    img = image.astype(np.float32) * b
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - grey.mean()) * c + grey.mean()
    grey = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    img = grey + (img - grey) * sat
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """N×4 float32 boxes (x0, y0, x1, y1) with x1/y1 one past the last pixel (so a
    one-pixel instance still has positive size)."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float32 in [0, 1] (the model normalises)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def make_target(example_masks: np.ndarray, labels: np.ndarray, image_id: int) -> dict[str, torch.Tensor]:
    """Mask R-CNN's target; an image without instances (a composite whose pastes were all
    occluded, a background-only photo) is a valid negative example with empty tensors."""
    keep = example_masks.any(axis=(1, 2)) if example_masks.ndim == 3 else np.zeros(0, dtype=bool)
    masks, labels = example_masks[keep], labels[keep]
    return {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
    }


#: One image of the training stream: (index into the training items, draw number). The draw
#: number (the image's position in the stream, services/segmenter/core/stream.py) keys its
#: augmentation, so a resumed run or another number of workers augments identically.
Draw = tuple[int, int]


class TrainingDataset(TorchDataset):
    """The training set as a torch Dataset: ``dataset[(item, draw)]`` is (image tensor, Mask
    R-CNN target) of training item ``item``, augmented with the stream of ``draw``.

    Crowd instances are dropped from targets (Mask R-CNN has no crowd handling); instances
    that an augmentation pushes out of the image are dropped too."""

    def __init__(self, sources: Sequence[ExampleSource], items: Sequence[tuple[int, int]],
                 category_map: CategoryMap, augment_cfg: AugmentConfig | None, seed: int):
        self.sources = list(sources)
        self.items = list(items)
        self.category_map = category_map
        self.augment_cfg = augment_cfg
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, draw: Draw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        item, draw_number = draw
        src, image_id = self.items[item]
        ex = self.sources[src].load(image_id)
        masks = np.asarray(ex.masks, dtype=bool)
        cats = np.asarray(ex.category_ids)
        if ex.iscrowd is not None and len(ex.iscrowd):
            keep = ~np.asarray(ex.iscrowd, dtype=bool)
            masks, cats = masks[keep], cats[keep]
        labels = self.category_map.to_labels(cats)
        image = ex.image
        if self.augment_cfg is not None:
            image, masks = augment(image, masks, self.augment_cfg, seeding.rng(self.seed, "segmenter/augment", draw_number))
        return image_to_tensor(image), make_target(masks, labels, ex.image_id)


def collate(batch: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Detection batches are lists: images of different sizes are batched inside the model."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def truth_union(example: Example) -> np.ndarray:
    """H×W bool union of every ground-truth instance (crowd included), for pixel metrics."""
    from services.evaluator.core.metrics import union_of_instances

    return union_of_instances(np.asarray(example.masks, dtype=bool))
