"""Experiment plans: one YAML file that describes a whole experiment.

Validated up front, with messages that name the offending field (`arms[2].composite: …`,
`compositor.params.output_size must be in [8, 8192], got 4`), so a typo fails in a second
instead of after an hour of training. Service settings are the services' own configuration
dataclasses (`services/<name>/config.py`, torch-free), filled and checked by the one
conversion in services.common.config: a plan takes exactly the settings the service's request
carries, with the service's defaults and the service's checks, and imports no server.
"""
from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, InstanceOf, ValidationError, field_validator, model_validator

from services.common.config import config_fields, config_from_mapping, config_to_mapping, replace_config
from services.common.errors import InvalidArgument
from services.compositor.config import BackgroundParams, ComposeParams, ForegroundParams
from services.evaluator.config import EvalConfig, QualityConfig, ReportConfig
from services.gan.config import GanConfig, GenerateConfig
from services.segmenter.config import FeaturesConfig, PredictConfig, SegmenterConfig
from services.segmenter.weights import parse_local_weights
from synthaug.v1 import compositor_pb2, evaluator_pb2, gan_pb2, segmenter_pb2

T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DemoDataSpec(_Strict):
    """Procedural dermoscopy-like images (no files needed)."""

    count: int = Field(gt=0)
    seed: int = Field(default=0, ge=0)
    size: int = Field(default=256, ge=32, le=4096)


class ImportSpec(_Strict):
    """Import from files when the plan runs (cached by the files' content)."""

    format: Literal["masks", "coco"]
    images: str
    masks: str | None = None
    pattern: str = "{stem}.png"
    annotations: str | None = None
    min_area: int = Field(default=0, ge=0)
    #: Square side the imported images are stored at, or "keep" (their own size). Separate
    #: from the plan's `image_size` (what every arm trains and predicts at): the test images
    #: keep this size, and the metrics are computed at it.
    size: int | Literal["keep"] = 256

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 32 <= v <= 4096:
            raise ValueError(f"size must be in [32, 4096] or 'keep', got {v}")
        return v

    @model_validator(mode="after")
    def _need_inputs(self) -> ImportSpec:
        if self.format == "masks" and not self.masks:
            raise ValueError("format 'masks' needs `masks` (the mask folder)")
        if self.format == "coco" and not self.annotations:
            raise ValueError("format 'coco' needs `annotations` (the COCO JSON file)")
        return self


