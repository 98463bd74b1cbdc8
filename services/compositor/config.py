"""The compositor's settings: the only copy of their defaults, and their validation.

Plans, gRPC requests and the library fill these through services.common.config
(`config_from_mapping` / `config_from_proto`), so every caller gets the same defaults and
rejects the same inputs with the same messages, each naming the offending field. The proto
comments in protos/synthaug/v1/compositor.proto document the same defaults
(tests/unit/test_config_defaults.py holds the two together). No numpy, OpenCV or torch here:
loading a plan imports this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument

BLEND_MODES = ("hard", "gaussian", "poisson")
IMAGE_FORMATS = ("jpeg", "png")
#: BackgroundMethod values by their short names (BACKGROUND_METHOD_INPAINT_TELEA ↔ "inpaint_telea").
BACKGROUND_METHODS = ("as_is", "inpaint_telea", "inpaint_ns", "crop")
#: What an unset BackgroundParams.method means, by source.
DATASET_METHOD = "inpaint_telea"
PREFIX_METHOD = "as_is"


@dataclass(frozen=True)
class Range:
    """A closed interval sampled uniformly; min == max means a constant."""

    min: float
    max: float

    def at(self, u: float) -> float:
        """The value at fraction `u` ∈ [0, 1) of the interval: a uniform draw for a uniform
        `u` (the value numpy's ``uniform(min, max)`` gives for the same double)."""
        return float(self.min + (self.max - self.min) * u)


@dataclass(frozen=True)
class ForegroundParams:
    """How instances are cut out into a foreground set (ExtractForegroundsRequest)."""

    # Instances with fewer mask pixels are skipped: specks of annotation noise would be
    # blown up many times when pasted at ComposeParams.scale (an 8×8 px object at 0.25 of a
    # 256 px composite is an 8× enlargement already).
    min_area: int = 64
    # Gaussian sigma (pixels) of the alpha edge; 0 = hard edge. One pixel softens the
    # staircase of a nearest-neighbour mask, and the alpha thresholded at 128 still gives
    # the mask back (see foregrounds.feather_alpha).
    feather_sigma: float = 1.0
    # Context pixels kept around each instance's box (used to match its tone to a new background).
    padding: int = 8
    # Keep instances cut off by the image border (pasted whole they show a straight edge).
    keep_truncated: bool = False

    def validate(self) -> ForegroundParams:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "ForegroundParams"
        if self.min_area < 0:
            raise InvalidArgument(f"{p}.min_area must be ≥ 0, got {self.min_area}")
        if not 0.0 <= self.feather_sigma <= 50.0:
            raise InvalidArgument(f"{p}.feather_sigma must be in [0, 50], got {self.feather_sigma}")
        if not 0 <= self.padding <= 256:
            raise InvalidArgument(f"{p}.padding must be in [0, 256], got {self.padding}")
        return self


@dataclass(frozen=True)
class BackgroundParams:
    """How backgrounds are harvested into a background set (HarvestBackgroundsRequest).

    `method` unset (None) means "inpaint_telea" for a dataset's images and "as_is" for user
    images under a store prefix (the only method those allow: they have no instance masks);
    `method_for` resolves it and refuses other combinations.
    """

    method: str | None = None
    # Dilation of instance masks before inpainting (and the margin crops keep from them),
    # pixels: annotations are drawn tight, and a lesion's blurred rim left outside the hole
    # is smeared into the fill.
    dilate_px: int = 12
    # Side of the square crops of the "crop" method.
    crop_size: int = 96
    # Keep a seeded random subset of at most this many backgrounds; 0 = no limit.
    max_backgrounds: int = 0

    def validate(self) -> BackgroundParams:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "BackgroundParams"
        if self.method is not None and self.method not in BACKGROUND_METHODS:
            raise InvalidArgument(f"{p}.method must be one of {', '.join(BACKGROUND_METHODS)}, got {self.method!r}")
        if not 0 <= self.dilate_px <= 256:
            raise InvalidArgument(f"{p}.dilate_px must be in [0, 256], got {self.dilate_px}")
        if self.method == "crop" and not 8 <= self.crop_size <= 8192:
            raise InvalidArgument(f"{p}.crop_size must be in [8, 8192] for the crop method, got {self.crop_size}")
        if self.max_backgrounds < 0:
            raise InvalidArgument(f"{p}.max_backgrounds must be ≥ 0 (0 = no limit), got {self.max_backgrounds}")
        return self

    def method_for(self, from_dataset: bool) -> str:
        """The method to use on a dataset (True) or on user images under a prefix (False)."""
        method = self.method or (DATASET_METHOD if from_dataset else PREFIX_METHOD)
        if not from_dataset and method != PREFIX_METHOD:
            raise InvalidArgument(
                f"BackgroundParams.method {method!r} needs a dataset (instance masks); "
                f"images under an image_prefix are used as they are ({PREFIX_METHOD!r})")
        return method


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

    def validate(self) -> ComposeParams:
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
