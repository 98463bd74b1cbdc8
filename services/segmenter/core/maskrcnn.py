"""The Mask R-CNN family: builders of the three registered Mask R-CNNs.

torchvision's ``maskrcnn_resnet50_fpn`` (the thesis model, default) and
``maskrcnn_resnet50_fpn_v2``, and a light ``maskrcnn_resnet18_fpn`` (ResNet-18, 128-channel
FPN, slim heads) for CPU demos and tests. Registered in services/segmenter/architectures.py;
built through services.segmenter.core.models.build_model.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from services.segmenter.core.models import ModelSpec

#: The five losses of a Mask R-CNN in train mode (the thesis optimised only two of them).
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
COCO_CLASSES = 91  # torchvision's detector weights come with COCO's 91 classes


class MaskRCNNSegmenter(MaskRCNN):
    """torchvision's MaskRCNN plus the SegmentationModel hooks (core/models.py): the same
    modules, state dict and forward, with the box head's score cut as `score_threshold`, its
    cap as `detections_per_image`, the transform's resize as `input_size`, and the pooled
    FPN levels as `features`.

    torchvision resizes every image (training and inference alike, one min_size) so that its
    shorter side is min_size unless its longer side would exceed max_size; in inference it
    pastes each instance's 28×28 mask probabilities bilinearly into the box at the input
    image's own size, so predicted masks come back at the stored size."""

    @property
    def score_threshold(self) -> float:
        return float(self.roi_heads.score_thresh)

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self.roi_heads.score_thresh = value

    @property
    def detections_per_image(self) -> int:
        return int(self.roi_heads.detections_per_img)

    @detections_per_image.setter
    def detections_per_image(self, value: int) -> None:
        self.roi_heads.detections_per_img = value

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        was_training = self.transform.training
        self.transform.eval()  # the training resize draws its size with torch's RNG; one min_size: the same size
        try:
            resized, _ = self.transform.resize(torch.zeros(1, height, width), None)
        finally:
            self.transform.train(was_training)
        return int(resized.shape[-2]), int(resized.shape[-1])

    def features(self, images: list[torch.Tensor]) -> torch.Tensor:
        """N × FPN channels: each FPN level (P2…P6) average-pooled over the image's own
        area, the levels averaged. Through the model's own transform (normalisation and
        resize, as in prediction), so the features see what the detector sees. Pooling covers
        each image's own area, not the zero padding a batch adds (torchvision pads it to a
        multiple of 32 and to its largest image); convolutions near the border still see that
        padding, so callers batch images of one size together (core/feature_extraction.py)."""
        batch, _ = self.transform(images)
        levels = list(self.backbone(batch.tensors).values())
        padded_h, padded_w = batch.tensors.shape[-2:]
        pooled = torch.zeros(len(images), levels[0].shape[1], device=levels[0].device, dtype=torch.float32)
        for level in levels:
            scale_h, scale_w = level.shape[-2] / padded_h, level.shape[-1] / padded_w
            for i, (h, w) in enumerate(batch.image_sizes):
                rows, cols = max(1, math.ceil(h * scale_h)), max(1, math.ceil(w * scale_w))
                pooled[i] += level[i, :, :rows, :cols].float().mean(dim=(1, 2))
        return pooled / len(levels)


def _with_hook(model: MaskRCNN) -> MaskRCNNSegmenter:
    # torchvision's factories build a plain MaskRCNN; the subclass only adds a property, so
    # re-classing the built instance is exact (no module, parameter or buffer changes).
    model.__class__ = MaskRCNNSegmenter
    return model  # type: ignore[return-value]


def _resnet50(factory: Callable[..., MaskRCNN], spec: ModelSpec, detector_weights: Any,
              backbone_weights: Any) -> MaskRCNNSegmenter:
    common = dict(min_size=spec.min_size, max_size=spec.max_size, trainable_backbone_layers=spec.trainable_backbone_layers)
    if detector_weights is not None:
        # Detector weights come with COCO's classes: load them, then fresh class heads.
        model = factory(weights=detector_weights, **common)
        if spec.num_classes != COCO_CLASSES:
            replace_heads(model, spec.num_classes)
        return _with_hook(model)
    return _with_hook(factory(weights=None, weights_backbone=backbone_weights, num_classes=spec.num_classes, **common))


def build_resnet50_fpn(spec: ModelSpec, detector_weights: Any = None, backbone_weights: Any = None) -> MaskRCNNSegmenter:
    return _resnet50(maskrcnn_resnet50_fpn, spec, detector_weights, backbone_weights)


def build_resnet50_fpn_v2(spec: ModelSpec, detector_weights: Any = None, backbone_weights: Any = None) -> MaskRCNNSegmenter:
    return _resnet50(maskrcnn_resnet50_fpn_v2, spec, detector_weights, backbone_weights)


LIGHT_CHANNELS = 128
LIGHT_REPRESENTATION = 256


def build_resnet18_fpn(spec: ModelSpec, detector_weights: Any = None, backbone_weights: Any = None) -> MaskRCNNSegmenter:
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
    return MaskRCNNSegmenter(
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
