"""Mask R-CNN factory.

Three architectures: torchvision's ``maskrcnn_resnet50_fpn`` (the thesis model, default),
``maskrcnn_resnet50_fpn_v2`` and a light ``maskrcnn_resnet18_fpn`` (ResNet-18, 128-channel
FPN, slim heads) for CPU demos and tests.
The input resize (``min_size``/``max_size``) follows the dataset's image size, so 256-px
images are trained at 256 px — the thesis upsampled them to 800 px through torchvision's
default and paid ~10× in compute for it.

Weights never download unless the user names torchvision weights explicitly: ``"none"``
(default) trains from scratch; a torchvision weights name (``"DEFAULT"``,
``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``, ``"ResNet50_Weights.IMAGENET1K_V1"`` for the
backbone only) loads through torchvision; a state dict (from a file or the store, read by the
caller with ``weights_only=True``) is loaded with :func:`load_state_dict_into`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models import get_weight
from torchvision.models.detection import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models import resnet18
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops import misc as misc_nn_ops

from services.common.errors import InvalidArgument

log = logging.getLogger(__name__)

ARCHITECTURES = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet18_fpn")
DEFAULT_ARCHITECTURE = "maskrcnn_resnet50_fpn"

# Parameters of the class-specific heads: re-initialised when the class count differs.
HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def validate_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise InvalidArgument(
            f"SegmenterConfig.architecture {name!r} is unknown; expected one of {', '.join(ARCHITECTURES)}"
        )
    return name


def torchvision_weights(name: str, architecture: str) -> tuple[Any, Any]:
    """(detector weights, backbone weights) enums for a torchvision weights name."""
    enum_names = {
        "maskrcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
        "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
        "maskrcnn_resnet18_fpn": None,
    }
    full = name
    if name == "DEFAULT":
        if enum_names[architecture] is None:
            raise InvalidArgument(f"SegmenterConfig.weights 'DEFAULT': {architecture} has no torchvision detector weights")
        full = f"{enum_names[architecture]}.DEFAULT"
    try:
        weights = get_weight(full)
    except (ValueError, KeyError, AttributeError) as exc:
        raise InvalidArgument(f"SegmenterConfig.weights {name!r} is not a torchvision weights name ({exc})") from None
    enum_name = type(weights).__name__
    if enum_name == enum_names[architecture]:
        return weights, None
    backbone = {"maskrcnn_resnet50_fpn": "ResNet50_Weights", "maskrcnn_resnet50_fpn_v2": "ResNet50_Weights",
                "maskrcnn_resnet18_fpn": "ResNet18_Weights"}[architecture]
    if enum_name == backbone:
        return None, weights
    raise InvalidArgument(f"SegmenterConfig.weights {name!r} ({enum_name}) does not fit architecture {architecture}")


def build_model(spec: ModelSpec, torchvision_weights: str | None = None) -> MaskRCNN:
    """A Mask R-CNN for ``spec``; ``torchvision_weights`` may name weights to download."""
    validate_architecture(spec.architecture)
    if spec.num_classes < 2:
        raise InvalidArgument(f"num_classes must be ≥ 2 (background + one category), got {spec.num_classes}")
    det_w, bb_w = (None, None)
    if torchvision_weights:
        det_w, bb_w = torchvision_weights(torchvision_weights, spec.architecture)
    common = dict(min_size=spec.min_size, max_size=spec.max_size)
    tbl = spec.trainable_backbone_layers
    if spec.architecture == "maskrcnn_resnet18_fpn":
        return _light_maskrcnn(spec, bb_w)
    factory = maskrcnn_resnet50_fpn if spec.architecture == "maskrcnn_resnet50_fpn" else maskrcnn_resnet50_fpn_v2
    if det_w is not None:
        # Detector weights come with COCO's 91 classes: load them, then new class heads.
        model = factory(weights=det_w, trainable_backbone_layers=tbl, **common)
        if spec.num_classes != 91:
            replace_heads(model, spec.num_classes)
        return model
    return factory(weights=None, weights_backbone=bb_w, num_classes=spec.num_classes,
                   trainable_backbone_layers=tbl, **common)


LIGHT_CHANNELS = 128
LIGHT_REPRESENTATION = 256


def _light_maskrcnn(spec: ModelSpec, backbone_weights: Any) -> MaskRCNN:
    """ResNet-18 + 128-channel FPN with slimmer heads (256-d box MLP, two 128-channel mask
    convs) and fewer proposals: ~10× cheaper than the ResNet-50 model, for CPU demos and
    tests. Everything else is torchvision's Mask R-CNN (same losses, same outputs)."""
    pretrained = backbone_weights is not None or spec.pretrained_backbone
    norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    tbl = spec.trainable_backbone_layers
    trainable = tbl if tbl is not None else (3 if pretrained else 5)
    body = resnet18(weights=backbone_weights, norm_layer=norm)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers_to_train.append("bn1")
    for name, parameter in body.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    backbone = BackboneWithFPN(
        body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512], out_channels=LIGHT_CHANNELS,
        extra_blocks=LastLevelMaxPool(), norm_layer=None,
    )
    c, r = LIGHT_CHANNELS, LIGHT_REPRESENTATION
    return MaskRCNN(
        backbone, num_classes=None, min_size=spec.min_size, max_size=spec.max_size,
        box_head=TwoMLPHead(c * 7 * 7, r), box_predictor=FastRCNNPredictor(r, spec.num_classes),
        mask_head=MaskRCNNHeads(c, (c, c), 1), mask_predictor=MaskRCNNPredictor(c, c, spec.num_classes),
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=200,
        box_batch_size_per_image=128,
        # One octave smaller than torchvision's (32…512): small objects in small images.
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5),
    )


def replace_heads(model: MaskRCNN, num_classes: int) -> None:
    """Fresh box and mask predictors for ``num_classes`` (background included)."""
    box = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, num_classes)
    mask = model.roi_heads.mask_predictor
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask.conv5_mask.in_channels, mask.conv5_mask.out_channels, num_classes)


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; class-specific heads whose shapes differ stay freshly
    initialised (returned as the list of skipped keys). Any other mismatch is an
    InvalidArgument naming ``source`` and the first offending keys."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidArgument(f"weights {source}: not a state dict of tensors")
    own = model.state_dict()
    filtered: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    shape_errors: list[str] = []
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            if key.startswith(HEAD_PREFIXES):
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
