"""What a report reads from the segmenter's training records: the training budget each arm
× seed got (optimiser steps, images seen) and its validation curve with the evaluation that
was selected.

**Training record** (``outputs["training_record"]`` of a segmenter Train job, JSON)::

    {"epochs": [{"epoch": 0, "iteration": 400,            # one entry per validation
                 "iterations": 400, "images": 3200,       # older records: per-epoch counts
                 "losses": {"loss_mask": 0.52, "loss": 1.3, ...},
                 "val": {"iou": 0.71, "f1": 0.80, ...}}, ...],
     "best_epoch": 3,                                     # "epoch" of the selected entry
     "select_metric": "iou",
     "budget": {"mode": "epochs" | "iterations", "iterations": 2000, "iterations_run": 2000,
                "images_seen": 16000, "batch_size": 8, "world_size": 1, "eval_every": 400,
                "real_fraction": 0.33 | null, "images_seen_by_source": {"real": 5300, ...}},
     "config": {"batch_size": 8, ...}, "world_size": 1, "steps": [...], ...}

``budget`` is new; records without it (epoch-based training) give their steps as the sum of
the entries' ``iterations`` (else the length of ``steps``) and their images seen as the sum
of ``images`` (else steps × batch size × world size). ``losses`` and ``val`` may be empty.
Other keys are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from services.common.errors import InvalidArgument

#: Arms whose mean optimiser steps differ by more than this fraction get a warning.
BUDGET_TOLERANCE = 0.10


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}")
    return int(value)


def parse_training_record(record: Any, what: str = "training record") -> list[dict[str, Any]]:
    """The record's validation entries, checked: ``epoch``, ``iteration`` (None when absent),
    per-epoch ``iterations`` / ``images`` (None when absent), ``losses`` and ``val``."""
    if not isinstance(record, Mapping) or not isinstance(record.get("epochs"), list):
        raise InvalidArgument(f"{what}: expected an object with an 'epochs' list")
    epochs = []
    for i, e in enumerate(record["epochs"]):
        if not isinstance(e, Mapping):
            raise InvalidArgument(f"{what}: epoch entry {i} must be an object")
        try:
            losses = {str(k): float(v) for k, v in (e.get("losses") or {}).items()}
            val = {str(k): float(v) for k, v in (e.get("val") or {}).items() if isinstance(v, (int, float))}
        except (TypeError, ValueError, AttributeError):
            raise InvalidArgument(f"{what}: epoch entry {i}: losses and val must map names to numbers") from None
        where = f"{what}: epoch entry {i}"
        epochs.append({
            "epoch": _int_or_none(e.get("epoch", i), f"{where}: epoch"),
            "iteration": _int_or_none(e.get("iteration"), f"{where}: iteration"),
            "iterations": _int_or_none(e.get("iterations"), f"{where}: iterations"),
            "images": _int_or_none(e.get("images"), f"{where}: images"),
            "losses": losses,
            "val": val,
        })
    return epochs


@dataclass(frozen=True)
class TrainingSummary:
    """One arm × seed's training, as a report states it."""

    arm: str
    seed: int
    mode: str  # "epochs" | "iterations" | whatever the record names
    steps: int | None  # optimiser steps run
    images_seen: int | None
    batch_size: int | None = None
    world_size: int | None = None
    eval_every: int | None = None
    real_fraction: float | None = None
    images_by_source: dict[str, int] = field(default_factory=dict)
    select_metric: str = "iou"
    #: x of each validation entry (iterations where known, else epochs) and its metrics.
    x_axis: str = "epoch"
    xs: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    #: Index into xs/val of the selected (best) evaluation; None when the record names none.
    best_index: int | None = None
    #: From the record's ``budget`` block (True) or derived from older fields (False).
    recorded_budget: bool = False

    @property
    def selected(self) -> str:
        """The selected evaluation in words ("iteration 1200", "epoch 3"; "" when unknown)."""
        if self.best_index is None:
            return ""
        x = self.xs[self.best_index]
        return f"{self.x_axis} {int(x)}"


