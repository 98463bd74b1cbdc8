"""What the trainer, the sample grids and generation need from a generator: a small Protocol.

A model is registered by name in services/gan/registry.py with a `Builder`; nothing else in
the pipeline names a concrete class. pix2pix (services/gan/pix2pix.py) is the reference
implementation.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from services.common.seeding import derive_seed
from services.gan.config import GanConfig
from services.gan.registry import builder
from services.gan.rendering import RenderSpec


class GanModel(Protocol):
    """A conditional generator together with the way it learns.

    Built in training mode on `device`. Conditions are B×C×S×S float tensors in [-1, 1] from
    rendering.render_condition (C = spec.num_channels); images are B×3×S×S in [-1, 1].
    """

    @property
    def generator(self) -> nn.Module:
        """condition → image. Generation puts it in eval() and then switches its Dropout layers
        (noise) and batch-norm layers (batch or running statistics) as the request says."""

    @property
    def device(self) -> torch.device: ...

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The keys of every train_step result, reported per epoch."""

    def train_step(self, condition: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch (CPU tensors); detached scalar losses by name."""

    def end_epoch(self) -> None:
        """Called after each epoch: learning-rate schedules."""

    def learning_rate(self) -> float:
        """The current learning rate (reported with the epoch's metrics)."""

    def state_dict(self, with_optimizers: bool = True) -> dict[str, Any]:
        """Tensors, dicts, lists and scalars only (a checkpoint loads with weights_only=True);
        without optimisers it is what generation needs."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict returned (with or without the optimisers)."""


#: (cfg, spec, device) → model; registered as "module:callable" in services.gan.registry.
Builder = Callable[[GanConfig, RenderSpec, torch.device], GanModel]


def resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_model(cfg: GanConfig, spec: RenderSpec, device: torch.device | str | None = None, seed: int | None = None) -> GanModel:
    """The registered model `cfg.model`, initialised from `seed` (the initial weights are part
    of a training run's identity; None when a checkpoint's weights replace them at once) on a
    forked RNG, so building never disturbs the global torch stream."""
    build = builder(cfg.model)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(derive_seed(seed, "gan/init"))
        return build(cfg, spec, resolve_device(device))
