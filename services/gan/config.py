"""Training configuration: one dataclass, the reference defaults, validation at the edge."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from services.common.errors import InvalidArgument

NORMS = ("batch", "instance")
AMP_MODES = ("none", "bf16", "fp16")
DIVERSITY_REMEDIES = ("none", "color_hint")
MIN_DEPTH = 5  # the reference U-Net has 5 fixed blocks; depth - 5 more 8·ngf blocks carry dropout


@dataclass
class GanConfig:
    """pix2pix hyper-parameters; defaults are those of the reference implementation."""

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

    def validate(self) -> "GanConfig":
        """Raise InvalidArgument naming the first bad field; return self."""
        def bad(name: str, value: Any, why: str) -> InvalidArgument:
            return InvalidArgument(f"GanConfig.{name} {why}, got {value!r}")

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

    def to_dict(self) -> dict[str, Any]:
        """Plain python scalars: what a checkpoint stores (loadable with weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GanConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgument(f"GanConfig: unknown option(s) {unknown}")
        return cls(**d).validate()

    @classmethod
    def from_proto(cls, msg: Any) -> "GanConfig":
        """Proto3 zero values mean 'reference default'; booleans are the reference's --no_* flags."""
        base = cls()
        kw: dict[str, Any] = {}
        for name in ("image_size", "ngf", "ndf", "depth", "n_layers_d", "n_epochs", "n_epochs_decay",
                     "batch_size", "checkpoint_every", "color_hint_size", "sample_count",
                     "lambda_l1", "lr", "beta1", "beta2"):
            value = getattr(msg, name)
            if value < 0:
                raise InvalidArgument(f"GanConfig.{name} must not be negative, got {value!r}")
            kw[name] = value if value else getattr(base, name)
        # n_epochs / n_epochs_decay of 0 are meaningful only together with the other one set.
        if msg.n_epochs == 0 and msg.n_epochs_decay > 0:
            kw["n_epochs"] = 0
        if msg.n_epochs_decay == 0 and msg.n_epochs > 0:
            kw["n_epochs_decay"] = 0
        kw["norm"] = msg.norm or base.norm
        kw["amp"] = msg.amp or base.amp
        kw["diversity"] = msg.diversity or base.diversity
        kw["num_workers"] = msg.num_workers
        if msg.num_workers < 0:
            raise InvalidArgument(f"GanConfig.num_workers must not be negative, got {msg.num_workers}")
        kw["flip"] = not msg.no_flip
        kw["dropout"] = not msg.no_dropout
        kw["boundary_channel"] = msg.boundary_channel
        return cls(**kw).validate()
