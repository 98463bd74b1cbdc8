"""Feature extraction: one vector per image, in a named feature space, for several image
sets at once — what the evaluator's synthetic-data quality (services/evaluator/core/
quality.py) compares. The result is written in the one features format
(services/evaluator/core/features.py, ``encode_features``).

Two feature spaces (services/evaluator/config.py FEATURE_SPACES):

* ``segmenter_fpn``: a trained segmenter's own backbone, through the architecture's
  ``features`` hook (core/models.py SegmentationModel): the model's own normalisation and
  input size, eval mode, no augmentation. Task-aware (it is the network whose gain we
  measure) and needs no downloaded weights. Its D is the FPN's channel count.
* ``inception``: torchvision's Inception-v3 with weights the user supplies (``file:NAME``
  inside SYNTHAUG_WEIGHTS_DIR or ``store:KEY``; never downloaded), the 2048-d pool features
  (``fc`` replaced by the identity). Images are resized to 299 × 299 (bilinear, antialiased),
  normalised with the ImageNet mean and std, and — as torchvision does when it loads its own
  Inception weights (``transform_input=True``) — mapped back to the [-1, 1] scaling those
  weights were trained with. The comparable-across-papers space, when weights exist.

Rows are in image-id order; images of one size are batched together, so an image's features
do not depend on which images share its batch (nor on the batch size).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.sampling import nested_order
from services.evaluator.core.features import FeatureSet
from services.segmenter.core.data import to_device_batch
from services.segmenter.core.models import load_state_dict_into
from services.segmenter.core.predictor import LoadedModel

SEGMENTER_FPN = "segmenter_fpn"
INCEPTION = "inception"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inception state-dict entries that the pool features do not use (torchvision's checkpoints
#: carry the auxiliary classifier and the 1000-class head).
INCEPTION_UNUSED = ("AuxLogits.", "fc.")

#: (images done, images in all, metrics) after every batch.
Progress = Callable[[int, int, "dict[str, float]"], None]


class Extractor(Protocol):
    """A feature space: H×W×3 uint8 images → N × D float32 (D fixed per extractor)."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


class SegmenterExtractor:
    """``segmenter_fpn``: a loaded segmenter's ``features`` hook."""

    name = SEGMENTER_FPN

    def __init__(self, loaded: LoadedModel, device: torch.device, what: str):
        if not callable(getattr(loaded.model, "features", None)):
            raise InvalidArgument(f"{what}: architecture {loaded.spec.architecture!r} has no features hook "
                                  "(core/models.py SegmentationModel.features); use the inception extractor")
        self.model = loaded.model.eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.model.features(to_device_batch(images, self.device)).float().cpu().numpy()  # type: ignore[operator,no-any-return]


def inception_network(state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """torchvision's Inception-v3 (no auxiliary head, no initialisation: every tensor comes
    from `state`), its classifier replaced by the identity: 2048-d pool features."""
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    model.fc = nn.Identity()
    used = {k: v for k, v in state.items() if not k.startswith(INCEPTION_UNUSED)}
    load_state_dict_into(model, used, source)
    return model.eval()


class InceptionExtractor:
    """``inception``: pool features of Inception-v3 with the user's weights."""

    name = INCEPTION

    def __init__(self, state: Mapping[str, torch.Tensor], source: str, device: torch.device):
        self.model = inception_network(state, source).to(device)
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        resized = [F.interpolate(im[None], size=(INCEPTION_SIZE, INCEPTION_SIZE),
                                 mode="bilinear", align_corners=False, antialias=True) for im in to_device_batch(images, self.device)]
        x = (torch.cat(resized).clamp_(0.0, 1.0) - self.mean) / self.std
        return self.model(x).float().cpu().numpy()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ImageSet:
    """One set to extract: `ids` (ascending) of `dataset`'s `split`, named `label`."""

    label: str
    dataset: Dataset
    split: str
    ids: list[int]


def select_ids(dataset: Dataset, split: str, count: int, order_seed: int, what: str) -> list[int]:
    """The images of a set, ascending: the first `count` of the split's nested order
    (services/common/sampling.py, as a TrainingSource takes them), or all (count 0)."""
    ids = [int(r["id"]) for r in dataset.image_records(split)]
    if not ids:
        raise InvalidArgument(f"{what}: dataset {dataset.name or dataset.id} has no images" + (f" in split {split!r}" if split else ""))
    if count < 0 or count > len(ids):
        raise InvalidArgument(f"{what}.count must be in [0, {len(ids)}] (the split's images; 0 = all), got {count}")
    return sorted(nested_order(order_seed, dataset.id, split, ids)[:count]) if count else ids


def _size_batches(dataset: Dataset, ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """`ids` in batches of one image size (sizes ascending, ids ascending within a size)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in ids:
        r = dataset.record(i)
        by_size.setdefault((int(r["height"]), int(r["width"])), []).append(i)
    return [group[s:s + batch_size] for size in sorted(by_size) for group in [by_size[size]]
            for s in range(0, len(group), batch_size)]


def extract(extractor: Extractor, sets: Sequence[ImageSet], batch_size: int,
            progress: Progress | None = None, cancelled: Callable[[], None] = lambda: None) -> tuple[dict[str, FeatureSet], float]:
    """Every set's features (rows in id order) and the extraction's images per second
    (images over the seconds spent in the network and in decoding)."""
    total = sum(len(s.ids) for s in sets)
    done, seconds = 0, 0.0
    out: dict[str, FeatureSet] = {}
    for image_set in sets:
        rows: dict[int, np.ndarray] = {}
        for batch in _size_batches(image_set.dataset, image_set.ids, batch_size):
            cancelled()
            start = time.perf_counter()
            images = [image_set.dataset.load_image(image_set.dataset.record(i)) for i in batch]
            for i, row in zip(batch, extractor(images)):
                rows[i] = row
            seconds += time.perf_counter() - start
            done += len(batch)
            if progress is not None:
                progress(done, total, {"images_per_s": done / max(seconds, 1e-9)})
        features = np.stack([rows[i] for i in image_set.ids]).astype(np.float32)
        out[image_set.label] = FeatureSet(image_set.label, features, np.asarray(image_set.ids, dtype=np.int64),
                                          image_set.dataset.id, image_set.split)
    return out, total / max(seconds, 1e-9)

