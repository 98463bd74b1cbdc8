"""GAN settings: the only copy of their defaults and their validation (torch-free).

Requests and plans reach these dataclasses through services.common.config
(`config_from_proto` / `config_from_mapping`): unset fields take the defaults below, which
gan.proto documents field by field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.gan.registry import model_names

NORMS = ("batch", "instance")
AMP_MODES = ("none", "bf16", "fp16")
DIVERSITY_REMEDIES = ("none", "color_hint")
BATCHNORM_MODES = ("train", "eval")
MIN_DEPTH = 5  # the reference U-Net has 5 fixed blocks; depth - 5 more 8·ngf blocks carry dropout


def _bad(cls: str, name: str, value: Any, why: str) -> InvalidArgument:
    return InvalidArgument(f"{cls}.{name} {why}, got {value!r}")


@dataclass
class GanConfig:
    """Training hyper-parameters; defaults are those of the pix2pix reference implementation."""

    model: str = "pix2pix"
    image_size: int = 256
    ngf: int = 64
    ndf: int = 64
    depth: int = 8
    n_layers_d: int = 3
    norm: str = "batch"
    lambda_l1: float = 100.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_epochs: int = 100
    n_epochs_decay: int = 100
    batch_size: int = 1
    flip: bool = True
    dropout: bool = True
    amp: str = "none"
    checkpoint_every: int = 5
    num_workers: int = 0
    boundary_channel: bool = False
    diversity: str = "none"
    color_hint_size: int = 8
    sample_count: int = 4

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay

    def validate(self) -> GanConfig:
        """Raise InvalidArgument naming the first bad field; return self."""
        def bad(name: str, value: Any, why: str) -> InvalidArgument:
            return _bad("GanConfig", name, value, why)

        if self.model not in model_names():
            raise bad("model", self.model, f"must be a registered generator ({', '.join(model_names())})")
        for name in ("ngf", "ndf", "n_layers_d", "batch_size", "checkpoint_every", "color_hint_size", "sample_count"):
            if getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "must be ≥ 1")
        if self.depth < MIN_DEPTH:
            raise bad("depth", self.depth, f"must be ≥ {MIN_DEPTH}")
        if self.image_size < 1 or self.image_size % (2 ** self.depth) != 0:
            raise bad("image_size", self.image_size, f"must be a positive multiple of 2**depth = {2 ** self.depth}")
        if self.image_size < 2 ** (self.n_layers_d + 1) * 2:
            raise bad("image_size", self.image_size, f"is too small for a {self.n_layers_d}-layer PatchGAN")
        if self.norm not in NORMS:
            raise bad("norm", self.norm, f"must be one of {NORMS}")
        if self.amp not in AMP_MODES:
            raise bad("amp", self.amp, f"must be one of {AMP_MODES}")
        if self.diversity not in DIVERSITY_REMEDIES:
            raise bad("diversity", self.diversity, f"must be one of {DIVERSITY_REMEDIES}")
        if self.n_epochs < 0 or self.n_epochs_decay < 0 or self.total_epochs < 1:
            raise bad("n_epochs", (self.n_epochs, self.n_epochs_decay), "and n_epochs_decay must be ≥ 0 with a positive sum")
        if self.num_workers < 0:
            raise bad("num_workers", self.num_workers, "must be ≥ 0")
        if not self.lr > 0:
            raise bad("lr", self.lr, "must be > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise bad("beta1", (self.beta1, self.beta2), "and beta2 must be in [0, 1)")
        if self.lambda_l1 < 0:
            raise bad("lambda_l1", self.lambda_l1, "must be ≥ 0")
        if self.color_hint_size > self.image_size:
            raise bad("color_hint_size", self.color_hint_size, "must not exceed image_size")
        return self


@dataclass
class GenerateConfig:
    """How a trained generator turns masks into images (the noise follows the reference test.py)."""

    #: Dropout at inference: pix2pix's only noise source, kept on as in the paper.
    dropout: bool = True
    #: "train": batch statistics (the reference test.py); "eval": running averages (--eval).
    batchnorm: str = "train"
    #: Resample masks of another size to the generator's (nearest neighbour) and each image back
    #: to its masks' size. On by default: composite masks rarely come at the training size, the
    #: annotations stay exact, and the generated dataset keeps the masks' geometry.
    resize: bool = True
    #: The first `count` images of the mask dataset (split); 0 = every image.
    count: int = 0
    #: Images per forward pass; batch statistics and the seed stream depend on it.
    batch_size: int = 1

    def validate(self) -> GenerateConfig:
        """Raise InvalidArgument naming the first bad field; return self."""
        if self.batchnorm not in BATCHNORM_MODES:
            raise _bad("GenerateConfig", "batchnorm", self.batchnorm, f"must be one of {BATCHNORM_MODES}")
        if self.count < 0:
            raise _bad("GenerateConfig", "count", self.count, "must be ≥ 0")
        if self.batch_size < 1:
            raise _bad("GenerateConfig", "batch_size", self.batch_size, "must be ≥ 1")
        return self
