"""Training data: sources, exact training-set sampling, category mapping, and the training
set decoded once into tensors and served as augmented batches (augmentation: core/augment.py).

The thesis' dataset class replaced every index ≥ 80 by a random index below 80, so arms of
3000 and 15000 images trained on the same 80 images. Here a training set is an explicit list
of (source, image id) pairs — each source's first ``count`` images of its nested order
(services/common/sampling.py) — so the exact membership can be listed, tested and stored
with the run, and asking for more images than a source holds is an error, never silent
capping or repetition.

Every random choice (membership, the training stream, augmentation parameters) derives from
the seed through services/common/seeding.py, keyed by what it is for and by position, so
results do not depend on the number of decoding threads or training processes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from services.common.errors import InvalidArgument
from services.common.sampling import nested_order
from services.segmenter.core.augment import (
    GREY,
    AugmentConfig,
    AugmentParams,
    augment_batch,
    augment_rows_opencv,
    draw_params,
    masks_to_boxes,
)


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


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float32 in [0, 1] (the model normalises)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_device_batch(images: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """H×W×3 uint8 images → 3×H×W tensors in [0, 1] on `device`, as inference takes them.
    The batch crosses to the device as one uint8 tensor when the images share a size (a
    quarter of float32's bytes, one copy)."""
    if images and all(im.shape == images[0].shape for im in images):
        stacked = torch.from_numpy(np.stack(images)).to(device, non_blocking=True).permute(0, 3, 1, 2)
        return list(stacked.to(dtype).div_(255.0).unbind(0))
    return [image_to_tensor(im).to(device=device, dtype=dtype, non_blocking=True) for im in images]


#: One image of the training stream: (index into the training items, draw number). The draw
#: number (the image's position in the stream, services/segmenter/core/stream.py) keys its
#: augmentation, so a resumed run or another number of processes augments identically.
Draw = tuple[int, int]

#: Mask R-CNN's per-image target (core/models.py SegmentationModel).
Target = dict[str, torch.Tensor]

_NO_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)


@dataclass
class _SizeGroup:
    """The cached training images of one size (H, W), decoded once."""

    images: torch.Tensor  # n×H×W×3 uint8, as decoded (channels last: resampling reads it faster)
    masks: torch.Tensor  # m×H×W uint8: image r's instances are rows mask_start[r] … mask_start[r+1] − 1
    labels: torch.Tensor  # m int64 (contiguous labels)
    image_ids: torch.Tensor  # n int64
    mask_start: np.ndarray  # n + 1 offsets (host)
    mean_grey: np.ndarray  # n mean grey levels of the stored images (host; the contrast pivot)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.masks, self.labels, self.image_ids))

    def to(self, device: torch.device) -> _SizeGroup:
        return _SizeGroup(self.images.to(device), self.masks.to(device), self.labels.to(device),
                          self.image_ids.to(device), self.mask_start, self.mean_grey)