class DatasetSpec(_Strict):
    """Exactly one of: a registered dataset name or id, an import, or procedural demo data."""

    name: str | None = None
    import_: ImportSpec | None = Field(default=None, alias="import")
    demo: DemoDataSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [k for k in ("name", "import_", "demo") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `name`, `import` or `demo`")
        return self


class SplitPlan(_Strict):
    """The split of the plan's dataset. `test: 0` means no internal test split: the arms are
    evaluated on the plan's `test_sets` only (then required)."""

    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    #: CSV with an image column and a group column (e.g. HAM10000 lesion_id): no group crosses splits.
    group_csv: str | None = None
    group_column: str | None = None
    id_column: str = "image"
    #: Keep the split the dataset already has instead of making a new one: it must have train,
    #: val and test images; its test split is the internal test set unless `test` is 0.
    existing: bool = False

    @model_validator(mode="after")
    def _sum_and_groups(self) -> SplitPlan:
        if not self.existing and abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        if not self.existing and self.val == 0:
            raise ValueError("val must be > 0: model selection needs it")
        if (self.group_csv is None) != (self.group_column is None):
            raise ValueError("group_csv and group_column go together")
        return self


def settable(cls: type, message: type[Message], exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The fields of `cls` a plan may set: those `message` carries to the service, less the
    ones the orchestrator fills itself (`exclude`: seeds, counts)."""
    carried = message.DESCRIPTOR.fields_by_name
    return tuple(f for f in config_fields(cls) if f in carried and f not in exclude)


def _plan_names(message: str, where: str, *classes: type) -> str:
    """Name fields as a plan spells them: `ComposeParams.output_size` → `compositor.params.output_size`."""
    for cls in classes:
        message = re.sub(rf"\b{cls.__name__}\.", f"{where}.", message)
    return message


def settings(cls: type[T], message: type[Message], values: Any, where: str, exclude: tuple[str, ...] = ()) -> T:
    """A plan section as the service's settings dataclass: defaults, types and checks all the
    service's own; ValueError (a pydantic error at `where`) naming the field otherwise."""
    if isinstance(values, cls):
        return values
    allowed = settable(cls, message, exclude)
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known fields: {', '.join(allowed)}")
    try:
        return config_from_mapping(cls, values, where)
    except InvalidArgument as exc:
        raise ValueError(_plan_names(str(exc), where, cls)) from None


class CompositorPlan(_Strict):
    """compositor.ExtractForegrounds, HarvestBackgrounds and Compose settings."""

    foregrounds: InstanceOf[ForegroundParams] = Field(default_factory=ForegroundParams)
    backgrounds: InstanceOf[BackgroundParams] = Field(default_factory=BackgroundParams)
    params: InstanceOf[ComposeParams] = Field(default_factory=ComposeParams)
    #: Composition worker processes (0: one per CPU of the compositor).
    workers: int = Field(default=0, ge=0)

    @field_validator("foregrounds", mode="before")
    @classmethod
    def _foregrounds(cls, v: Any) -> ForegroundParams:
        return settings(ForegroundParams, compositor_pb2.ExtractForegroundsRequest, v, "compositor.foregrounds")

    @field_validator("backgrounds", mode="before")
    @classmethod
    def _backgrounds(cls, v: Any) -> BackgroundParams:
        return settings(BackgroundParams, compositor_pb2.HarvestBackgroundsRequest, v, "compositor.backgrounds")

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> ComposeParams:
        return settings(ComposeParams, compositor_pb2.ComposeParams, v, "compositor.params")


class GanPlan(_Strict):
    """gan.Train and gan.Generate settings."""

    config: InstanceOf[GanConfig] = Field(default_factory=GanConfig)
    #: How images are generated; `count` follows from the arms.
    generate: InstanceOf[GenerateConfig] = Field(default_factory=GenerateConfig)
    #: Train one generator per seed instead of one shared by all seeds.
    per_seed: bool = False

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, v: Any) -> GanConfig:
        return settings(GanConfig, gan_pb2.GanConfig, v, "gan.config")

    @field_validator("generate", mode="before")
    @classmethod
    def _generate(cls, v: Any) -> GenerateConfig:
        return settings(GenerateConfig, gan_pb2.GanGenerateRequest, v, "gan.generate", exclude=("count",))


class BudgetPlan(_Strict):
    """How long every arm trains: exactly one of `epochs` (passes over each arm's own
    training set: arms with more images take more optimiser steps, the thesis' confounded
    design), `iterations` (optimiser steps, the same for every arm) or `images_seen`
    (training images drawn, the same for every arm: iterations = ceil(images_seen /
    batch_size))."""

    epochs: int | None = Field(default=None, gt=0)
    iterations: int | None = Field(default=None, gt=0)
    images_seen: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetPlan:
        given = [k for k in ("epochs", "iterations", "images_seen") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of `epochs`, `iterations` or `images_seen`, got {given or 'none'}")
        return self


#: SegmenterConfig fields the plan's budget decides (`segmenter.budget`), not `segmenter.config`.
BUDGET_FIELDS = ("iterations",)


class SegmenterPlan(_Strict):
    """segmenter.Train and segmenter.Predict settings, and the training budget."""

    config: InstanceOf[SegmenterConfig] = Field(default_factory=SegmenterConfig)
    predict: InstanceOf[PredictConfig] = Field(default_factory=PredictConfig)
    #: None: the equal budget (see Plan.budget).
    budget: BudgetPlan | None = None

    @model_validator(mode="before")
    @classmethod
    def _budget_epochs_agree(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("budget"), Mapping) and isinstance(data.get("config"), Mapping):
            epochs, budget = data["config"].get("epochs"), data["budget"]
            if epochs is not None and budget.get("epochs") is None:
                raise ValueError(
                    f"segmenter.config.epochs ({epochs}) has no effect with segmenter.budget {dict(budget)}; remove it "
                    "(or use segmenter.budget: {epochs: N})"
                )
            if epochs is not None and budget.get("epochs") not in (None, epochs):
                raise ValueError(f"segmenter.config.epochs ({epochs}) differs from segmenter.budget.epochs ({budget['epochs']}); set it in one place")
        return data

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, v: Any) -> SegmenterConfig:
        if isinstance(v, Mapping) and "iterations" in v:
            raise ValueError("segmenter.config.iterations: set the training budget as segmenter.budget: {iterations: N}")
        return settings(SegmenterConfig, segmenter_pb2.SegmenterConfig, v, "segmenter.config", exclude=BUDGET_FIELDS)

    @field_validator("predict", mode="before")
    @classmethod
    def _predict(cls, v: Any) -> PredictConfig:
        if isinstance(v, Mapping) and "export_threshold" in v:
            raise ValueError("segmenter.predict.export_threshold: set it as evaluation.export_threshold (the evaluation decides what predictions keep)")
        return settings(PredictConfig, segmenter_pb2.PredictRequest, v, "segmenter.predict", exclude=("export_threshold",))


@dataclass(frozen=True)
class EvaluationPlan:
    """The plan's `evaluation` section, one flat mapping: the fields of EvalConfig (how each
    arm × seed is scored) and of ReportConfig (the report), and `export_threshold` (the
    segmenter's PredictConfig.export_threshold: predictions keep every detection scoring at
    least this, default 0.05; COCO AP uses them all, `score_threshold` applies to the pixel
    metrics only). A field both have (n_bootstrap) sets both. Seeds are derived from the
    plan's, per evaluation."""

    evaluate: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    export_threshold: float = PredictConfig().export_threshold

    @classmethod
    def from_mapping(cls, values: Any) -> EvaluationPlan:
        where = "evaluation"
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} must be a mapping, got {values!r}")
        evaluate = settable(EvalConfig, evaluator_pb2.EvaluateRequest, exclude=("seed",))
        report = settable(ReportConfig, evaluator_pb2.ReportRequest)
        known = [*evaluate, *(f for f in report if f not in evaluate), "export_threshold"]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known fields: {', '.join(known)}")
        export = {k: v for k, v in values.items() if k == "export_threshold"}
        return cls(
            evaluate=settings(EvalConfig, evaluator_pb2.EvaluateRequest, {k: v for k, v in values.items() if k in evaluate}, where, exclude=("seed",)),
            report=settings(ReportConfig, evaluator_pb2.ReportRequest, {k: v for k, v in values.items() if k in report}, where),
            export_threshold=settings(PredictConfig, segmenter_pb2.PredictRequest, export, where).export_threshold,
        )


