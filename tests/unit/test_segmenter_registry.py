"""The architecture registry: a toy architecture, registered by name, trains and predicts
through the same Trainer and predictor as Mask R-CNN — they rely on the SegmentationModel
contract only."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torch.nn import functional as F

from services.common.errors import InvalidArgument
from services.segmenter.architectures import (
    Architecture,
    architecture_names,
    get_architecture,
    register,
    unregister,
)
from services.segmenter.config import PredictConfig, SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.data import image_to_tensor
from services.segmenter.core.models import ModelSpec, build_model
from services.segmenter.core.predictor import load_model_file, predict
from services.segmenter.core.trainer import Trainer
from tests.unit.segmenter_shapes import make_source

TOY = "toy_pixel_logistic"


class ToySegmenter(nn.Module):
    """Per-pixel logistic regression on colour; one detection per image: the foreground
    probability map, scored by its mean probability over the predicted foreground."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.pixel = nn.Conv2d(3, 1, kernel_size=1)
        self.num_classes = num_classes
        self.score_threshold = 0.0
        self.thresholds_seen: list[float] = []  # score_threshold at each eval call

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


@pytest.fixture()
def toy() -> Iterator[Architecture]:
    torch.set_num_threads(1)
    yield register(Architecture(TOY, f"{__name__}:build_toy", "per-pixel logistic regression (tests)"))
    unregister(TOY)


def test_registered_names_are_known_without_building(toy: Architecture) -> None:
    assert architecture_names()[:3] == ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet18_fpn")
    assert TOY in architecture_names() and get_architecture(TOY) is toy
    SegmenterConfig(architecture=TOY).validate()
    with pytest.raises(InvalidArgument, match="does not fit architecture toy_pixel_logistic"):
        SegmenterConfig(architecture=TOY, weights="ResNet50_Weights.IMAGENET1K_V1").validate()
    with pytest.raises(ValueError, match="lacks the outputs"):
        register(Architecture("boxes_only", f"{__name__}:build_toy", outputs=("boxes", "labels", "scores")))
    with pytest.raises(ValueError, match="module:function"):
        register(Architecture("no_function", __name__))
    assert "boxes_only" not in architecture_names() and "no_function" not in architecture_names()


def test_unregistered_architecture_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=f"architecture '{TOY}' is unknown; expected one of maskrcnn_resnet50_fpn"):
        SegmenterConfig(architecture=TOY).validate()


def test_toy_architecture_trains_and_predicts_through_the_same_pipeline(toy: Architecture, tmp_path) -> None:
    train = make_source("train", 6, size=32, seed=1)
    val = make_source("val", 3, size=32, seed=2, first_id=101)
    cfg = SegmenterConfig(architecture=TOY, epochs=1, batch_size=4, lr=0.5, warmup_iters=0, num_workers=0,
                          augment=False, seed=3, val_score_threshold=0.25)
    result = Trainer(cfg, [(train, 6)], val, ck.DirectoryCheckpointIO(tmp_path)).run()
    rec = result.record
    assert [e["epoch"] for e in rec["epochs"]] == [0] and rec["best_epoch"] == 0
    assert [s["iter"] for s in rec["steps"]] == [1, 2]  # 6 images in batches of 4
    assert set(rec["epochs"][0]["losses"]) == {"loss_mask", "loss"}  # the model's own losses, summed
    assert set(rec["epochs"][0]["val"]) == {"iou", "f1", "precision", "recall", "es"}
    assert rec["model"]["architecture"] == TOY

    loaded = load_model_file(result.model_file, "toy model", torch.device("cpu"))
    assert isinstance(loaded.model, ToySegmenter) and not loaded.model.training
    results = predict(loaded, val, torch.device("cpu"), PredictConfig(score_threshold=0.0, mask_threshold=0.5, batch_size=2))
    # The predictor lowered the model's own cut through the hook, then kept everything ≥ 0.
    assert loaded.model.thresholds_seen == [0.0, 0.0]
    assert [r["image_id"] for r in results] == [101, 102, 103]
    assert all(r["category_id"] == 1 for r in results)
    with torch.inference_mode():
        for r in results:
            image = image_to_tensor(val.load(r["image_id"]).image)
            out = loaded.model([image])[0]
            expected = (out["masks"][0, 0] >= 0.5).numpy()
            assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), expected)
            assert r["score"] == pytest.approx(float(out["scores"][0]))


def test_validation_raises_the_models_cut_to_its_threshold_and_restores_it(toy: Architecture) -> None:
    from services.segmenter.core.predictor import pixel_validation

    model = build_model(ModelSpec(TOY, 2, 32, 32))
    model.score_threshold = 0.1
    pixel_validation(model, make_source("v", 2, size=32), torch.device("cpu"), 2, 0.4, 0.5)
    assert model.thresholds_seen == [0.4] and model.score_threshold == 0.1 and model.training
