"""The evaluator's settings: the only copy of their defaults, and their validation.

Plans, gRPC requests and the CLI fill these through services.common.config
(`config_from_mapping` / `config_from_proto`), so every caller gets the same defaults and
rejects the same inputs with the same messages, each naming the offending field. The proto
comments in protos/synthaug/v1/evaluator.proto document the same defaults
(tests/unit/test_config_defaults.py holds the two together). No numpy, scipy or torch here:
loading a plan imports this module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument

DEFAULT_BOOTSTRAP = 2000
MIN_BOOTSTRAP = 100
MAX_BOOTSTRAP = 100_000
DEFAULT_CONFIDENCE = 0.95
MAX_OVERLAY_IMAGES = 24
MAX_CONTACT_IMAGES = 16
#: Labels of test sets and synthetic sources name files, table rows and feature sets: the
#: characters a plan's arm names may use.
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: Feature spaces a quality assessment can be computed in (services/evaluator/core/features.py).
FEATURE_SPACES = ("segmenter_fpn", "inception")
MAX_QUALITY_SAMPLES = 50_000
MAX_KID_SUBSETS = 10_000
MAX_NEAREST_K = 100
#: Metrics the evaluation JSON has for every image (and that comparisons can pair).
PER_IMAGE_METRICS = ("iou", "f1", "precision", "recall", "es", "thresholded_jaccard")


def check_bootstrap(n_bootstrap: int, confidence: float = DEFAULT_CONFIDENCE, owner: str = "") -> None:
    """InvalidArgument unless n_bootstrap and confidence give a meaningful percentile interval.

    `owner` prefixes the field names in the message (e.g. "EvalConfig.")."""
    if not MIN_BOOTSTRAP <= n_bootstrap <= MAX_BOOTSTRAP:
        raise InvalidArgument(f"{owner}n_bootstrap must be in [{MIN_BOOTSTRAP}, {MAX_BOOTSTRAP}], got {n_bootstrap}")
    if not 0.5 <= confidence < 1.0:
        raise InvalidArgument(f"{owner}confidence must be in [0.5, 1), got {confidence}")


def check_metric(metric: str, owner: str = "") -> str:
    """The per-image metric named `metric` ("" = "iou"); InvalidArgument for any other name."""
    metric = metric or "iou"
    if metric not in PER_IMAGE_METRICS:
        raise InvalidArgument(f"{owner}metric must be one of {', '.join(PER_IMAGE_METRICS)}; got {metric!r}")
    return metric


@dataclass(frozen=True)
class EvalConfig:
    """How one set of predictions is scored (EvaluateRequest; `synthaug evaluate`)."""

    # Instances with score ≥ this enter the per-image union (COCO AP always uses every prediction).
    score_threshold: float = 0.5
    # None: whatever the predictions' producer binarised at (binary masks cannot be re-thresholded).
    mask_threshold: float | None = None
    # Bootstrap resamples for the confidence intervals over images.
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    # ISIC's thresholded Jaccard: a per-image IoU below this counts as 0.
    jaccard_threshold: float = 0.65
    # A predicted instance matches a true one (lesion-level recall) at IoU ≥ this.
    lesion_iou: float = 0.5
    coco_ap: bool = True

    def validate(self) -> EvalConfig:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "EvalConfig"
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidArgument(f"{p}.score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold <= 1.0:
            raise InvalidArgument(f"{p}.mask_threshold must be in (0, 1], got {self.mask_threshold}")
        if not 0.0 < self.jaccard_threshold <= 1.0:
            raise InvalidArgument(f"{p}.jaccard_threshold must be in (0, 1], got {self.jaccard_threshold}")
        if not 0.0 < self.lesion_iou <= 1.0:
            raise InvalidArgument(f"{p}.lesion_iou must be in (0, 1], got {self.lesion_iou}")
        check_bootstrap(self.n_bootstrap, self.confidence, f"{p}.")
        return self


@dataclass(frozen=True)
class ReportConfig:
    """What a report shows (ReportRequest's settings)."""

    # Rows of the overlay grid (test images drawn with each arm's prediction); 0 = no grid.
    overlay_images: int = 8
    # Arm the others are compared with; None: the first real-only arm, else the first arm.
    baseline_arm: str | None = None
    # Bootstrap resamples of the report's confidence intervals (results, comparisons).
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    # Training images per source on the contact sheet; 0 = no sheet.
    contact_images: int = 8

    def validate(self) -> ReportConfig:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "ReportConfig"
        if not 0 <= self.overlay_images <= MAX_OVERLAY_IMAGES:
            raise InvalidArgument(
                f"{p}.overlay_images must be in [0, {MAX_OVERLAY_IMAGES}] (0 = none), got {self.overlay_images}")
        if not 0 <= self.contact_images <= MAX_CONTACT_IMAGES:
            raise InvalidArgument(
                f"{p}.contact_images must be in [0, {MAX_CONTACT_IMAGES}] (0 = none), got {self.contact_images}")
        if self.baseline_arm is not None and not self.baseline_arm:
            raise InvalidArgument(f"{p}.baseline_arm is empty (leave it unset for the default)")
        check_bootstrap(self.n_bootstrap, DEFAULT_CONFIDENCE, f"{p}.")
        return self


@dataclass(frozen=True)
class CompareConfig:
    """How two evaluations are compared (CompareRequest's settings)."""

    # Per-image metric whose paired differences are tested.
    metric: str = "iou"
    n_bootstrap: int = DEFAULT_BOOTSTRAP

    def validate(self) -> CompareConfig:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "CompareConfig"
        check_metric(self.metric, f"{p}.")
        check_bootstrap(self.n_bootstrap, DEFAULT_CONFIDENCE, f"{p}.")
        return self


@dataclass(frozen=True)
class QualityConfig:
    """How synthetic images are compared with real ones in a feature space (QualityRequest's
    settings; services/evaluator/core/quality.py says what each figure means)."""

    # Images per set for FD, KID and precision/recall/density/coverage: every set (each
    # source, half the real training images, the real test images) is subsampled to the same
    # size, the smallest of this and what each set has (FD and KID depend on the size).
    max_samples: int = 2000
    # Images per KID subset (at most half the sample size, so that subsets differ).
    kid_subset_size: int = 100
    # KID subsets: KID is the mean of the unbiased MMD² over them, with their std.
    kid_subsets: int = 100
    # k of the k-nearest-neighbour manifolds (precision, recall, density, coverage, realism).
    nearest_k: int = 5
    # Near-copy threshold: this quantile of the real test images' distances to their nearest
    # real training image (a held-out real image falls under it this often).
    near_copy_quantile: float = 0.01
    # Closest (synthetic, real training) pairs kept per source for the contact sheet.
    closest_pairs: int = 8

    def validate(self) -> QualityConfig:
        """Return self, or raise InvalidArgument naming the first bad setting."""
        p = "QualityConfig"
        if not 4 <= self.max_samples <= MAX_QUALITY_SAMPLES:
            raise InvalidArgument(f"{p}.max_samples must be in [4, {MAX_QUALITY_SAMPLES}], got {self.max_samples}")
        if not 2 <= self.kid_subset_size <= MAX_QUALITY_SAMPLES:
            raise InvalidArgument(f"{p}.kid_subset_size must be in [2, {MAX_QUALITY_SAMPLES}], got {self.kid_subset_size}")
        if not 1 <= self.kid_subsets <= MAX_KID_SUBSETS:
            raise InvalidArgument(f"{p}.kid_subsets must be in [1, {MAX_KID_SUBSETS}], got {self.kid_subsets}")
        if not 1 <= self.nearest_k <= MAX_NEAREST_K:
            raise InvalidArgument(f"{p}.nearest_k must be in [1, {MAX_NEAREST_K}], got {self.nearest_k}")
        if not 0.0 < self.near_copy_quantile <= 0.5:
            raise InvalidArgument(f"{p}.near_copy_quantile must be in (0, 0.5], got {self.near_copy_quantile}")
        if not 0 <= self.closest_pairs <= MAX_CONTACT_IMAGES:
            raise InvalidArgument(
                f"{p}.closest_pairs must be in [0, {MAX_CONTACT_IMAGES}] (0 = none), got {self.closest_pairs}")
        return self
