"""Generators by name: a toy model registered with one line trains and generates through the
pipeline, so nothing there depends on pix2pix; the names are known without torch."""
from __future__ import annotations

import subprocess
import sys
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from services.common.config import config_from_mapping
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.refs import dataset_output, output
from services.gan import registry
from services.gan.checkpoint import load_checkpoint
from services.gan.config import GanConfig, GenerateConfig
from services.gan.grid import to_uint8
from services.gan.pipeline import run_generate, run_train
from services.gan.rendering import RenderSpec, render_condition
from tests.conftest import REPO
from tests.grpc.test_gan_service import write_dataset
from tests.unit.test_gan_pipeline import Ctx


class ToyModel:
    """The smallest GanModel: a 1×1 convolution and tanh, learning by L1 alone."""

    loss_names = ("L1",)

    def __init__(self, cfg: GanConfig, spec: RenderSpec, device: torch.device) -> None:
        self.device = device
        self.net = nn.Sequential(nn.Conv2d(spec.num_channels, 3, 1), nn.Tanh()).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr)
        self.epochs_ended = 0

    @property
    def generator(self) -> nn.Module:
        return self.net

    def train_step(self, condition: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        self.opt.zero_grad()
        loss = (self.net(condition.to(self.device)) - real.to(self.device)).abs().mean()
        loss.backward()
        self.opt.step()
        return {"L1": loss.detach()}

    def end_epoch(self) -> None:
        self.epochs_ended += 1

    def learning_rate(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state_dict(self, with_optimizers: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}
        if with_optimizers:
            state["opt"] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])


@pytest.fixture()
def toy(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register ToyModel as "toy" for this test: the one line a new generator adds."""
    monkeypatch.setitem(registry.GENERATORS, "toy", f"{__name__}:ToyModel")
    return "toy"


TOY = dict(image_size=32, depth=5, n_layers_d=1, lr=0.05, n_epochs=1, n_epochs_decay=0, batch_size=2, sample_count=1)


def test_names_are_known_without_torch():
    code = ("import sys\nfrom services.gan.config import GanConfig\nfrom services.common.config import config_from_mapping\n"
            "config_from_mapping(GanConfig, {'model': 'pix2pix'})\nprint(sys.modules.get('torch') is None, GanConfig().model)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["True", "pix2pix"], out.stderr
    assert registry.model_names() == ("pix2pix",)


def test_an_unregistered_name_is_refused_until_registered(toy):
    with pytest.raises(InvalidArgument, match=r"GanConfig.model must be a registered generator \(pix2pix, toy\), got 'toy2'"):
        config_from_mapping(GanConfig, {"model": "toy2"})
    with pytest.raises(InvalidArgument, match="unknown generator 'toy2'"):
        registry.builder("toy2")
    assert registry.builder(toy) is ToyModel
    assert config_from_mapping(GanConfig, {"model": toy, **TOY}).model == toy


def test_a_registered_toy_trains_and_generates_through_the_pipeline(file_store, toy):
    ds = Dataset.load(file_store, write_dataset(file_store, 3, 32, "toy-real"))
    cfg = config_from_mapping(GanConfig, {"model": toy, **TOY})
    ctx = Ctx("jobs/toy/work/")
    result = run_train(ctx, file_store, ds, "train", cfg, seed=1)
    epochs = [m for _, _, m in ctx.events if "epoch" in m]
    assert [m["epoch"] for m in epochs] == [1.0] and set(epochs[0]) >= {"L1", "lr", "pairs_per_s"} and epochs[0]["lr"] == 0.05
    assert result.attributes["model"] == toy and result.metrics["num_pairs"] == 3.0

    ref = output(result, "generator")
    state = load_checkpoint(file_store.get_bytes(ref.key), ref.key)
    assert state["config"]["model"] == toy and set(state["weights"]) == {"net"} and state["epoch"] == 1
    assert [set(h) for h in state["history"]] == [{"epoch", "L1"}]

    out = run_generate(Ctx("jobs/toy-gen/work/"), file_store, ds, "", state, ref, GenerateConfig(count=2), seed=5)
    gan = Dataset.load(file_store, dataset_output(out))
    records = gan.image_records()
    assert gan.kind == "gan" and len(records) == 2 and gan.provenance["params"]["model"] == toy

    # each image is the toy network, with the checkpoint's weights, applied to the rendered masks
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Tanh())
    net.load_state_dict(state["weights"]["net"])
    spec = RenderSpec.from_dict(state["render"])
    for record, source in zip(records, ds.image_records()):
        masks, labels, _ = ds.load_masks(source)
        cond = torch.from_numpy(render_condition(masks, labels, spec)[None])
        with torch.no_grad():
            expected = to_uint8(net(cond)[0].numpy())
        np.testing.assert_array_equal(gan.load_image(record), expected)
