"""Training data: sources, exact training-set sampling, category mapping, augmentation.

The thesis' dataset class replaced every index ≥ 80 by a random index below 80, so arms of
3000 and 15000 images trained on the same 80 images. Here a training set is an explicit list
of (source, image id) pairs drawn without replacement with the seed — the exact membership
can be listed, tested and stored with the run — and asking for more images than a source
holds is an error, never silent capping or repetition.

Every random choice (membership, epoch order, augmentation parameters) derives from
(seed, epoch, index) through NumPy's SeedSequence, so results do not depend on the number
of DataLoader workers or processes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

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

    def __post_init__(self) -> None:
        self._by_id = {e.image_id: e for e in self.examples}

    def image_ids(self) -> list[int]:
        return sorted(self._by_id)

    def num_annotations(self) -> int:
        return sum(int(e.masks.shape[0]) for e in self.examples)

    def image_size(self, image_id: int) -> tuple[int, int]:
        h, w = self._by_id[image_id].image.shape[:2]
        return int(h), int(w)

    def load(self, image_id: int) -> Example:
        return self._by_id[image_id]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _source_order(seed: int, source_name: str, n: int) -> np.ndarray:
    """A seeded order of a source's images that depends only on (seed, source), so that a
    smaller count takes a prefix of a larger one: arms are nested (real[:1000] ⊂ real[:1500]),
    and a source draws the same images wherever it stands in the list."""
    digest = hashlib.sha256(source_name.encode()).digest()
    words = [int.from_bytes(digest[k:k + 4], "big") for k in range(0, 16, 4)]
    return _rng(seed, *words, 0x5A4D).permutation(n)


def sample_training_set(sources: Sequence[tuple[ExampleSource, int]], seed: int) -> list[tuple[int, int]]:
    """Exactly ``count`` images of each source, drawn without replacement with ``seed``:
    the first ``count`` of the source's seeded order (see `_source_order`).

    Returns (source index, image id) pairs, sorted. Raises InvalidArgument when a count is
    < 1 or larger than the source, or when the same source is listed twice (which would
    draw some images twice)."""
    if not sources:
        raise InvalidArgument("the training set needs at least one source")
    seen: dict[str, int] = {}
    items: list[tuple[int, int]] = []
    for i, (source, count) in enumerate(sources):
        if source.name in seen:
            raise InvalidArgument(f"sources[{i}] ({source.name}) repeats sources[{seen[source.name]}]: "
                                  "list each dataset split once with the total count")
        seen[source.name] = i
        ids = source.image_ids()
        if count < 1:
            raise InvalidArgument(f"sources[{i}].count must be ≥ 1, got {count} ({source.name})")
        if count > len(ids):
            raise InvalidArgument(f"sources[{i}].count = {count} but {source.name} has only {len(ids)} images")
        chosen = _source_order(seed, source.name, len(ids))[:count]
        items.extend((i, ids[j]) for j in sorted(chosen.tolist()))
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


class TrainingDataset(TorchDataset):
    """The training set as a torch Dataset: (image tensor, Mask R-CNN target) per item.

    Crowd instances are dropped from targets (Mask R-CNN has no crowd handling); instances
    that an augmentation pushes out of the image are dropped too."""

    def __init__(self, sources: Sequence[ExampleSource], items: Sequence[tuple[int, int]],
                 category_map: CategoryMap, augment_cfg: AugmentConfig | None, seed: int):
        self.sources = list(sources)
        self.items = list(items)
        self.category_map = category_map
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set before creating the epoch's DataLoader iterator (workers copy the dataset)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        src, image_id = self.items[index]
        ex = self.sources[src].load(image_id)
        masks = np.asarray(ex.masks, dtype=bool)
        cats = np.asarray(ex.category_ids)
        if ex.iscrowd is not None and len(ex.iscrowd):
            keep = ~np.asarray(ex.iscrowd, dtype=bool)
            masks, cats = masks[keep], cats[keep]
        labels = self.category_map.to_labels(cats)
        image = ex.image
        if self.augment_cfg is not None:
            image, masks = augment(image, masks, self.augment_cfg, _rng(self.seed, self.epoch, index, 0xA06))
        return image_to_tensor(image), make_target(masks, labels, ex.image_id)


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch from (seed, epoch); under DDP each rank takes every
    world-th index of the same permutation (padded by wrapping so ranks step together)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        order = _rng(self.seed, self.epoch, 0x5E0).permutation(self.n).tolist() if self.shuffle else list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        order = (order * (1 + per_rank * self.world_size // max(1, self.n)))[: per_rank * self.world_size]
        return order[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order())

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


def collate(batch: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Detection batches are lists: images of different sizes are batched inside the model."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def truth_union(example: Example) -> np.ndarray:
    """H×W bool union of every ground-truth instance (crowd included), for pixel metrics."""
    from services.evaluator.core.metrics import union_of_instances

    return union_of_instances(np.asarray(example.masks, dtype=bool))