#: The feature spaces of the quality section: the real-only segmenter's own (always) and
#: Inception-v3 (when the plan gives its weights).
SEGMENTER_FPN = "segmenter_fpn"
INCEPTION = "inception"


@dataclass(frozen=True)
class QualityPlan:
    """The plan's `quality` section, one flat mapping: `enabled`, `inception_weights`, the
    fields of the evaluator's QualityConfig (how synthetic images are compared with real ones)
    and of the segmenter's FeaturesConfig (`batch_size` of the feature extraction).

    `enabled` unset: on when an arm uses synthetic data and the plan can measure it (a
    real-only arm whose model gives the feature space and the mask fidelity, an internal test
    split to compare against, and enough images for one common sample size: Plan.quality_skipped);
    otherwise the section is skipped and the provenance says why. `enabled: true` makes those
    requirements errors. `inception_weights` (`file:NAME`
    inside SYNTHAUG_WEIGHTS_DIR of the segmenter, or `store:KEY`; never downloaded) adds the
    Inception-v3 feature space."""

    enabled: bool | None = None
    inception_weights: str | None = None
    settings: QualityConfig = field(default_factory=QualityConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    @classmethod
    def from_mapping(cls, values: Any) -> QualityPlan:
        where = "quality"
        if isinstance(values, cls):
            return values
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} must be a mapping, got {values!r}")
        quality = settable(QualityConfig, evaluator_pb2.QualityRequest)
        features = settable(FeaturesConfig, segmenter_pb2.FeaturesRequest)
        known = ["enabled", "inception_weights", *quality, *features]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known fields: {', '.join(known)}")
        enabled = values.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"{where}.enabled must be true or false, got {enabled!r}")
        weights = values.get("inception_weights")
        if weights is not None:
            if not isinstance(weights, str):
                raise ValueError(f"{where}.inception_weights must be a string (file:NAME or store:KEY), got {weights!r}")
            try:
                parse_local_weights(weights, f"{where}.inception_weights")
            except InvalidArgument as exc:
                raise ValueError(str(exc)) from None
        return cls(
            enabled=enabled,
            inception_weights=weights,
            settings=settings(QualityConfig, evaluator_pb2.QualityRequest, {k: v for k, v in values.items() if k in quality}, where),
            features=settings(FeaturesConfig, segmenter_pb2.FeaturesRequest, {k: v for k, v in values.items() if k in features}, where),
        )

    @property
    def feature_spaces(self) -> list[str]:
        return [SEGMENTER_FPN] + ([INCEPTION] if self.inception_weights else [])


