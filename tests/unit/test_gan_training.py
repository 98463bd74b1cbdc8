"""pix2pix training and generation on CPU: overfit, resume, checkpoints, determinism."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from services.common.config import config_to_mapping
from services.common.errors import InvalidArgument
from services.gan.checkpoint import load_checkpoint, save_checkpoint
from services.gan.config import GanConfig, GenerateConfig
from services.gan.generator import MaskItem, generate_images, load_generator
from services.gan.pix2pix import lr_lambda
from services.gan.rendering import RenderSpec
from services.gan.trainer import TrainHooks, TrainPair, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = RenderSpec((1, 2), ("lesion", "other"), boundary=True)


def make_pairs(n: int = 8, size: int = 64, fixed_colours: bool = False) -> list[TrainPair]:
    """Skin-coloured images with two 'lesions' whose masks are the instances.

    With random colours the image is not a function of the masks alone (that is what the
    colour hint is for); `fixed_colours` makes it one, so a generator can fit it.
    """
    rng = np.random.default_rng(7)
    pairs = []
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = (200, 150, 120) if fixed_colours else rng.integers(120, 230, 3)
        masks = np.zeros((2, size, size), bool)
        y, x, r = rng.integers(16, size - 16, 2).tolist() + [int(rng.integers(5, 12))]
        yy, xx = np.mgrid[:size, :size]
        masks[0] = (yy - y) ** 2 + (xx - x) ** 2 < r * r
        masks[1, i % 8: i % 8 + 6, 2:10] = True
        img[masks[0]] = (90, 50, 40) if fixed_colours else rng.integers(30, 100, 3)
        img[masks[1]] = (20, 120, 30)
        pairs.append(TrainPair(img, masks, np.array([1, 2])))
    return pairs


def tiny(**kw) -> GanConfig:
    base = dict(image_size=64, ngf=8, ndf=8, depth=6, n_layers_d=3, n_epochs=2, n_epochs_decay=2, batch_size=2, sample_count=2)
    base.update(kw)
    return GanConfig(**base).validate()


def test_overfit_halves_l1():
    run = train(make_pairs(8, fixed_colours=True), tiny(n_epochs=12, n_epochs_decay=0, batch_size=1), SPEC, seed=3)
    l1 = [h["G_L1"] for h in run.history]
    assert len(l1) == 12
    assert l1[-1] <= 0.5 * l1[0], l1


def test_linear_decay_policy():
    rule = lr_lambda(2, 2)
    assert [rule(e) for e in range(4)] == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    reports = []
    train(make_pairs(2), tiny(batch_size=2), SPEC, seed=0, hooks=TrainHooks(on_epoch=reports.append))
    assert [r.lr for r in reports] == pytest.approx([2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    assert all(set(r.losses) == {"G_GAN", "G_L1", "D_real", "D_fake"} and r.pairs_per_s > 0 for r in reports)
    grid = reports[-1].grid
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 66, 2 + 3 * 66, 3)


def _same_state(a, b) -> None:
    """Equal to the bit: tensors, and the nested dicts/lists of optimiser and scheduler states."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_state(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert a == b


