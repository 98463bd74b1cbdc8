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
from tests.unit.segmenter_shapes import TOY, ToySegmenter, build_toy, make_source, toy_architecture


@pytest.fixture()
def toy() -> Iterator[Architecture]:
    with toy_architecture() as architecture:
        yield architecture


def test_registered_names_are_known_without_building(toy: Architecture) -> None:
    assert architecture_names()[:3] == ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet18_fpn")
    assert TOY in architecture_names() and get_architecture(TOY) is toy
    SegmenterConfig(architecture=TOY).validate()
    with pytest.raises(InvalidArgument, match="does not fit architecture toy_pixel_logistic"):
        SegmenterConfig(architecture=TOY, weights="ResNet50_Weights.IMAGENET1K_V1").validate()
    with pytest.raises(ValueError, match="lacks the outputs"):
        register(Architecture("boxes_only", f"{build_toy.__module__}:build_toy", outputs=("boxes", "labels", "scores")))
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
    assert [s["iteration"] for s in rec["steps"]] == [1, 2]  # 6 images in batches of 4: one epoch, 2 steps
    assert set(rec["epochs"][0]["losses"]) == {"loss_mask", "loss"}  # the model's own losses, summed
    assert set(rec["epochs"][0]["val"]) == {"iou", "f1", "precision", "recall", "es"}
    assert rec["model"]["architecture"] == TOY

    loaded = load_model_file(result.model_file, "toy model", torch.device("cpu"))
    assert isinstance(loaded.model, ToySegmenter) and not loaded.model.training
    results = predict(loaded, val, torch.device("cpu"), PredictConfig(export_threshold=0.0, mask_threshold=0.5, batch_size=2))
    # The predictor set the model's own cut through the hook, then kept everything ≥ 0.
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


FIXED = "fixed_detections"
FIXED_SCORES = (0.30, 0.04, 0.90, 0.05, 0.60, 0.049)


class FixedDetections(nn.Module):
    """The same six detections for every image, unsorted, with neither score cut nor cap of
    its own (it records the ones it was given): the predictor must apply them itself."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.score_threshold = 0.5
        self.detections_per_image = 100
        self.settings_seen: list[tuple[float, int]] = []

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def forward(self, images: list[torch.Tensor], targets: Any = None) -> Any:
        self.settings_seen.append((self.score_threshold, self.detections_per_image))
        out = []
        for image in images:
            h, w = image.shape[-2:]
            n = len(FIXED_SCORES)
            masks = torch.zeros(n, 1, h, w)
            for k in range(n):
                masks[k, 0, 2 * k:2 * k + 2] = 0.8  # detection k covers rows 2k, 2k + 1
            out.append({"boxes": torch.tensor([[0.0, 2 * k, w, 2 * k + 2] for k in range(n)]),
                        "labels": torch.ones(n, dtype=torch.int64), "scores": torch.tensor(FIXED_SCORES),
                        "masks": masks})
        return out


def build_fixed(spec: ModelSpec, detector_weights: Any = None, backbone_weights: Any = None) -> FixedDetections:
    return FixedDetections()


def test_predict_exports_every_detection_above_the_export_threshold_up_to_the_cap() -> None:
    register(Architecture(FIXED, f"{__name__}:build_fixed", "six fixed detections (tests)"))
    try:
        spec = ModelSpec(FIXED, 2, 16, 16)
        categories = [{"id": 1, "name": "lesion"}]
        model_file = ck.model_file(build_fixed(spec).state_dict(), spec.to_dict(), categories)
        source = make_source("v", 2, size=16, seed=2, first_id=7)

        def exported(cfg: PredictConfig) -> tuple[list[tuple[int, float]], FixedDetections]:
            loaded = load_model_file(model_file, "fixed", torch.device("cpu"))
            results = predict(loaded, source, torch.device("cpu"), cfg)
            return [(r["image_id"], r["score"]) for r in results], loaded.model

        # Defaults: score ≥ 0.05 (0.05 itself included, 0.049 and 0.04 not), by decreasing score.
        scores, model = exported(PredictConfig())
        kept = [0.90, 0.60, 0.30, 0.05]
        assert scores == [(7, pytest.approx(s)) for s in kept] + [(8, pytest.approx(s)) for s in kept]
        # The model was asked for the same through the protocol, and got its own settings back.
        assert model.settings_seen == [(0.05, 100)] and (model.score_threshold, model.detections_per_image) == (0.5, 100)
        scores, model = exported(PredictConfig(detections_per_image=2, export_threshold=0.0, batch_size=1))
        assert scores == [(7, pytest.approx(0.9)), (7, pytest.approx(0.6)), (8, pytest.approx(0.9)), (8, pytest.approx(0.6))]
        assert model.settings_seen == [(0.0, 2), (0.0, 2)]
        scores, _ = exported(PredictConfig(export_threshold=0.0))
        assert [s for i, s in scores if i == 7] == pytest.approx(sorted(FIXED_SCORES, reverse=True))

        # Each exported mask is its own detection's (rows 2k, 2k + 1), thresholded at mask_threshold.
        loaded = load_model_file(model_file, "fixed", torch.device("cpu"))
        results = predict(loaded, source, torch.device("cpu"), PredictConfig(detections_per_image=1))
        mask = mask_utils.decode(results[0]["segmentation"]).astype(bool)
        assert results[0]["score"] == pytest.approx(0.9) and np.flatnonzero(mask.any(1)).tolist() == [4, 5]
        above = predict(loaded, source, torch.device("cpu"), PredictConfig(detections_per_image=1, mask_threshold=0.9))
        assert mask_utils.decode(above[0]["segmentation"]).sum() == 0  # probabilities 0.8 < 0.9
    finally:
        unregister(FIXED)