def summarize_training(arm: str, seed: int, record: Any, what: str = "") -> TrainingSummary:
    """The budget and validation curve of one training record (format in the module docstring)."""
    what = what or f"training record of {arm} seed {seed}"
    epochs = parse_training_record(record, what)
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    budget = record.get("budget")
    if budget is not None and not isinstance(budget, Mapping):
        raise InvalidArgument(f"{what}: budget must be an object")
    if all(e["iteration"] is not None for e in epochs) and epochs:
        x_axis, xs = "iteration", [float(e["iteration"]) for e in epochs]
    elif all(e["iterations"] is not None for e in epochs) and epochs:
        x_axis, xs = "iteration", [float(x) for x in np.cumsum([e["iterations"] for e in epochs])]
    else:
        x_axis, xs = "epoch", [float(e["epoch"]) for e in epochs]
    best = _int_or_none(record.get("best_epoch"), f"{what}: best_epoch")
    best_index = next((i for i, e in enumerate(epochs) if e["epoch"] == best), None)
    metric = str(record.get("select_metric") or "iou")
    common: dict[str, Any] = {"arm": arm, "seed": seed, "select_metric": metric, "x_axis": x_axis, "xs": xs,
                              "val": [e["val"] for e in epochs], "losses": [e["losses"] for e in epochs],
                              "best_index": best_index}
    if budget is not None:
        b = f"{what}: budget"
        by_source = budget.get("images_seen_by_source") or {}
        if isinstance(by_source, list):
            # The segmenter lists counts in the order of training_set.sources; label them by kind.
            sources = (record.get("training_set") or {}).get("sources") or []
            if len(sources) != len(by_source):
                raise InvalidArgument(f"{b}.images_seen_by_source has {len(by_source)} counts for {len(sources)} training sources")
            by_source = {str(src.get("kind") or src.get("name") or i): n for i, (src, n) in enumerate(zip(sources, by_source))}
        if not isinstance(by_source, Mapping):
            raise InvalidArgument(f"{b}.images_seen_by_source must list one count per training source")
        fraction = budget.get("real_fraction")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))):
            raise InvalidArgument(f"{b}.real_fraction must be a number or null, got {fraction!r}")
        return TrainingSummary(
            mode=str(budget.get("mode") or "epochs"),
            steps=_int_or_none(budget.get("iterations_run", budget.get("iterations")), f"{b}.iterations_run"),
            images_seen=_int_or_none(budget.get("images_seen"), f"{b}.images_seen"),
            batch_size=_int_or_none(budget.get("batch_size", config.get("batch_size")), f"{b}.batch_size"),
            world_size=_int_or_none(budget.get("world_size", record.get("world_size")), f"{b}.world_size"),
            eval_every=_int_or_none(budget.get("eval_every"), f"{b}.eval_every"),
            real_fraction=None if fraction is None else float(fraction),
            images_by_source={str(k): _int_or_none(v, f"{b}.images_seen_by_source.{k}") or 0 for k, v in by_source.items()},
            recorded_budget=True, **common)
    # An older, epoch-based record: derive what it does not state.
    batch = _int_or_none(config.get("batch_size"), f"{what}: config.batch_size")
    world = _int_or_none(record.get("world_size"), f"{what}: world_size")
    steps: int | None = None
    if epochs and all(e["iterations"] is not None for e in epochs):
        steps = int(sum(e["iterations"] for e in epochs))
    elif isinstance(record.get("steps"), list) and record["steps"]:
        steps = len(record["steps"])
    images: int | None = None
    if epochs and all(e["images"] is not None for e in epochs):
        images = int(sum(e["images"] for e in epochs))
    elif steps is not None and batch is not None:
        images = steps * batch * (world or 1)
    return TrainingSummary(mode="epochs", steps=steps, images_seen=images, batch_size=batch, world_size=world,
                           eval_every=None, **common)


@dataclass(frozen=True)
class ArmBudget:
    """One arm's training budget over its seeds."""

    arm: str
    seeds: list[int]
    modes: list[str]
    steps: float | None  # mean over the seeds that state it
    images_seen: float | None
    per_seed: list[TrainingSummary]


def arm_budgets(summaries: Sequence[TrainingSummary]) -> list[ArmBudget]:
    """Per arm (in order of first appearance): the mean steps and images seen of its seeds."""
    by_arm: dict[str, list[TrainingSummary]] = {}
    for s in summaries:
        by_arm.setdefault(s.arm, []).append(s)
    out = []
    for arm, items in by_arm.items():
        steps = [s.steps for s in items if s.steps is not None]
        images = [s.images_seen for s in items if s.images_seen is not None]
        out.append(ArmBudget(arm, [s.seed for s in items], sorted({s.mode for s in items}),
                             float(np.mean(steps)) if steps else None, float(np.mean(images)) if images else None, items))
    return out


def budget_warnings(budgets: Sequence[ArmBudget], tolerance: float = BUDGET_TOLERANCE) -> list[str]:
    """A warning when the arms' optimiser steps differ by more than ``tolerance`` (relative to
    the smallest): a difference between such arms can come from training longer rather than
    from their data (the thesis' confound). Also names arms whose steps are unknown."""
    known = [b for b in budgets if b.steps is not None and b.steps > 0]
    out = []
    if len(known) >= 2:
        low = min(known, key=lambda b: b.steps or 0.0)
        high = max(known, key=lambda b: b.steps or 0.0)
        assert low.steps is not None and high.steps is not None
        if high.steps > (1.0 + tolerance) * low.steps:
            out.append(
                f"Unequal training budgets: arm {high.arm} took {high.steps:,.0f} optimiser steps, arm {low.arm} "
                f"{low.steps:,.0f} ({high.steps / low.steps:.2f}×; more than {tolerance:.0%} apart). A difference "
                "between these arms may come from training longer rather than from their data; give every arm "
                "the same budget (segmenter.budget: iterations or images_seen).")
    unknown = [b.arm for b in budgets if b.steps is None]
    if unknown and len(budgets) >= 2:
        out.append(f"Training steps unknown for {', '.join(unknown)} (their records state no budget or "
                   "iteration counts): equal budgets cannot be checked.")
    return out