def test_checkpoint_round_trip_and_resume_continue_identically():
    pairs = make_pairs(6)
    cfg = tiny(checkpoint_every=1, diversity="color_hint")
    spec = RenderSpec((1, 2), ("lesion", "other"), boundary=True, color_hint=True, hint_size=4)
    saved: dict[int, bytes] = {}
    hooks = TrainHooks(checkpoint=lambda state, epoch: saved.__setitem__(epoch, save_checkpoint(state)))
    full = train(pairs, cfg, spec, seed=11, hooks=hooks)
    assert sorted(saved) == [1, 2, 3, 4]

    # the bytes load with weights_only=True (plain tensors, dicts, scalars) and restore everything
    state = load_checkpoint(saved[2])
    assert torch.load(io.BytesIO(saved[2]), weights_only=True)["epoch"] == 2
    assert state["config"] == config_to_mapping(cfg) and state["config"]["model"] == "pix2pix"
    assert RenderSpec.from_dict(state["render"]) == spec

    resumed = train(pairs, cfg, spec, seed=11, resume=state)
    assert resumed.epoch == full.epoch == 4
    # G, D, both optimisers, schedulers and scalers: the resumed run is the uninterrupted one
    _same_state(resumed.model.state_dict(), full.model.state_dict())
    assert resumed.history == full.history
    assert resumed.model.learning_rate() == full.model.learning_rate()
    assert save_checkpoint(resumed.checkpoint(False)) == save_checkpoint(full.checkpoint(False))

    # an interrupted run (stopped after epoch 2) checkpoints the same state as the full run did
    partial = train(pairs, cfg, spec, seed=11, stop_after_epoch=2)
    _same_state(partial.checkpoint(), load_checkpoint(saved[2]))


def test_checkpoint_loading_refuses_pickles_and_garbage():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"format": "synthaug.gan.v2", "x": Evil()}, buf)
    with pytest.raises(InvalidArgument, match="not a loadable"):
        load_checkpoint(buf.getvalue())
    with pytest.raises(InvalidArgument, match="not a loadable"):
        load_checkpoint(b"not a checkpoint")
    with pytest.raises(InvalidArgument, match="not a synthaug"):
        load_checkpoint(save_checkpoint({"weights": torch.zeros(2)}))
    with pytest.raises(InvalidArgument, match="not a synthaug.*synthaug.gan.pix2pix.v1"):  # the layout before generator registries
        load_checkpoint(save_checkpoint({"format": "synthaug.gan.pix2pix.v1", "G": {}}))
    with pytest.raises(InvalidArgument, match=r"GanConfig.model must be a registered generator"):
        load_checkpoint(save_checkpoint({"format": "synthaug.gan.v2", "config": {"model": "gone"}, "render": {}, "weights": {}}))


@pytest.fixture(scope="module")
def trained_state() -> dict:
    return train(make_pairs(4), tiny(n_epochs=1, n_epochs_decay=0), SPEC, seed=5).checkpoint(with_optimizers=False)


def _items(pairs):
    return [MaskItem(p.masks, p.labels, p.image) for p in pairs]


def test_generation_deterministic_per_seed(trained_state):
    gen = load_generator(load_checkpoint(save_checkpoint(trained_state)), "cpu")
    items = _items(make_pairs(5))
    batch2 = GenerateConfig(batch_size=2)
    a = list(generate_images(gen, items, 1, batch2))
    b = list(generate_images(gen, items, 1, batch2))
    c = list(generate_images(gen, items, 2, batch2))
    assert len(a) == 5 and all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))  # dropout is the noise source
    # without dropout and with running statistics the output no longer depends on the seed
    frozen = GenerateConfig(dropout=False, batchnorm="eval")
    d = list(generate_images(gen, items, 1, frozen))
    e = list(generate_images(gen, items, 9, frozen))
    assert all(np.array_equal(x, y) for x, y in zip(d, e))
    assert not all(np.array_equal(x, y) for x, y in zip(a, d))


def test_generation_size_mismatch_needs_resize(trained_state):
    gen = load_generator(trained_state, "cpu")
    masks = np.zeros((1, 48, 80), bool)
    masks[0, 10:30, 20:50] = True
    item = MaskItem(masks, np.array([1]))
    with pytest.raises(InvalidArgument, match=r"img7: masks are 80×48 .* 64×64"):
        list(generate_images(gen, [item], 0, GenerateConfig(resize=False), names=["img7"]))
    out = list(generate_images(gen, [item], 0, GenerateConfig(resize=True)))
    assert out[0].shape == (48, 80, 3)
    with pytest.raises(InvalidArgument, match="GenerateConfig.batchnorm"):
        list(generate_images(gen, _items(make_pairs(1)), 0, GenerateConfig(batchnorm="frozen")))