class FilterPlan(_Strict):
    """FreeMask-style filtering of an arm's synthetic data: of the first ceil(count / keep)
    images of its source's pool (the nested-order prefix an unfiltered arm takes its `count`
    from; the pool grows to hold them), the arm trains on the best `count` — the best `keep`
    share — so it still gets its count and differs from an unfiltered arm only by the filter.

    * `mask_fidelity`: the real-only model's pixel IoU on each synthetic image against the
      mask it was made from (does the image show what its mask says?);
    * `realism`: the realism score of each image against the real *training* images in the
      real-only model's feature space (quality.py; never anything that uses the test set).

    Rankings use the real-only arm's model of the same seed, so each seed's filtered training
    set is chosen by that seed's real-only model."""

    by: Literal["mask_fidelity", "realism"]
    keep: float = Field(gt=0, lt=1)


def pool_size(count: int, keep: float) -> int:
    """The pool a filtered source needs: ceil(count / keep) (rounding noise aside: 7 / 0.7
    is 10, not 11)."""
    return math.ceil(round(count / keep, 9))


class ArmPlan(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    real: int = Field(gt=0)
    composite: int = Field(default=0, ge=0)
    gan: int = Field(default=0, ge=0)
    #: Deliberate exceptions to `segmenter.config` for this arm (any of its fields, and
    #: `iterations`; `epochs` without `iterations` makes this arm train by epochs). The
    #: report shows them.
    segmenter: dict[str, Any] = Field(default_factory=dict)
    #: Train on the best `keep` share of a larger synthetic pool (FilterPlan); None: the
    #: first `composite` / `gan` images of the pool's nested order, as every arm.
    filter: FilterPlan | None = None

    @field_validator("segmenter", mode="before")
    @classmethod
    def _overrides(cls, v: Any) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError(f"must be a mapping of segmenter.config fields, got {v!r}")
        fixed = sorted(set(v) & {"min_size", "max_size"})
        if fixed:
            raise ValueError(f"{', '.join(fixed)} follow the plan's image_size: every arm trains at one size")
        allowed = settable(SegmenterConfig, segmenter_pb2.SegmenterConfig)
        unknown = sorted(set(v) - set(allowed))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))}; known fields: {', '.join(allowed)}")
        try:
            checked = config_from_mapping(SegmenterConfig, v)
        except InvalidArgument as exc:
            raise ValueError(str(exc).removeprefix("SegmenterConfig.")) from None
        # The overridden fields only, as their checked values (JSON-ready: keys and provenance).
        resolved = config_to_mapping(checked)
        return {k: resolved[k] for k in v}

    @property
    def synthetic(self) -> bool:
        return self.composite > 0 or self.gan > 0

    @model_validator(mode="after")
    def _filter_needs_synthetic_data(self) -> ArmPlan:
        if self.filter is not None and not self.synthetic:
            raise ValueError("filter: this arm has no synthetic data to filter (give it composite or gan images)")
        return self

    def pool_needed(self, count: int) -> int:
        """The pool size this arm needs of a source it takes `count` images of."""
        return pool_size(count, self.filter.keep) if self.filter is not None and count else count


#: The label of the internal test set (the test split of the plan's own dataset) in step
#: labels, reports and metrics; an external test set may not use it.
INTERNAL_TEST_SET = "internal"


