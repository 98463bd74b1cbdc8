"""pix2pix core: networks as in the reference, the one mask rendering, config, diversity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.common.config import config_from_mapping, config_from_proto, config_to_mapping, config_to_proto
from services.common.errors import InvalidArgument
from services.gan import generator, rendering, trainer
from services.gan.config import GanConfig, GenerateConfig
from services.gan.diversity import diversity, spread, to_lab
from services.gan.model import build_model
from services.gan.networks import GANLoss, NLayerDiscriminator, UnetGenerator, build_discriminator, build_generator
from services.gan.rendering import RenderSpec, render_condition
from synthaug.v1 import gan_pb2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- networks -----------------------------------------------------------------------------
def test_reference_unet256_and_patchgan_sizes():
    """U-Net-256 / 70×70 PatchGAN of the reference: same parameter counts, 3 dropout blocks, 30×30 logits."""
    g = build_generator(3, 3, depth=8, ngf=64, norm="batch", dropout=True)
    d = build_discriminator(6, ndf=64, n_layers=3, norm="batch")
    assert sum(p.numel() for p in g.parameters()) == 54_413_955
    assert sum(p.numel() for p in d.parameters()) == 2_768_705
    drops = [m for m in g.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(m.p == 0.5 for m in drops)
    with torch.no_grad():
        assert d.eval()(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_tiny_generator_shape_range_and_init():
    torch.manual_seed(0)
    g = build_generator(4, 3, depth=6, ngf=8, norm="batch", dropout=True)
    assert len([m for m in g.modules() if isinstance(m, nn.Dropout)]) == 1
    out = g(torch.randn(2, 4, 64, 64) * 5)
    assert out.shape == (2, 3, 64, 64)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0
    convs = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(convs.std().item() - 0.02) < 0.002 and abs(convs.mean().item()) < 0.002
    bns = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bns.mean().item() - 1.0) < 0.01
    assert all(m.bias is None for m in g.modules() if isinstance(m, nn.Conv2d) and m.in_channels != 4)


def test_instance_norm_option_uses_bias_and_no_batchnorm():
    g = build_generator(1, 3, depth=5, ngf=4, norm="instance", dropout=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in g.modules())
    assert all(m.bias is not None for m in g.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(g, UnetGenerator)
    assert isinstance(build_discriminator(4, 4, 2, "instance"), NLayerDiscriminator)


def test_vanilla_gan_loss_by_hand():
    loss = GANLoss()
    zeros = torch.zeros(1, 1, 3, 3)
    assert loss(zeros, True).item() == pytest.approx(np.log(2), rel=1e-6)
    x = torch.full((1, 1, 2, 2), 2.0)
    assert loss(x, True).item() == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
    assert loss(x, False).item() == pytest.approx(np.log1p(np.exp(2.0)), rel=1e-6)


# -- rendering ----------------------------------------------------------------------------
def _two_class_masks() -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros((3, 8, 8), bool)
    m[0, 1:5, 1:5] = True   # class 3
    m[1, 1:5, 5:7] = True   # class 3, touching instance 0
    m[2, 6:8, 0:2] = True   # class 7
    return m, np.array([3, 3, 7])


def test_render_one_hot_multiclass_and_boundary():
    masks, labels = _two_class_masks()
    spec = RenderSpec((3, 7), ("a", "b"), boundary=True)
    cond = render_condition(masks, labels, spec)
    assert cond.shape == (3, 8, 8) and cond.dtype == np.float32
    assert set(np.unique(cond)) == {-1.0, 1.0}
    np.testing.assert_array_equal(cond[0] > 0, masks[0] | masks[1])
    np.testing.assert_array_equal(cond[1] > 0, masks[2])
    b = cond[2] > 0
    # rim of the 4×4 square (12 px) and of the 4×2 bar (all 8 px) keep the touching instances apart
    assert b[1:5, 1:5].sum() == 12 and b[1:5, 5:7].all()
    assert not b[2:4, 2:4].any()
    # instance 2 lies on the image edge: the edge itself is not a boundary
    assert b[6:8, 0:2].sum() == 3 and not b[7, 0]


def test_color_hint_sees_only_the_background():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (40, 90, 200)
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 4:28, 4:28] = True
    img[masks[0]] = (255, 0, 0)   # the lesion must not leak into the hint
    spec = RenderSpec((1,), ("lesion",), color_hint=True, hint_size=4)
    cond = render_condition(masks, np.array([1]), spec, img)
    assert cond.shape == (4, 32, 32)
    hint = (cond[1:] + 1) / 2 * 255
    np.testing.assert_allclose(hint, np.array([40, 90, 200], np.float32)[:, None, None] * np.ones((1, 32, 32)), atol=0.5)


def test_render_rejects_bad_input():
    masks, labels = _two_class_masks()
    with pytest.raises(InvalidArgument, match=r"category id\(s\) \[7\]"):
        render_condition(masks, labels, RenderSpec((3,)))
    with pytest.raises(InvalidArgument, match="colour-hint"):
        render_condition(masks, labels, RenderSpec((3, 7), color_hint=True))


def test_one_rendering_function_in_both_paths(monkeypatch):
    """Training and generation reach the mask rendering through the same function object."""
    assert trainer.rendering.render_condition is generator.rendering.render_condition is render_condition
    calls: list[str] = []
    real = rendering.render_condition

    def spy(*args, **kwargs):
        calls.append("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(rendering, "render_condition", spy)
    masks, labels = _two_class_masks()
    spec = RenderSpec((3, 7), boundary=True)
    pair = trainer.TrainPair(np.zeros((8, 8, 3), np.uint8), masks, labels)
    cond, img = trainer.PairDataset([pair], spec, flip=False, seed=0)[0]
    assert len(calls) == 1 and cond.shape == (3, 8, 8) and img.shape == (3, 8, 8)
    np.testing.assert_array_equal(cond.numpy(), real(masks, labels, spec))
    cfg = GanConfig(image_size=32, ngf=2, ndf=2, depth=5, n_layers_d=1)
    spec = RenderSpec((3, 7), boundary=True)
    state = trainer.TrainingRun(build_model(cfg, spec, "cpu"), cfg, spec).checkpoint(with_optimizers=False)
    gen = generator.load_generator(state, "cpu")
    m32 = np.zeros((3, 32, 32), bool)
    m32[:, :8, :8] = masks
    list(generator.generate_images(gen, [generator.MaskItem(m32, labels)], seed=0))
    assert len(calls) == 2


# -- config ---------------------------------------------------------------------------------
def test_config_defaults_from_proto_are_the_reference():
    cfg = config_from_proto(GanConfig, gan_pb2.GanConfig())
    assert cfg == GanConfig() and cfg.model == "pix2pix"
    assert (cfg.image_size, cfg.ngf, cfg.ndf, cfg.depth, cfg.n_layers_d, cfg.norm) == (256, 64, 64, 8, 3, "batch")
    assert (cfg.lambda_l1, cfg.lr, cfg.beta1, cfg.beta2, cfg.n_epochs, cfg.n_epochs_decay) == (100.0, 2e-4, 0.5, 0.999, 100, 100)
    assert cfg.flip and cfg.dropout and cfg.batch_size == 1
    tiny = config_from_proto(GanConfig, gan_pb2.GanConfig(image_size=64, depth=6, n_epochs=3, flip=False, diversity="color_hint"))
    # n_epochs_decay unset: its default, whatever n_epochs says (no more 'zero unless the other is set')
    assert (tiny.image_size, tiny.depth, tiny.n_epochs, tiny.n_epochs_decay) == (64, 6, 3, 100)
    assert (tiny.flip, tiny.dropout, tiny.diversity) == (False, True, "color_hint")


def test_config_zero_is_a_value_not_the_default():
    """With presence, 0 / false sent explicitly are kept (no more 'zero means reference default')."""
    cfg = config_from_proto(GanConfig, gan_pb2.GanConfig(n_epochs=0, n_epochs_decay=2, lambda_l1=0.0, dropout=False, beta1=0.0))
    assert (cfg.n_epochs, cfg.n_epochs_decay, cfg.lambda_l1, cfg.dropout, cfg.beta1) == (0, 2, 0.0, False, 0.0)
    sent = config_to_proto(cfg, gan_pb2.GanConfig)
    assert sent.HasField("lambda_l1") and sent.lambda_l1 == 0.0 and sent.HasField("flip") and sent.flip
    assert config_from_proto(GanConfig, sent) == cfg


@pytest.mark.parametrize("field,value,match", [
    ("norm", "group", "GanConfig.norm"),
    ("amp", "fp8", "GanConfig.amp"),
    ("diversity", "magic", "GanConfig.diversity"),
    ("image_size", 100, "GanConfig.image_size"),
    ("depth", 3, "GanConfig.depth"),
    ("ngf", -1, "GanConfig.ngf"),
    ("num_workers", -1, "GanConfig.num_workers"),
    ("model", "stylegan9", r"GanConfig.model must be a registered generator \(pix2pix"),
])
def test_config_rejects_unknown_options(field, value, match):
    with pytest.raises(InvalidArgument, match=match):
        config_from_proto(GanConfig, gan_pb2.GanConfig(**{field: value}))


def test_config_mapping_round_trip_and_unknown_key():
    cfg = GanConfig(image_size=64, depth=6, ngf=8)
    assert config_from_mapping(GanConfig, config_to_mapping(cfg)) == cfg
    with pytest.raises(InvalidArgument, match="unknown field.*wobble"):
        config_from_mapping(GanConfig, {**config_to_mapping(cfg), "wobble": 1})
    with pytest.raises(InvalidArgument, match="n_epochs and n_epochs_decay"):
        config_from_mapping(GanConfig, {"n_epochs": 0, "n_epochs_decay": 0})


def test_generate_config_from_the_request():
    exclude = ("checkpoint", "masks", "split", "seed", "name")
    request = gan_pb2.GanGenerateRequest(split="val", seed=3, name="x", dropout=False, batchnorm="eval", resize=False, count=5, batch_size=4)
    assert config_from_proto(GenerateConfig, request, exclude=exclude) == GenerateConfig(False, "eval", False, 5, 4)
    assert config_from_proto(GenerateConfig, gan_pb2.GanGenerateRequest(seed=3), exclude=exclude) == GenerateConfig(True, "train", True, 0, 1)
    for bad, match in (({"batchnorm": "frozen"}, "GenerateConfig.batchnorm"), ({"count": -1}, "GenerateConfig.count"),
                       ({"batch_size": 0}, "GenerateConfig.batch_size")):
        with pytest.raises(InvalidArgument, match=match):
            config_from_proto(GenerateConfig, gan_pb2.GanGenerateRequest(**bad), exclude=exclude)


# -- diversity ----------------------------------------------------------------------------
def test_diversity_by_hand():
    a = np.full((4, 4, 3), (200, 150, 120), np.uint8)
    b = np.full((4, 4, 3), (90, 60, 40), np.uint8)
    la, lb = to_lab(a)[0, 0], to_lab(b)[0, 0]
    d = diversity([a, b])
    assert d["image_lab_spread"] == pytest.approx(np.linalg.norm(la - lb) / 2, rel=1e-5)
    assert d["image_L_std"] == pytest.approx(abs(la[0] - lb[0]) / 2, rel=1e-5)
    assert diversity([a, a, a])["image_lab_spread"] == 0.0
    # lesion vs background: same lesion colour everywhere, different skin
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    a2, b2 = a.copy(), b.copy()
    a2[fg] = b2[fg] = (255, 0, 0)
    d2 = diversity([a2, b2], [fg, fg])
    assert d2["lesion_lab_spread"] == pytest.approx(0.0, abs=1e-4)
    assert d2["background_lab_spread"] == pytest.approx(np.linalg.norm(la - lb) / 2, rel=1e-5)
    assert spread([la]) == 0.0
