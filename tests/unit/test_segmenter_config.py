"""Segmenter settings and weights specs: one conversion from requests and plans, one parser
of weight strings, and file weights that never leave SYNTHAUG_WEIGHTS_DIR."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.config import (
    config_from_mapping,
    config_from_proto,
    config_to_proto,
)
from services.common.errors import InvalidArgument
from services.segmenter.config import PredictConfig, SegmenterConfig
from services.segmenter.weights import (
    WEIGHTS_DIR_ENV,
    FileWeights,
    NoWeights,
    StoreWeights,
    TorchvisionWeights,
    parse_weights,
    read_weights,
)
from synthaug.v1 import segmenter_pb2 as pb
from tests.conftest import REPO

PREDICT_INPUTS = ("checkpoint", "dataset", "split")


def test_unset_fields_take_the_dataclass_defaults_and_zero_is_a_value() -> None:
    assert config_from_proto(SegmenterConfig, pb.SegmenterConfig()) == SegmenterConfig()
    assert SegmenterConfig().num_workers == -1  # auto; the proto once said "default 2"
    cfg = config_from_proto(SegmenterConfig, pb.SegmenterConfig(epochs=3, warmup_iters=0, augment=False, momentum=0.0,
                                                                 trainable_backbone_layers=0))
    assert (cfg.epochs, cfg.warmup_iters, cfg.augment, cfg.momentum, cfg.trainable_backbone_layers) == (3, 0, False, 0.0, 0)
    assert cfg.batch_size == 4 and cfg.architecture == "maskrcnn_resnet50_fpn"
    # Zero is a value now, so it is checked instead of silently meaning "default".
    with pytest.raises(InvalidArgument, match=r"SegmenterConfig.epochs must be ≥ 1, got 0"):
        config_from_proto(SegmenterConfig, pb.SegmenterConfig(epochs=0))
    # The budget: unset = epochs; iterations, eval_every and real_fraction travel when set.
    assert (cfg.iterations, cfg.eval_every, cfg.real_fraction) == (None, None, None)
    budget = config_from_proto(SegmenterConfig, pb.SegmenterConfig(iterations=2000, eval_every=400, real_fraction=0.0))
    assert (budget.iterations, budget.eval_every, budget.real_fraction) == (2000, 400, 0.0)
    assert config_from_proto(SegmenterConfig, config_to_proto(budget, pb.SegmenterConfig)) == budget
    # A plan section and a request give the same configuration.
    plan = {"architecture": "maskrcnn_resnet18_fpn", "epochs": 2, "lr": 0.01, "augment": False}
    from_plan = config_from_mapping(SegmenterConfig, plan)
    assert config_from_proto(SegmenterConfig, config_to_proto(from_plan, pb.SegmenterConfig)) == from_plan


@pytest.mark.parametrize(("values", "message"), [
    ({"architecture": "unet"}, "SegmenterConfig.architecture 'unet' is unknown"),
    ({"optimizer": "lbfgs"}, "SegmenterConfig.optimizer"),
    ({"num_workers": -2}, r"SegmenterConfig.num_workers must be ≥ 0 \(or -1 = auto\), got -2"),
    ({"val_mask_threshold": 1.0}, r"SegmenterConfig.val_mask_threshold must be in \(0, 1\)"),
    ({"val_score_threshold": -0.1}, r"SegmenterConfig.val_score_threshold must be in \[0, 1\]"),
    ({"epochs": "3"}, "SegmenterConfig.epochs must be an integer"),
    ({"iterations": 0}, r"SegmenterConfig.iterations must be ≥ 1 \(or unset = epochs\), got 0"),
    ({"eval_every": 0}, r"SegmenterConfig.eval_every must be ≥ 1 \(or unset = one epoch\), got 0"),
    ({"real_fraction": 1.5}, r"SegmenterConfig.real_fraction must be in \[0, 1\]"),
    ({"real_fraction": float("nan")}, r"SegmenterConfig.real_fraction must be in \[0, 1\]"),
    ({"epochz": 3}, "unknown field"),
    ({"weights": "file:../x.pt"}, "outside SYNTHAUG_WEIGHTS_DIR"),
    ({"weights": "store:../x.pt"}, r"SegmenterConfig.weights 'store:../x.pt': invalid object key"),
    ({"weights": "DEFAULT", "architecture": "maskrcnn_resnet18_fpn"},
     "maskrcnn_resnet18_fpn has no torchvision detector weights"),
    ({"weights": "ResNet18_Weights.IMAGENET1K_V1"}, "does not fit architecture maskrcnn_resnet50_fpn"),
    ({"weights": "COCO_V1"}, "not a torchvision weights name"),
    ({"weights": "http://example.com/w.pt"}, "not 'none', a torchvision weights name, store:KEY or file:NAME"),
])
def test_bad_settings_are_refused_naming_the_field(values: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config_from_mapping(SegmenterConfig, values)


def test_weights_fitting_the_architecture_pass_without_torch() -> None:
    for arch, weights in [("maskrcnn_resnet50_fpn", "DEFAULT"),
                          ("maskrcnn_resnet50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"),
                          ("maskrcnn_resnet50_fpn_v2", "ResNet50_Weights.IMAGENET1K_V2"),
                          ("maskrcnn_resnet18_fpn", "ResNet18_Weights.IMAGENET1K_V1")]:
        SegmenterConfig(architecture=arch, weights=weights).validate()


def test_weight_strings_parse_once_into_typed_values() -> None:
    assert parse_weights("none") == parse_weights("") == NoWeights()
    assert parse_weights("DEFAULT") == TorchvisionWeights("DEFAULT")
    assert parse_weights("store:weights/r50.pt") == StoreWeights("weights/r50.pt")
    assert parse_weights("file:coco/r50.pt") == FileWeights("coco/r50.pt")
    assert SegmenterConfig(weights="store:w.pt").weights_spec == StoreWeights("w.pt")
    for text in ("file:../w.pt", "file:/etc/passwd", "file:a/../../w.pt", "file:C:\\w.pt"):
        with pytest.raises(InvalidArgument, match="outside"):
            parse_weights(text)
    with pytest.raises(InvalidArgument, match="expected file:NAME"):
        parse_weights("file:")


def test_file_weights_are_read_only_inside_the_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "weights"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.pt").write_bytes(b"weights")
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "escape.pt").symlink_to(tmp_path / "secret")
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(InvalidArgument, match="file weights are disabled"):
        read_weights(FileWeights("sub/w.pt"), None)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    assert read_weights(parse_weights("file:sub/w.pt"), None) == b"weights"
    with pytest.raises(InvalidArgument, match="outside"):
        read_weights(FileWeights("escape.pt"), None)  # a link out of the folder
    with pytest.raises(InvalidArgument, match="outside"):
        read_weights(FileWeights("../secret"), None)  # even when built without the parser
    with pytest.raises(InvalidArgument, match="nope.pt"):
        read_weights(FileWeights("nope.pt"), None)


def test_predict_settings_come_from_the_request() -> None:
    assert config_from_proto(PredictConfig, pb.PredictRequest(split="test"), exclude=PREDICT_INPUTS) == PredictConfig()
    assert PredictConfig().batch_size == 4
    assert (PredictConfig().export_threshold, PredictConfig().detections_per_image) == (0.05, 100)
    cfg = config_from_proto(PredictConfig, pb.PredictRequest(export_threshold=0.0, batch_size=2), exclude=PREDICT_INPUTS)
    assert (cfg.export_threshold, cfg.mask_threshold, cfg.batch_size, cfg.detections_per_image) == (0.0, 0.5, 2, 100)
    with pytest.raises(InvalidArgument, match=r"PredictConfig.export_threshold must be in \[0, 1\], got 1.5"):
        config_from_proto(PredictConfig, pb.PredictRequest(export_threshold=1.5), exclude=PREDICT_INPUTS)
    with pytest.raises(InvalidArgument, match="PredictConfig.detections_per_image must be ≥ 1, got 0"):
        config_from_proto(PredictConfig, pb.PredictRequest(detections_per_image=0), exclude=PREDICT_INPUTS)
    with pytest.raises(InvalidArgument, match=r"PredictConfig.mask_threshold must be in \(0, 1\), got 1.5"):
        config_from_proto(PredictConfig, pb.PredictRequest(mask_threshold=1.5), exclude=PREDICT_INPUTS)
    with pytest.raises(InvalidArgument, match="PredictConfig.batch_size must be ≥ 1, got 0"):
        config_from_proto(PredictConfig, pb.PredictRequest(batch_size=0), exclude=PREDICT_INPUTS)


def test_settings_modules_do_not_import_torch() -> None:
    code = ("import sys\nimport services.segmenter.config, services.segmenter.weights, services.segmenter.architectures\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr
