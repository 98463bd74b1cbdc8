"""What a report is built from: one RunInput per arm × seed × test set, the images it can
draw (test sets for overlays, training sets for the contact sheet), and the checks a
service runs on them before starting the work."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import LABEL_RE
from services.evaluator.core.coco import GroundTruth, Predictions

#: The test set a run without one was evaluated on: the plan's own test split.
INTERNAL = "internal"


def check_label(label: str, what: str) -> str:
    """`label` ("" = INTERNAL) if it may name a test set; InvalidArgument naming `what` otherwise."""
    label = label or INTERNAL
    if not LABEL_RE.match(label):
        raise InvalidArgument(f"{what} {label!r} must be 1–64 letters, digits or ._+- starting with a letter or digit")
    return label


@dataclass
class RunInput:
    """One arm × seed on one test set (what ReportRequest.ArmRun points at, loaded)."""

    arm: str
    seed: int
    evaluation: dict[str, Any]
    predictions: Predictions | None = None
    training_record: dict[str, Any] | None = None
    real_count: int = 0
    composite_count: int = 0
    gan_count: int = 0
    test_set: str = INTERNAL
    #: Label of the synthetic source (in the report's quality results) this run trained on; "" = none.
    quality_source: str = ""

    @property
    def ratio(self) -> float | None:
        """Synthetic ratio f = D_syn / D_orig (None without real images)."""
        return (self.composite_count + self.gan_count) / self.real_count if self.real_count > 0 else None

    @property
    def generator(self) -> str:
        if self.composite_count and self.gan_count:
            return "hybrid"
        if self.gan_count:
            return "gan"
        if self.composite_count:
            return "composite"
        return "real"


@dataclass
class ImageSet:
    """Images a report draws: a test set's truth (overlays) or a training set (contact sheet).

    ``load_image(record)`` gives the RGB image of one of ``truth.images``; without it the
    drawings show masks on grey."""

    label: str
    truth: GroundTruth
    load_image: Callable[[dict[str, Any]], np.ndarray] | None = None


def test_set_order(runs: Sequence[RunInput]) -> list[str]:
    """Test sets in report order: the internal one first, then by first appearance."""
    labels = list(dict.fromkeys(r.test_set for r in runs))
    return sorted(labels, key=lambda label: label != INTERNAL)


def check_runs(runs: Sequence[tuple[str, int] | tuple[str, int, str]], baseline: str | None = None,
               what: str = "runs") -> None:
    """InvalidArgument unless the (arm, seed[, test set]) triples make a report: at least one,
    each with an arm name and a valid test-set label, none twice, and `baseline` (when
    given) among the arms. Cheap: a service checks a request with it before starting."""
    if not runs:
        raise InvalidArgument(f"{what}: a report needs at least one run")
    seen: set[tuple[str, int, str]] = set()
    for i, run in enumerate(runs):
        arm, seed = run[0], run[1]
        test_set = check_label(run[2] if len(run) > 2 else "", f"{what}[{i}].test_set")  # type: ignore[misc]
        if not arm:
            raise InvalidArgument(f"{what}[{i}].arm is empty: every run needs an arm name")
        if (arm, seed, test_set) in seen:
            on = f" on test set {test_set!r}" if test_set != INTERNAL else ""
            raise InvalidArgument(f"{what}[{i}]: arm {arm!r} seed {seed}{on} appears twice")
        seen.add((arm, seed, test_set))
    arms = list(dict.fromkeys(run[0] for run in runs))
    if baseline is not None and baseline not in arms:
        raise InvalidArgument(f"baseline arm {baseline!r} is not among the runs' arms ({', '.join(arms)})")


def default_baseline(runs: Sequence[RunInput]) -> str:
    """The first real-only arm, else the first arm."""
    real = [r.arm for r in runs if r.generator == "real" and r.real_count > 0]
    return real[0] if real else runs[0].arm
