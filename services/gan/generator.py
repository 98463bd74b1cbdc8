"""Generation: masks (+ the image they belong to, for the colour hint) → images, deterministically.

Works with any registered generator: the checkpoint names its model and the registry builds
it. Noise and normalisation follow the reference test.py: dropout stays on (pix2pix's only
noise source) and batch norm uses the batch's statistics unless asked for running averages
('eval', the reference's --eval). Every batch reseeds a forked RNG from (seed, index of its
first image), so the output depends only on the seed, the inputs and the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from services.common.errors import InvalidArgument
from services.common.imageio import resize_image, resize_mask
from services.common.seeding import derive_seed
from services.gan import rendering
from services.gan.checkpoint import checkpoint_config
from services.gan.config import GanConfig, GenerateConfig
from services.gan.grid import to_uint8
from services.gan.model import build_model
from services.gan.rendering import RenderSpec


@dataclass
class LoadedGenerator:
    cfg: GanConfig
    spec: RenderSpec
    generator: nn.Module
    device: torch.device
    epoch: int

    @property
    def image_size(self) -> int:
        return self.cfg.image_size


def load_generator(state: Mapping[str, Any], device: torch.device | str | None = None) -> LoadedGenerator:
    """The generator of a checkpoint (services.gan.checkpoint), built by its registered model."""
    cfg = checkpoint_config(state)
    spec = RenderSpec.from_dict(state["render"])
    model = build_model(cfg, spec, device)
    model.load_state_dict(state["weights"])
    return LoadedGenerator(cfg, spec, model.generator, model.device, int(state.get("epoch", 0)))


def set_dropout(net: nn.Module, enabled: bool) -> None:
    """Switch only the dropout layers between train (sampling) and eval (identity)."""
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train(enabled)


def set_batchnorm_mode(net: nn.Module, train_stats: bool) -> None:
    """Batch statistics (train) or running averages (eval) for every batch-norm layer."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(train_stats)


@dataclass
class MaskItem:
    """What one generated image is made from: instance masks, their category ids (in the
    generator's id space) and, for the colour hint, the image the masks belong to."""

    masks: np.ndarray
    labels: np.ndarray
    image: np.ndarray | None = None


def _fit(item: MaskItem, size: int, resize: bool, name: str) -> MaskItem:
    h, w = item.masks.shape[1:]
    if (h, w) == (size, size):
        return item
    if not resize:
        raise InvalidArgument(f"{name}: masks are {w}×{h} but the generator was trained at {size}×{size}; set resize to resample them")
    image = None if item.image is None else resize_image(item.image, size)
    return MaskItem(resize_mask(item.masks, size), item.labels, image)


def generate_batch(gen: LoadedGenerator, conds: np.ndarray, seed: int, first_index: int, cfg: GenerateConfig) -> np.ndarray:
    """B×C×S×S conditions → B×S×S×3 uint8 images (cfg: dropout and batch-norm mode)."""
    g = gen.generator
    g.eval()
    set_dropout(g, cfg.dropout)
    set_batchnorm_mode(g, cfg.batchnorm == "train")
    with torch.random.fork_rng(devices=[gen.device] if gen.device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "gan/generate", first_index))
        with torch.no_grad():
            out = g(torch.from_numpy(np.ascontiguousarray(conds)).to(gen.device)).float().cpu().numpy()
    g.eval()
    return np.stack([to_uint8(o) for o in out])


def generate_images(
    gen: LoadedGenerator,
    items: Iterable[MaskItem],
    seed: int,
    cfg: GenerateConfig | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """Yield one H×W×3 uint8 image per item, at the item's own mask size (resized back if
    needed). `cfg.count` is the caller's business: every item given is generated."""
    cfg = (cfg or GenerateConfig()).validate()
    size = gen.image_size
    pending: list[tuple[tuple[int, int], np.ndarray]] = []
    index = 0

    def flush() -> Iterator[np.ndarray]:
        nonlocal index
        out = generate_batch(gen, np.stack([c for _, c in pending]), seed, index, cfg)
        for (h, w), img in zip((hw for hw, _ in pending), out):
            yield resize_image(img, (w, h))
        index += len(pending)
        pending.clear()

    for i, item in enumerate(items):
        name = names[i] if names is not None else f"item {i}"
        fitted = _fit(item, size, cfg.resize, name)
        cond = rendering.render_condition(fitted.masks, fitted.labels, gen.spec, fitted.image)
        pending.append((item.masks.shape[1:], cond))
        if len(pending) == cfg.batch_size:
            yield from flush()
    if pending:
        yield from flush()
