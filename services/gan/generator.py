"""Generation: masks (+ the image they belong to, for the colour hint) → images, deterministically.

Noise and normalisation follow the reference test.py: dropout stays on (pix2pix's only noise
source) and batch norm uses the batch's statistics unless asked for running averages
('eval', the reference's --eval). Every batch reseeds a forked RNG from (seed, index of its
first image), so the output depends only on the seed, the inputs and the batch size.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from services.common.errors import InvalidArgument
from services.common.imageio import resize_image, resize_mask
from services.gan import rendering
from services.gan.config import GanConfig
from services.gan.grid import to_uint8
from services.gan.networks import build_generator, set_batchnorm_mode, set_dropout
from services.gan.rendering import RenderSpec
from services.gan.seeding import derive_seed
from services.gan.trainer import CHECKPOINT_FORMAT

BATCHNORM_MODES = ("train", "eval")


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def save_checkpoint(state: dict[str, Any]) -> bytes:
    """torch.save bytes that depend only on the content.

    Pickle memoises by object identity, so equal metadata built differently (a resumed run's
    history was unpickled, an uninterrupted run's was not) would serialise differently; one
    JSON round trip of every tensor-free entry gives both the same object structure, so the
    same weights make the same content-addressed blob.
    """
    meta = json.loads(json.dumps({k: v for k, v in state.items() if _plain(v)}))
    buf = io.BytesIO()
    torch.save({k: meta[k] if k in meta else v for k, v in state.items()}, buf)
    return buf.getvalue()


def load_checkpoint(data: bytes, name: str = "checkpoint") -> dict[str, Any]:
    """weights_only=True: a checkpoint is tensors, dicts and scalars; nothing is unpickled."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable payload is the caller's bad input
        raise InvalidArgument(f"{name} is not a loadable pix2pix checkpoint: {exc.__class__.__name__}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidArgument(f"{name} is not a synthaug pix2pix checkpoint (format {CHECKPOINT_FORMAT})")
    return state


@dataclass
class LoadedGenerator:
    cfg: GanConfig
    spec: RenderSpec
    G: torch.nn.Module
    device: torch.device
    epoch: int

    @property
    def image_size(self) -> int:
        return self.cfg.image_size


def load_generator(state: dict[str, Any], device: torch.device | str | None = None) -> LoadedGenerator:
    cfg = GanConfig.from_dict(state["config"])
    spec = RenderSpec.from_dict(state["render"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = build_generator(spec.num_channels, 3, cfg.depth, cfg.ngf, cfg.norm, cfg.dropout)
    g.load_state_dict(state["G"])
    g.to(dev)
    return LoadedGenerator(cfg, spec, g, dev, int(state.get("epoch", 0)))


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


def generate_batch(gen: LoadedGenerator, conds: np.ndarray, seed: int, first_index: int, dropout: bool, batchnorm: str) -> np.ndarray:
    """B×C×S×S conditions → B×S×S×3 uint8 images."""
    if batchnorm not in BATCHNORM_MODES:
        raise InvalidArgument(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    gen.G.eval()
    set_dropout(gen.G, dropout)
    set_batchnorm_mode(gen.G, batchnorm == "train")
    with torch.random.fork_rng(devices=[gen.device] if gen.device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "generate", first_index))
        with torch.no_grad():
            out = gen.G(torch.from_numpy(np.ascontiguousarray(conds)).to(gen.device)).float().cpu().numpy()
    gen.G.eval()
    return np.stack([to_uint8(o) for o in out])


def generate_images(
    gen: LoadedGenerator,
    items: Iterable[MaskItem],
    seed: int,
    dropout: bool = True,
    batchnorm: str = "train",
    batch_size: int = 1,
    resize: bool = False,
    names: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """Yield one H×W×3 uint8 image per item, at the item's own mask size (resized back if needed)."""
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be ≥ 1, got {batch_size}")
    size = gen.image_size
    pending: list[tuple[tuple[int, int], np.ndarray]] = []
    index = 0

    def flush() -> Iterator[np.ndarray]:
        nonlocal index
        out = generate_batch(gen, np.stack([c for _, c in pending]), seed, index, dropout, batchnorm)
        for (h, w), img in zip((hw for hw, _ in pending), out):
            yield resize_image(img, (w, h))
        index += len(pending)
        pending.clear()

    for i, item in enumerate(items):
        name = names[i] if names is not None else f"item {i}"
        fitted = _fit(item, size, resize, name)
        cond = rendering.render_condition(fitted.masks, fitted.labels, gen.spec, fitted.image)
        pending.append((item.masks.shape[1:], cond))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
