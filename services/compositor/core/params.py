"""Composition parameters and their validation.

Validation lives next to the dataclass so the CLI, the gRPC adapter and the library all
reject the same inputs with the same messages (each naming the offending parameter).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

BLEND_MODES = ("hard", "gaussian", "poisson")
IMAGE_FORMATS = ("jpeg", "png")


@dataclass(frozen=True)
class Range:
    """A closed interval sampled uniformly; min == max means a constant."""

    min: float
    max: float

    def sample(self, rng: Any) -> float:
        if self.min == self.max:
            return float(self.min)
        return float(rng.uniform(self.min, self.max))


@dataclass(frozen=True)
class ComposeParams:
    """Everything that shapes a composite besides (seed, image index).

    Defaults follow the thesis (2-3 lesions per image, flips, scaling, colour changes) with
    the blending and occlusion handling copy-paste users expect (Ghiasi et al. 2021).
    """

    output_size: int = 256
    min_objects: int = 2
    max_objects: int = 3
    # Longer side of a foreground (its crop) relative to the output size.
    scale: Range = field(default_factory=lambda: Range(0.25, 0.55))
    # Degrees; the rotated foreground is drawn on an expanded canvas (no clipped corners).
    rotation: Range = field(default_factory=lambda: Range(-180.0, 180.0))
    flip: bool = True
    # Colour jitter of foreground RGB (never alpha): multiplicative factors; hue in degrees.
    brightness: Range = field(default_factory=lambda: Range(0.85, 1.15))
    contrast: Range = field(default_factory=lambda: Range(0.85, 1.15))
    saturation: Range = field(default_factory=lambda: Range(0.85, 1.15))
    hue: Range = field(default_factory=lambda: Range(-8.0, 8.0))
    # Background: random flips / rot90 and brightness / contrast factors.
    background_flip: bool = True
    background_brightness: Range = field(default_factory=lambda: Range(0.9, 1.1))
    background_contrast: Range = field(default_factory=lambda: Range(0.9, 1.1))
    # Largest IoU allowed between a new object's box and an earlier one's (0 = no overlap).
    max_overlap_iou: float = 0.0
    max_placement_attempts: int = 20
    blend: str = "gaussian"
    # Gaussian sigma in output pixels for "gaussian" blending.
    blend_sigma: float = 2.0
    # Instances whose visible area after occlusion falls under this fraction are dropped.
    min_visible_fraction: float = 0.25
    # Fraction of a foreground's box that must lie on usable background (pixels brighter
    # than `dark_threshold`: keeps lesions off the black vignette of dermoscopes); 0 = off.
    min_usable_background: float = 0.9
    dark_threshold: int = 25
    # Re-light each object from its original surroundings to the destination background
    # (per-channel gains, see transforms.match_tone): 0 = off, 1 = full transfer.
    tone_match: float = 0.8
    image_format: str = "jpeg"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComposeParams":
        kwargs = dict(data)
        for name, value in list(kwargs.items()):
            if isinstance(value, dict):
                kwargs[name] = Range(float(value["min"]), float(value["max"]))
        return cls(**kwargs)

    def validate(self) -> "ComposeParams":
        """Return self, or raise InvalidArgument naming the first bad parameter."""
        p = "ComposeParams"
        if not 8 <= self.output_size <= 8192:
            raise InvalidArgument(f"{p}.output_size must be in [8, 8192], got {self.output_size}")
        if self.min_objects < 1:
            raise InvalidArgument(f"{p}.min_objects must be ≥ 1, got {self.min_objects}")
        if self.max_objects < self.min_objects:
            raise InvalidArgument(
                f"{p}.max_objects ({self.max_objects}) must be ≥ min_objects ({self.min_objects})")
        if self.max_objects > 100:
            raise InvalidArgument(f"{p}.max_objects must be ≤ 100, got {self.max_objects}")
        ranges = {
            "scale": (1e-3, 4.0), "rotation": (-360.0, 360.0), "brightness": (0.0, 10.0),
            "contrast": (0.0, 10.0), "saturation": (0.0, 10.0), "hue": (-180.0, 180.0),
            "background_brightness": (0.0, 10.0), "background_contrast": (0.0, 10.0),
        }
        for name, (lo, hi) in ranges.items():
            r: Range = getattr(self, name)
            if not (math.isfinite(r.min) and math.isfinite(r.max)):
                raise InvalidArgument(f"{p}.{name} must be finite, got [{r.min}, {r.max}]")
            if r.min > r.max:
                raise InvalidArgument(f"{p}.{name} is inverted: min {r.min} > max {r.max}")
            if r.min < lo or r.max > hi:
                raise InvalidArgument(f"{p}.{name} must lie in [{lo}, {hi}], got [{r.min}, {r.max}]")
        if not 0.0 <= self.max_overlap_iou <= 1.0:
            raise InvalidArgument(f"{p}.max_overlap_iou must be in [0, 1], got {self.max_overlap_iou}")
        if not 1 <= self.max_placement_attempts <= 10000:
            raise InvalidArgument(
                f"{p}.max_placement_attempts must be in [1, 10000], got {self.max_placement_attempts}")
        if self.blend not in BLEND_MODES:
            raise InvalidArgument(f"{p}.blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.blend == "gaussian" and not 0.0 < self.blend_sigma <= 50.0:
            raise InvalidArgument(f"{p}.blend_sigma must be in (0, 50] for gaussian blending, got {self.blend_sigma}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise InvalidArgument(
                f"{p}.min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}")
        if not 0.0 <= self.min_usable_background <= 1.0:
            raise InvalidArgument(
                f"{p}.min_usable_background must be in [0, 1], got {self.min_usable_background}")
        if not 0 <= self.dark_threshold <= 255:
            raise InvalidArgument(f"{p}.dark_threshold must be in [0, 255], got {self.dark_threshold}")
        if not 0.0 <= self.tone_match <= 1.0:
            raise InvalidArgument(f"{p}.tone_match must be in [0, 1], got {self.tone_match}")
        if self.image_format not in IMAGE_FORMATS:
            raise InvalidArgument(
                f"{p}.image_format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        return self