class TestSetPlan(_Strict):
    """An external test set: every arm × seed is also predicted and evaluated on it (e.g. PH2,
    or images from another clinic or device). Its images may have any size: they are predicted
    at the plan's image size and scored at their own stored size."""

    __test__ = False  # not a pytest test class

    label: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    #: What `dataset:` accepts: a registered name, an `import:` (`size: keep` keeps the images'
    #: own size) or `demo:`.
    dataset: DatasetSpec
    #: The split of that dataset to evaluate on ("" = all its images).
    split: Literal["", "train", "val", "test"] = ""

    @field_validator("label")
    @classmethod
    def _not_internal(cls, v: str) -> str:
        if v == INTERNAL_TEST_SET:
            raise ValueError(f"{INTERNAL_TEST_SET!r} is the internal test split's label; name this test set otherwise")
        return v


class SynthesisPlan(_Strict):
    """Which real images the synthetic data may derive from."""

    #: Foregrounds, backgrounds and GAN training pairs come from the first `real` images of
    #: the nested training order only: the prefix every arm with at least that many real
    #: images has. Default: the smallest `real` among the arms with synthetic data.
    real: int | None = Field(default=None, gt=0)


#: The plan's image size when it sets none.
DEFAULT_IMAGE_SIZE = 256
#: Service settings that follow the plan's `image_size` (an explicit different value is an error).
SIZE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("compositor", "params", "output_size"),
    ("gan", "config", "image_size"),
    ("segmenter", "config", "min_size"),
    ("segmenter", "config", "max_size"),
)