def _decoded(source: ExampleSource, image_id: int, category_map: CategoryMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image H×W×3 uint8, masks N×H×W uint8, labels N) of one training image; crowd
    instances are dropped (Mask R-CNN has no crowd handling)."""
    ex = source.load(image_id)
    masks = np.asarray(ex.masks, dtype=bool)
    cats = np.asarray(ex.category_ids)
    if ex.iscrowd is not None and len(ex.iscrowd):
        keep = ~np.asarray(ex.iscrowd, dtype=bool)
        masks, cats = masks[keep], cats[keep]
    image = np.asarray(ex.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidArgument(f"{source.name} image {image_id}: expected H×W×3 uint8, got {image.dtype} {image.shape}")
    if masks.shape[1:] != image.shape[:2]:
        raise InvalidArgument(f"{source.name} image {image_id}: masks {masks.shape[1:]} differ from the image {image.shape[:2]}")
    return image, masks.astype(np.uint8), category_map.to_labels(cats)


class TrainingDataset:
    """The training set, decoded once into uint8 tensors and served as whole Mask R-CNN
    batches: ``batch(draws)`` is the (images, targets) of a list of stream draws, each image
    augmented with the stream of its draw (core/augment.py).

    Decoding (image file, RLE masks, category mapping) happens once per image, when the
    dataset is built, with ``threads`` threads; a step then reads its images from the cache
    and augments them (core/augment.py: on CPU image by image with OpenCV, in place from the
    cache; on CUDA a gather per image size and a few batched tensor operations, on the GPU
    when the trainer put the cache there), so no image crosses between host and device
    during training. Results depend on the draws alone, not on threads or batch composition.

    Memory: 3·H·W bytes per image plus H·W per instance (≈ 0.26 MB per 256-px image with
    one lesion: 1 600 images ≈ 0.4 GB, 15 000 ≈ 4 GB).

    Crowd instances are dropped from targets (Mask R-CNN has no crowd handling); instances
    that an augmentation pushes out of the image are dropped too, and an image without
    instances is a valid negative example with empty targets."""

    def __init__(self, sources: Sequence[ExampleSource], items: Sequence[tuple[int, int]],
                 category_map: CategoryMap, augment_cfg: AugmentConfig | None, seed: int,
                 device: torch.device | None = None, cache_device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, threads: int = 0):
        """``device``: where batches are produced (default CPU); ``cache_device``: where the
        decoded images stay (default ``device``); ``threads`` > 1 decodes in parallel."""
        self.sources = list(sources)
        self.items = list(items)
        self.category_map = category_map
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.device = device if device is not None else torch.device("cpu")
        self.dtype = dtype
        self._where: list[tuple[int, int]] = []  # item → (size group, row)
        host = self._decode(threads)
        target = cache_device if cache_device is not None else self.device
        self._groups = [g.to(target) for g in host]
        self.cache_device = target

    def _decode(self, threads: int) -> list[_SizeGroup]:
        def load(item: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return _decoded(self.sources[item[0]], item[1], self.category_map)

        if threads > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
                decoded = list(pool.map(load, self.items))
        else:
            decoded = [load(item) for item in self.items]
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, (image, _, _) in enumerate(decoded):
            by_size.setdefault(image.shape[:2], []).append(k)
        groups = []
        self._where = [(0, 0)] * len(self.items)
        grey = np.asarray(GREY, dtype=np.float32)
        for g, ((h, w), members) in enumerate(by_size.items()):
            images = torch.empty((len(members), h, w, 3), dtype=torch.uint8)
            mean_grey = np.zeros(len(members))
            for row, k in enumerate(members):
                image = decoded[k][0]
                images[row] = torch.from_numpy(image)
                mean_grey[row] = float((image.reshape(-1, 3) @ grey).mean())
                self._where[k] = (g, row)
                decoded[k] = (_NO_IMAGE, decoded[k][1], decoded[k][2])  # freed: peak memory ≈ one copy
            counts = [decoded[k][1].shape[0] for k in members]
            masks = np.concatenate([decoded[k][1] for k in members]) if sum(counts) else np.zeros((0, h, w), np.uint8)
            groups.append(_SizeGroup(
                images=images, masks=torch.from_numpy(masks),
                labels=torch.from_numpy(np.concatenate([decoded[k][2] for k in members]).astype(np.int64)),
                image_ids=torch.tensor([self.items[k][1] for k in members], dtype=torch.int64),
                mask_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), mean_grey=mean_grey))
        return groups

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded cache."""
        return sum(g.nbytes for g in self._groups)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, draw: Draw) -> tuple[torch.Tensor, Target]:
        """One draw's (image, target): ``batch([draw])``."""
        images, targets = self.batch([draw])
        return images[0], targets[0]

    def batch(self, draws: Sequence[Draw]) -> tuple[list[torch.Tensor], list[Target]]:
        """Images (3×H×W in [0, 1], ``dtype``) and Mask R-CNN targets of ``draws``, in order,
        on ``device``."""
        where = [self._where[item] for item, _ in draws]
        params = None
        if self.augment_cfg is not None:
            groups = [self._groups[g] for g, _ in where]
            params = draw_params(self.seed, [number for _, number in draws],
                                 [(int(grp.images.shape[1]), int(grp.images.shape[2])) for grp in groups],
                                 [float(grp.mean_grey[row]) for grp, (_, row) in zip(groups, where)], self.augment_cfg)
        # One pass per (size, output orientation): an odd number of quarter turns transposes
        # the image (augment_batch resamples the masks of such images along swapped axes).
        parts: dict[tuple[int, bool], list[int]] = {}
        for k, (g, _) in enumerate(where):
            parts.setdefault((g, bool(params is not None and params.transposed[k])), []).append(k)
        out: list[tuple[torch.Tensor, Target]] = [None] * len(draws)  # type: ignore[list-item]
        for (g, _), positions in parts.items():
            for k, example in zip(positions, self._group_batch(self._groups[g], [where[k][1] for k in positions],
                                                                 params.subset(positions) if params is not None else None)):
                out[k] = example
        return [image for image, _ in out], [target for _, target in out]

    def _group_batch(self, group: _SizeGroup, rows: list[int], params: AugmentParams | None) -> list[tuple[torch.Tensor, Target]]:
        if params is not None and self.device.type == "cpu" and group.images.device.type == "cpu":
            return self._group_batch_cpu(group, rows, params)
        device = self.device
        counts = [int(group.mask_start[r + 1] - group.mask_start[r]) for r in rows]
        mask_rows = np.concatenate([np.arange(group.mask_start[r], group.mask_start[r + 1]) for r in rows])
        row_index = torch.tensor(rows, dtype=torch.int64, device=group.images.device)
        mask_index = torch.from_numpy(mask_rows.astype(np.int64)).to(group.masks.device)
        images = group.images.index_select(0, row_index).to(device)
        masks = group.masks.index_select(0, mask_index).to(device)
        labels = group.labels.index_select(0, mask_index).to(device)
        image_ids = group.image_ids.index_select(0, row_index).to(device)
        owner = torch.from_numpy(np.repeat(np.arange(len(rows)), counts)).to(device)
        if params is not None:
            batch, masks = augment_batch(images, masks, owner, params)
        else:
            batch = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        batch = batch.to(self.dtype)
        keep = masks.flatten(1).amax(dim=1) > 0 if masks.shape[0] else torch.zeros(0, dtype=torch.bool, device=device)
        if not bool(keep.all()):
            masks, labels, owner = masks[keep], labels[keep], owner[keep]
        boxes = masks_to_boxes(masks).to(self.dtype)
        kept = torch.bincount(owner, minlength=len(rows)).tolist()
        per_masks, per_boxes, per_labels = masks.split(kept), boxes.split(kept), labels.split(kept)
        return [(batch[j], {"boxes": per_boxes[j], "labels": per_labels[j], "masks": per_masks[j], "image_id": image_ids[j]})
                for j in range(len(rows))]


    def _group_batch_cpu(self, group: _SizeGroup, rows: list[int], params: AugmentParams) -> list[tuple[torch.Tensor, Target]]:
        """_group_batch on CPU: augmented straight from the cache, image by image
        (augment_rows_opencv), the targets' boxes and kept masks from the same pass."""
        out = augment_rows_opencv(group.images.numpy(), rows, group.masks.numpy(), group.mask_start, params)
        batch = out.images.to(self.dtype)
        boxes = out.boxes.to(self.dtype)
        labels = group.labels[torch.from_numpy(out.mask_rows)]
        image_ids = group.image_ids[torch.tensor(rows, dtype=torch.int64)]
        per_masks, per_boxes, per_labels = out.masks.split(out.counts), boxes.split(out.counts), labels.split(out.counts)
        return [(batch[j], {"boxes": per_boxes[j], "labels": per_labels[j], "masks": per_masks[j], "image_id": image_ids[j]})
                for j in range(len(rows))]


def truth_union(example: Example) -> np.ndarray:
    """H×W bool union of every ground-truth instance (crowd included), for pixel metrics."""
    from services.evaluator.core.metrics import union_of_instances

    return union_of_instances(np.asarray(example.masks, dtype=bool))
