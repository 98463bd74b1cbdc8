"""Mixed precision without a GPU: the bf16 autocast code path of the trainer and the
predictor (the functions CUDA runs) under torch's CPU autocast (SegmenterConfig.cpu_amp),
and a diverging run as the caller's error."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from services.common.errors import FailedPrecondition, InvalidArgument
from services.segmenter.config import SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.models import ModelSpec, build_model
from services.segmenter.core.predictor import autocast, effective_amp, infer, pixel_validation
from services.segmenter.core.trainer import Trainer
from tests.unit.segmenter_shapes import TOY, make_source, toy_architecture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIGHT = "maskrcnn_resnet18_fpn"
CPU = torch.device("cpu")


def test_amp_applies_on_cuda_and_on_cpu_only_when_asked() -> None:
    cuda = torch.device("cuda")
    assert [effective_amp(cuda, a) for a in ("none", "bf16", "fp16")] == ["none", "bf16", "fp16"]
    assert [effective_amp(CPU, a) for a in ("none", "bf16", "fp16")] == ["none", "none", "none"]  # the CPU default
    assert effective_amp(CPU, "bf16", cpu_amp=True) == "bf16"
    assert effective_amp(CPU, "fp16", cpu_amp=True) == "none"
    with pytest.raises(InvalidArgument, match="SegmenterConfig.cpu_amp needs amp 'bf16'"):
        SegmenterConfig(cpu_amp=True).validate()


def _cfg(**kw: Any) -> SegmenterConfig:
    base: dict[str, Any] = dict(architecture=TOY, iterations=2, eval_every=2, batch_size=2, lr=0.5, warmup_iters=0,
                                grad_clip=10.0, num_workers=0, seed=1)
    base.update(kw)
    return SegmenterConfig(**base)


def test_training_and_validation_run_under_cpu_bf16_autocast(tmp_path) -> None:
    """The trainer's and validation's autocast, through the Trainer (a toy network: CPU bf16
    convolutions are slow), against the same run in full precision."""
    train = make_source("t", 4, size=16, seed=11)
    val = make_source("v", 2, size=16, seed=12, first_id=100)
    with toy_architecture():
        mixed = Trainer(_cfg(amp="bf16", cpu_amp=True), [(train, 4)], val, ck.DirectoryCheckpointIO(tmp_path / "bf16"))
        assert mixed.amp == "bf16"
        record = mixed.run().record
        full = Trainer(_cfg(amp="bf16"), [(train, 4)], val, ck.DirectoryCheckpointIO(tmp_path / "fp32")).run().record
    assert (record["amp"], full["amp"]) == ("bf16", "none")  # what actually ran is recorded
    losses = [s["loss"] for s in record["steps"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses != [s["loss"] for s in full["steps"]]  # bf16 arithmetic, not the float32 path
    assert record["epochs"][0]["val"] != full["epochs"][0]["val"] or losses != full["steps"]


def test_mask_rcnn_trains_and_predicts_under_cpu_bf16_autocast(tmp_path) -> None:
    """torchvision's Mask R-CNN under the bf16 autocast that CUDA uses: every loss finite after
    a training step, convolutions in bf16, outputs back in float32."""
    train = make_source("t", 2, size=32, seed=11)
    cfg = SegmenterConfig(architecture=LIGHT, iterations=1, batch_size=2, lr=0.01, warmup_iters=0, grad_clip=10.0,
                          num_workers=0, seed=1, amp="bf16", cpu_amp=True)
    result = Trainer(cfg, [(train, 2)], None, ck.DirectoryCheckpointIO(tmp_path)).run()
    losses = result.record["epochs"][0]["losses"]
    assert result.record["amp"] == "bf16" and len(losses) == 6 and all(math.isfinite(v) for v in losses.values())

    torch.manual_seed(0)
    model = build_model(ModelSpec(LIGHT, 2, 32, 32)).eval()
    dtypes: list[torch.dtype] = []
    model.backbone.body.layer1.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    image = train.examples[0].image
    with torch.inference_mode(), autocast(CPU, "bf16"):  # the default on CPU: full precision
        model([torch.rand(3, 32, 32)])
    outputs = infer(model, [image], CPU, amp="bf16", cpu_amp=True)
    scores = pixel_validation(model, train, CPU, 2, 0.5, 0.5, amp="bf16", cpu_amp=True)
    assert dtypes == [torch.float32, torch.bfloat16, torch.bfloat16]  # default, infer, one validation batch
    assert outputs[0]["masks"].dtype.name == "float32" and outputs[0]["masks"].shape[1:] == (32, 32)
    assert 0.0 <= scores["iou"] <= 1.0


def test_divergence_is_the_callers_to_fix(tmp_path) -> None:
    with toy_architecture():
        cfg = SegmenterConfig(architecture=TOY, batch_size=4, lr=1e38, momentum=0, warmup_iters=0, num_workers=0,
                              iterations=10, seed=3)
        trainer = Trainer(cfg, [(make_source("r", 4, size=16), 4)], None, ck.DirectoryCheckpointIO(tmp_path))
        with pytest.raises(FailedPrecondition, match=r"training diverged at iteration \d+: loss_mask=(inf|nan); "
                                                     "lower the learning rate or enable grad_clip") as caught:
            trainer.run()
    assert caught.value.code == "FAILED_PRECONDITION"
