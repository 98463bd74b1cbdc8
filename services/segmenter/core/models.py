"""Model factory: build a registered architecture, and the contract the trainer and the
predictor hold every architecture to.

Architectures are registered by name in services/segmenter/architectures.py (torch-free, so
plans are validated without torch); `build_model` imports the registered builder when a
network is first needed. The trainer and predictor use a network only through
`SegmentationModel`, never through one family's internals, so adding an architecture is
one new file and one registry line.

The input resize (``min_size``/``max_size``) is the plan's image size, or follows the
dataset's image size, so 256-px images are trained at 256 px — the thesis upsampled them to
800 px through torchvision's default and paid ~10× in compute for it.

Weights never download unless the user names torchvision weights explicitly (see
services/segmenter/weights.py): a torchvision name is resolved here against the
architecture's registered weights enums; a state dict (from a file or the store, read with
``weights_only=True``) is loaded with :func:`load_state_dict_into`.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn
from torchvision.models import get_weight

from services.common.errors import InvalidArgument
from services.segmenter.architectures import (
    DEFAULT_ARCHITECTURE,
    Architecture,
    get_architecture,
)
from services.segmenter.weights import TorchvisionWeights

log = logging.getLogger(__name__)


class SegmentationModel(Protocol):
    """What the trainer and the predictor rely on, beyond the network being an ``nn.Module``
    (``train()``/``eval()``, ``parameters()``, ``state_dict()``, ``to()``).

    Inputs are a list of 3×H×W float images in [0, 1] (sizes may differ).

    * Train mode, ``model(images, targets)``: a dict of scalar loss tensors; the trainer
      optimises their sum and logs each by name. A target (core/data.py make_target) has
      ``boxes`` (N×4 float, x0 y0 x1 y1), ``labels`` (N int64 in 1..K, 0 being background),
      ``masks`` (N×H×W uint8) and ``image_id``; N may be 0.
    * Eval mode, ``model(images)``: one dict per image with ``boxes`` (N×4 float, xyxy in
      the input image's pixels), ``labels`` (N int64 in 1..K), ``scores`` (N float) and
      ``masks`` (N×1×H×W mask probabilities at the input image's size).
    * ``score_threshold``: detections scoring below it are dropped inside the model (a
      read/write attribute). The predictor sets it to its export threshold so that nothing
      it asks for is lost, and validation raises it so that the model skips work on
      detections that would be thrown away. A model without an internal cut keeps the
      attribute and ignores it (the predictor filters by score itself).
    * ``detections_per_image``: the most detections the model returns per image (a
      read/write attribute; the predictor sets it to its own cap and keeps the
      highest-scoring ones itself, so a model without a cap may ignore it).
    * ``input_size(height, width)``: the size an image of that size has when it enters the
      network (the model's own resize to ModelSpec min_size / max_size), in training and in
      prediction alike; outputs come back at the input image's own size.
    * ``features(images)`` (eval mode): one vector per image, N × D float, from the
      network's own backbone at its own input size and normalisation — the task-aware
      feature space ("segmenter_fpn") in which the quality of synthetic images is measured
      (core/feature_extraction.py). D is fixed per network. An architecture without it can
      train and predict, but its features are refused (InvalidArgument naming it).
    """

    score_threshold: float
    detections_per_image: int

    def __call__(self, images: list[torch.Tensor],
                 targets: list[dict[str, torch.Tensor]] | None = None) -> Any: ...

    def input_size(self, height: int, width: int) -> tuple[int, int]: ...

    def features(self, images: list[torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same network (kept inside every checkpoint)."""

    architecture: str = DEFAULT_ARCHITECTURE
    num_classes: int = 2  # including background
    min_size: int = 800
    max_size: int = 1333
    trainable_backbone_layers: int | None = None
    # True when the backbone started from pretrained weights: then, as in torchvision,
    # BatchNorm is frozen; from scratch it is a trainable BatchNorm2d.
    pretrained_backbone: bool = False

    @property
    def registered(self) -> Architecture:
        """The architecture's registry entry (InvalidArgument when it is unknown)."""
        return get_architecture(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Tolerates keys it does not know; sizes default to the architecture's."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        architecture = get_architecture(str(known.get("architecture", DEFAULT_ARCHITECTURE)), "model architecture")
        known.setdefault("min_size", architecture.min_size)
        known.setdefault("max_size", architecture.max_size)
        return cls(**known)


def torchvision_weights(name: str, architecture: str) -> tuple[Any, Any]:
    """(detector weights, backbone weights) torchvision enums for a torchvision weights name."""
    entry = get_architecture(architecture)
    entry.check_torchvision_weights(name)
    full = f"{entry.detector_weights}.DEFAULT" if name == "DEFAULT" else name
    try:
        weights = get_weight(full)
    except (ValueError, KeyError, AttributeError) as exc:
        raise InvalidArgument(f"SegmenterConfig.weights {name!r} is not a torchvision weights name ({exc})") from None
    enum_name = type(weights).__name__
    if enum_name == entry.detector_weights:
        return weights, None
    if enum_name == entry.backbone_weights:
        return None, weights
    raise InvalidArgument(f"SegmenterConfig.weights {name!r} ({enum_name}) does not fit architecture {architecture}")


def build_model(spec: ModelSpec, weights: TorchvisionWeights | None = None) -> nn.Module:
    """The network of ``spec`` (a SegmentationModel); ``weights`` may name torchvision
    weights to download."""
    entry = spec.registered
    if spec.num_classes < 2:
        raise InvalidArgument(f"num_classes must be ≥ 2 (background + one category), got {spec.num_classes}")
    detector, backbone = torchvision_weights(weights.name, spec.architecture) if weights is not None else (None, None)
    module, _, function = entry.builder.partition(":")
    builder = getattr(importlib.import_module(module), function)
    model: nn.Module = builder(spec, detector, backbone)
    return model


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                         class_heads: Sequence[str] = ()) -> list[str]:
    """Load ``state`` into ``model``; parameters under ``class_heads`` (the architecture's
    class-count-dependent heads) whose shapes differ stay freshly initialised (returned as
    the list of skipped keys). Any other mismatch is an InvalidArgument naming ``source``
    and the first offending keys."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidArgument(f"weights {source}: not a state dict of tensors")
    own = model.state_dict()
    heads = tuple(class_heads)
    filtered: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    shape_errors: list[str] = []
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            if heads and key.startswith(heads):
                skipped.append(key)
                continue
            shape_errors.append(f"{key}: {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            continue
        filtered[key] = value
    # BatchNorm's step counter is absent from FrozenBatchNorm checkpoints; it is harmless.
    missing = [k for k in own if k not in filtered and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in filtered if k not in own]
    if shape_errors or missing or unexpected:
        parts = []
        if shape_errors:
            parts.append(f"{len(shape_errors)} shape mismatches (e.g. {'; '.join(shape_errors[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise InvalidArgument(f"weights {source} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(filtered, strict=False)
    if skipped:
        log.info("weights %s: class heads re-initialised (%d tensors differ in class count)", source, len(skipped))
    return skipped
