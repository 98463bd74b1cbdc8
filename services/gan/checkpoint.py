"""The GAN checkpoint: one weights_only-loadable dict, written by training, read by generation.

    format   CHECKPOINT_FORMAT
    config   GanConfig as a mapping; its `model` names the registered generator that reads
             `weights` (services/gan/registry.py)
    render   RenderSpec as a mapping: how masks become the generator's input
    epoch    completed epochs; history: per-epoch mean losses
    weights  the model's own state_dict (with optimisers in work checkpoints, without in the
             final one)

plus, in the final checkpoint of a job, the dataset, split, seed and number of pairs it was
trained on.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping, Sequence

import torch

from services.common.config import config_from_mapping, config_to_mapping
from services.common.errors import InvalidArgument
from services.gan.config import GanConfig
from services.gan.rendering import RenderSpec

CHECKPOINT_FORMAT = "synthaug.gan.v2"


def checkpoint_state(
    cfg: GanConfig, spec: RenderSpec, epoch: int, history: Sequence[Mapping[str, float]], weights: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_mapping(cfg),
        "render": spec.to_dict(),
        "epoch": int(epoch),
        "history": [dict(h) for h in history],
        "weights": weights,
    }


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def save_checkpoint(state: Mapping[str, Any]) -> bytes:
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


def checkpoint_config(state: Mapping[str, Any], name: str = "checkpoint") -> GanConfig:
    """The validated training configuration a checkpoint records (its generator registered here)."""
    config = state.get("config")
    if not isinstance(config, Mapping):
        raise InvalidArgument(f"{name} records no training configuration")
    return config_from_mapping(GanConfig, config, f"{name}: GanConfig")


def load_checkpoint(data: bytes, name: str = "checkpoint") -> dict[str, Any]:
    """weights_only=True: a checkpoint is tensors, dicts and scalars; nothing is unpickled.
    The result is checked: format, a valid configuration naming a registered generator, a
    render spec and weights."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable payload is the caller's bad input
        raise InvalidArgument(f"{name} is not a loadable GAN checkpoint: {exc.__class__.__name__}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise InvalidArgument(f"{name} is not a synthaug GAN checkpoint (format {CHECKPOINT_FORMAT}, found {found!r})")
    checkpoint_config(state, name)
    try:
        RenderSpec.from_dict(state["render"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name} has no valid render spec: {exc!r}") from exc
    if not isinstance(state.get("weights"), dict):
        raise InvalidArgument(f"{name} has no weights")
    return state