@dataclass(frozen=True)
class Budget:
    """The training budget every arm gets (arm overrides aside), resolved from the plan."""

    #: "epochs" (each arm passes over its own training set `epochs` times) or "iterations"
    #: (every arm takes the same number of optimiser steps).
    mode: str
    #: What the plan asked for: "epochs", "iterations", "images_seen", or "equal" (no budget
    #: given: iterations sized from the reference arm's epochs).
    source: str
    epochs: int | None
    iterations: int | None
    #: Iterations between validations (and checkpoints); None: one epoch of each arm.
    eval_every: int | None
    #: The arm whose epoch length sized the budget ("" when none did).
    reference: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for provenance and `--dry-run`."""
        out: dict[str, Any] = {"mode": self.mode, "source": self.source}
        for k in ("epochs", "iterations", "eval_every"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.reference:
            out["reference_arm"] = self.reference
        return out


class Plan(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    #: Training seeds: every arm is trained and evaluated once per seed.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: Seed of the data: the nested order of the real training images (one for every arm and
    #: seed) and the synthetic data (backgrounds, composites, shared GAN): one pool for all arms.
    data_seed: int = Field(default=0, ge=0)
    dataset: DatasetSpec
    #: External test sets, evaluated besides the internal test split (`split.test`).
    test_sets: list[TestSetPlan] = Field(default_factory=list)
    #: The one image size of the plan: every arm trains and predicts at it (segmenter
    #: min_size = max_size), composites and GAN images are made at it. Test images keep their
    #: stored size; predicted masks are resized back to it for the metrics.
    image_size: int = Field(default=DEFAULT_IMAGE_SIZE, ge=32, le=4096)
    split: SplitPlan = Field(default_factory=SplitPlan)
    synthesis: SynthesisPlan = Field(default_factory=SynthesisPlan)
    compositor: CompositorPlan = Field(default_factory=CompositorPlan)
    gan: GanPlan = Field(default_factory=GanPlan)
    segmenter: SegmenterPlan = Field(default_factory=SegmenterPlan)
    evaluation: InstanceOf[EvaluationPlan] = Field(default_factory=EvaluationPlan)
    #: Synthetic-data quality: distance to real data, memorisation, mask fidelity (QualityPlan).
    quality: InstanceOf[QualityPlan] = Field(default_factory=QualityPlan)
    arms: list[ArmPlan] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_image_size(cls, data: Any) -> Any:
        """The compositor's, the GAN's and the segmenter's sizes follow `image_size`; a service
        setting given explicitly must agree with it."""
        if not isinstance(data, Mapping):
            return data
        size = data.get("image_size", DEFAULT_IMAGE_SIZE)
        if isinstance(size, bool) or not isinstance(size, int):
            return data  # the field's own check names it
        data = dict(data)
        arms = data.get("arms")
        uses_gan = not isinstance(arms, list) or any(not isinstance(a, Mapping) or a.get("gan") for a in arms)
        for section, part, name in SIZE_FIELDS:
            if section == "gan" and not uses_gan:
                continue  # no GAN is trained: its settings (and their size rules) do not apply
            sec = data.get(section)
            sec = dict(sec) if isinstance(sec, Mapping) else ({} if sec is None else sec)
            if not isinstance(sec, dict):
                continue
            values = sec.get(part)
            values = dict(values) if isinstance(values, Mapping) else ({} if values is None else values)
            if not isinstance(values, dict):
                continue
            given = values.get(name)
            if given is not None and given != size:
                where = f"image_size ({size})" if "image_size" in data else f"image_size (default {size})"
                raise ValueError(
                    f"{section}.{part}.{name} ({given}) differs from {where}: every arm trains and predicts at "
                    f"the plan's one image size; remove {section}.{part}.{name} or set image_size: {given}"
                )
            values[name] = size
            sec[part] = values
            data[section] = sec
        return data

    @field_validator("evaluation", mode="before")
    @classmethod
    def _evaluation(cls, v: Any) -> EvaluationPlan:
        return EvaluationPlan.from_mapping(v)

    @field_validator("quality", mode="before")
    @classmethod
    def _quality(cls, v: Any) -> QualityPlan:
        return QualityPlan.from_mapping(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be ≥ 0")
        return v

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: list[ArmPlan]) -> list[ArmPlan]:
        names = [a.name for a in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        return v

    @model_validator(mode="after")
    def _test_sets(self) -> Plan:
        """Some test set to evaluate on; each external one named once and distinct from the
        training data and from each other (content overlap is checked when the data exist)."""
        if not self.internal_test and not self.test_sets:
            raise ValueError("split.test is 0 (no internal test split): give test_sets to evaluate on")
        labels = [t.label for t in self.test_sets]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ValueError(f"test_sets labels must be unique; repeated: {dup}")
        seen: dict[str, int] = {}
        for i, t in enumerate(self.test_sets):
            spec = t.dataset.model_dump(by_alias=True, exclude_none=True)
            if spec == self.dataset.model_dump(by_alias=True, exclude_none=True):
                raise ValueError(f"test_sets[{i}] ({t.label}): its dataset is the training dataset; an external test set must not share images with it")
            again = repr((spec, t.split))
            if again in seen:
                raise ValueError(f"test_sets[{i}] ({t.label}) is the same data as test_sets[{seen[again]}] ({self.test_sets[seen[again]].label})")
            seen[again] = i
        return self

    @model_validator(mode="after")
    def _synthesis_within_every_synthetic_arm(self) -> Plan:
        """Synthetic data derive only from real images every synthetic arm has."""
        n = self.synthesis.real
        if n is None:
            return self
        for i, arm in enumerate(self.arms):
            if arm.synthetic and arm.real < n:
                raise ValueError(
                    f"arms[{i}] ({arm.name}) has {arm.real} real images, fewer than synthesis.real ({n}): its synthetic data "
                    f"would derive from real images it does not have; lower synthesis.real to ≤ {arm.real} or give the arm more"
                )
        return self

    @model_validator(mode="after")
    def _predictions_fit_the_evaluation(self) -> Plan:
        """Predictions are written once, at the export threshold; the evaluation can only
        raise the score threshold, and must read masks at the threshold they were cut at."""
        predict, evaluate = self.segmenter.predict, self.evaluation.evaluate
        if self.evaluation.export_threshold > evaluate.score_threshold:
            raise ValueError(
                f"evaluation.export_threshold ({self.evaluation.export_threshold:g}) is above evaluation.score_threshold "
                f"({evaluate.score_threshold:g}): the detections between them would never be exported; lower the first"
            )
        if evaluate.mask_threshold is not None and evaluate.mask_threshold != predict.mask_threshold:
            raise ValueError(
                f"evaluation.mask_threshold ({evaluate.mask_threshold:g}) differs from segmenter.predict.mask_threshold "
                f"({predict.mask_threshold:g}), the threshold the predicted masks are cut at; leave it unset or make them equal"
            )
        return self

    @model_validator(mode="after")
    def _quality_and_filters_can_be_measured(self) -> Plan:
        """Filters rank with the real-only model; realism comes from the quality job, which must
        be able to run; so must an explicit `quality.enabled: true`."""
        for i, arm in enumerate(self.arms):
            if arm.filter is None:
                continue
            if self.real_only_arm is None:
                raise ValueError(f"arms[{i}] ({arm.name}).filter ranks the synthetic images with the real-only arm's model, "
                                 "and the plan has no real-only arm; add one (e.g. {name: real, real: N})")
            reason = self.quality_skipped if arm.filter.by == "realism" else ""
            if reason:
                raise ValueError(f"arms[{i}] ({arm.name}).filter by realism: realism comes from the quality job, which cannot run: "
                                 f"{reason}; use by: mask_fidelity")
        q = self.quality
        if q.enabled is True:
            reason = self.quality_skipped
            if reason:
                raise ValueError(f"quality.enabled is true, but {reason}; remove quality.enabled to skip the section")
        if q.enabled is False and q.inception_weights:
            raise ValueError("quality.inception_weights has no effect with quality.enabled: false; remove one of them")
        return self

    @model_validator(mode="after")
    def _arm_settings_are_valid(self) -> Plan:
        for arm in self.arms:
            self.arm_segmenter(arm)  # InvalidArgument → ValueError below names the arm
        return self

    @property
    def internal_test(self) -> bool:
        """Whether the arms are evaluated on the test split of the plan's own dataset."""
        return self.split.test > 0

    @property
    def test_set_labels(self) -> list[str]:
        """Every test set the arms are evaluated on: "internal" (when there is one) first."""
        return ([INTERNAL_TEST_SET] if self.internal_test else []) + [t.label for t in self.test_sets]

    @property
    def composite_pool(self) -> int:
        """Composites to make: the most any arm takes, ceil(count / keep) for a filtered arm."""
        return max(a.pool_needed(a.composite) for a in self.arms)

    @property
    def gan_pool(self) -> int:
        """GAN images to generate (per GAN): the most any arm takes, ceil(count / keep) for a
        filtered arm."""
        return max(a.pool_needed(a.gan) for a in self.arms)

    @property
    def real_only_arm(self) -> ArmPlan | None:
        """The first real-only arm: its model measures the synthetic data (feature space, mask
        fidelity) and ranks them for filters. None when every arm uses synthetic data."""
        return next((a for a in self.arms if not a.synthetic), None)

    @property
    def quality_skipped(self) -> str:
        """Why the quality section cannot run ("" when it can)."""
        if not any(a.synthetic for a in self.arms):
            return "no arm uses synthetic data"
        if self.real_only_arm is None:
            return "the plan has no real-only arm (its model gives the feature space and the mask fidelity)"
        if not self.internal_test:
            return "the plan has no internal test split (split.test is 0) to compare the synthetic images with"
        # Every set is scored at one sample size, at most half the real prefix and each pool's
        # size, and FD, KID and k-NN figures need at least max(nearest_k + 1, 4) images
        # (services/evaluator/core/quality.py; the test split's size is checked by the job).
        k = self.quality.settings.nearest_k
        need = max(k + 1, 4)
        synthesis = self.synthesis_real or 0
        sizes = {f"half the synthesis prefix ({synthesis} real images)": synthesis // 2}
        if self.composite_pool:
            sizes["the composite pool"] = self.composite_pool
        if self.gan_pool:
            sizes["the GAN pool"] = self.gan_pool
        small = [f"{name} has {n}" for name, n in sizes.items() if n < need]
        if small:
            return (f"too few images for the quality figures: every set is scored at one sample size, which needs at least "
                    f"{need} images with nearest_k = {k}, but {' and '.join(small)}")
        return ""

    @property
    def quality_runs(self) -> bool:
        """Whether the report gets the quality section (see QualityPlan)."""
        return not self.quality_note

    @property
    def quality_note(self) -> str:
        """Why the report has no quality section ("" when it has one)."""
        return "quality.enabled is false" if self.quality.enabled is False else self.quality_skipped

    @property
    def synthesis_real(self) -> int | None:
        """N: the synthetic data derive from the first N real training images (None: no arm
        uses synthetic data)."""
        if self.synthesis.real is not None:
            return self.synthesis.real
        synthetic = [a.real for a in self.arms if a.synthetic]
        return min(synthetic) if synthetic else None

    def reference_arm(self) -> ArmPlan:
        """The arm whose epoch sizes the equal budget: the real-only arm with the most real
        images, else (no real-only arm) the arm with the most real images."""
        real_only = [a for a in self.arms if not a.synthetic]
        return max(real_only or self.arms, key=lambda a: a.real)

    @property
    def budget(self) -> Budget:
        """The training budget of every arm (see README "Plans"): `segmenter.budget`, or by
        default the equal budget — the reference arm's iterations per epoch × epochs."""
        cfg, given = self.segmenter.config, self.segmenter.budget
        if given is not None and given.epochs is not None:
            return Budget("epochs", "epochs", given.epochs, None, cfg.eval_every, "")
        ref = self.reference_arm()
        epoch = math.ceil(ref.real / cfg.batch_size)
        if given is None:
            iterations, source = epoch * cfg.epochs, "equal"
        elif given.iterations is not None:
            iterations, source = given.iterations, "iterations"
        else:
            assert given.images_seen is not None
            iterations, source = math.ceil(given.images_seen / cfg.batch_size), "images_seen"
        eval_every = min(cfg.eval_every if cfg.eval_every is not None else epoch, iterations)
        return Budget("iterations", source, None, iterations, eval_every, ref.name)

    def arm_segmenter(self, arm: ArmPlan) -> SegmenterConfig:
        """The segmenter settings `arm` trains with: the plan's, the budget, the arm's overrides."""
        budget = self.budget
        if budget.mode == "epochs":
            changes: dict[str, Any] = {"epochs": budget.epochs, "iterations": None, "eval_every": budget.eval_every}
        else:
            changes = {"iterations": budget.iterations, "eval_every": budget.eval_every}
        changes.update(arm.segmenter)
        if "epochs" in arm.segmenter and "iterations" not in arm.segmenter:
            changes["iterations"] = None
        try:
            return replace_config(self.segmenter.config, **changes)
        except InvalidArgument as exc:
            raise ValueError(_plan_names(str(exc), f"arms[{self.arms.index(arm)}].segmenter", SegmenterConfig)) from None


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("import_",):
            out += ".import"
        else:
            out += f".{part}" if out else str(part)
    return out or "plan"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names a plan may spell at `loc` (the model that owns the unknown key)."""
    model: Any = Plan
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        candidates += [a for c in list(candidates) for a in typing.get_args(c)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_plan(data: Any, source: str = "plan") -> Plan:
    """Validate a plan dict; InvalidArgument lists every problem with its field path."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"{source}: a plan must be a YAML mapping, got {type(data).__name__}")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            where = _location(tuple(err["loc"]))
            # Settings errors already start with the field's path (compositor.params.scale …).
            if err["type"] == "extra_forbidden":
                known = _known_fields(tuple(err["loc"])[:-1])
                if known:
                    msg += f"; known fields: {', '.join(known)}"
            problems.append(msg if re.match(rf"{re.escape(where)}[.:\[]", msg) else f"{where}: {msg}")
        raise InvalidArgument(f"{source}: invalid plan:\n  " + "\n  ".join(problems)) from None


def load_plan_text(text: str, source: str = "plan") -> Plan:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{source}: nested too deeply to be a plan") from None
    return parse_plan(data, source)


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidArgument(f"plan file {path} not found") from None
    plan = load_plan_text(text, str(path))
    return resolve_paths(plan, path.parent)


def resolve_paths(plan: Plan, base: Path) -> Plan:
    """Relative file paths in a plan are relative to the plan file."""
    def fix(p: str | None) -> str | None:
        return None if p is None else str((base / p).resolve()) if not Path(p).is_absolute() else p

    for spec in [plan.dataset, *(t.dataset for t in plan.test_sets)]:
        if spec.import_ is not None:
            imp = spec.import_
            spec.import_ = imp.model_copy(update={"images": fix(imp.images), "masks": fix(imp.masks), "annotations": fix(imp.annotations)})
    if plan.split.group_csv:
        plan.split = plan.split.model_copy(update={"group_csv": fix(plan.split.group_csv)})
    return plan
