"""Experiment plans: one YAML file that describes a whole experiment.

Validated up front, with messages that name the offending field (`arms[2].composite: …`), so
a typo fails in a second instead of after an hour of training. Service settings (compose
parameters, GAN and segmenter configs) are passed through to the services' protobuf
messages and checked against them here, field by field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.errors import InvalidArgument
from synthaug.v1 import compositor_pb2, gan_pb2, segmenter_pb2


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

    @model_validator(mode="after")
    def _need_inputs(self) -> "ImportSpec":
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
    def _exactly_one(self) -> "DatasetSpec":
        given = [k for k in ("name", "import_", "demo") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `name`, `import` or `demo`")
        return self


class SplitPlan(_Strict):
    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    #: CSV with an image column and a group column (e.g. HAM10000 lesion_id): no group crosses splits.
    group_csv: str | None = None
    group_column: str | None = None
    id_column: str = "image"
    #: Keep the split the dataset already has instead of making a new one.
    existing: bool = False

    @model_validator(mode="after")
    def _sum_and_groups(self) -> "SplitPlan":
        if not self.existing and abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        if not self.existing and (self.val == 0 or self.test == 0):
            raise ValueError("val and test must be > 0: model selection and evaluation need them")
        if (self.group_csv is None) != (self.group_column is None):
            raise ValueError("group_csv and group_column go together")
        return self


def _check_proto(message_type: type[Message], value: dict[str, Any], where: str, convert: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Parse into the service's message, then run the service's own conversion and checks, so a
    value the service would refuse fails now rather than after hours of earlier steps."""
    try:
        message = json_format.ParseDict(value, message_type())
    except json_format.ParseError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if convert is not None:
        try:
            convert(message)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
    return value


def _compose_params(message: Any) -> Any:
    from services.compositor.server import compose_params

    return compose_params(message)


def _gan_config(message: Any) -> Any:
    from services.gan.config import GanConfig

    return GanConfig.from_proto(message)


def _segmenter_config(message: Any) -> Any:
    from services.segmenter.server import train_config

    return train_config(message, seed=0)


class CompositorPlan(_Strict):
    min_area: int = Field(default=16, ge=0)
    feather_sigma: float = Field(default=1.0, ge=0)
    background_method: Literal["inpaint_telea", "inpaint_ns", "crop"] = "inpaint_telea"
    dilate_px: int = Field(default=7, ge=0)
    max_backgrounds: int = Field(default=0, ge=0)
    #: ComposeParams fields (protos/synthaug/v1/compositor.proto), e.g. {blend: BLEND_MODE_GAUSSIAN}.
    params: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(default=0, ge=0)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_proto(compositor_pb2.ComposeParams, v, "ComposeParams", _compose_params)


class GanPlan(_Strict):
    #: GanConfig fields (protos/synthaug/v1/gan.proto).
    config: dict[str, Any] = Field(default_factory=dict)
    #: Train one generator per seed instead of one shared by all seeds.
    per_seed: bool = False
    no_dropout: bool = False
    batchnorm: Literal["train", "eval"] = "train"

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_proto(gan_pb2.GanConfig, v, "GanConfig", _gan_config)


class SegmenterPlan(_Strict):
    #: SegmenterConfig fields (protos/synthaug/v1/segmenter.proto).
    config: dict[str, Any] = Field(default_factory=dict)
    predict_batch_size: int = Field(default=8, gt=0)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_proto(segmenter_pb2.SegmenterConfig, v, "SegmenterConfig", _segmenter_config)


class EvaluationPlan(_Strict):
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    mask_threshold: float = Field(default=0.5, ge=0, le=1)
    #: Bootstrap resamples for confidence intervals (the evaluator's range).
    n_bootstrap: int = Field(default=2000, ge=100, le=100_000)
    #: Test images drawn with each arm's prediction in the report.
    overlay_images: int = Field(default=8, ge=1, le=24)


class ArmPlan(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    real: int = Field(gt=0)
    composite: int = Field(default=0, ge=0)
    gan: int = Field(default=0, ge=0)


class Plan(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    #: Training seeds: every arm is trained and evaluated once per seed.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: Seed of the synthetic data (backgrounds, composites, shared GAN): one pool for all arms.
    data_seed: int = Field(default=0, ge=0)
    dataset: DatasetSpec
    #: Square side imported images are resized to, or "keep" (default: 256, as `synthaug import`).
    image_size: int | Literal["keep"] | None = None
    split: SplitPlan = Field(default_factory=SplitPlan)
    compositor: CompositorPlan = Field(default_factory=CompositorPlan)
    gan: GanPlan = Field(default_factory=GanPlan)
    segmenter: SegmenterPlan = Field(default_factory=SegmenterPlan)
    evaluation: EvaluationPlan = Field(default_factory=EvaluationPlan)
    arms: list[ArmPlan] = Field(min_length=1)

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
    def _image_size_only_for_imports(self) -> "Plan":
        if isinstance(self.image_size, int) and not 32 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [32, 4096] or 'keep', got {self.image_size}")
        if self.image_size is not None and self.dataset.import_ is None:
            raise ValueError("image_size resizes imported images; a demo dataset has its own `size`, a named dataset its stored size")
        return self

    @property
    def max_composite(self) -> int:
        return max(a.composite for a in self.arms)

    @property
    def max_gan(self) -> int:
        return max(a.gan for a in self.arms)

    @property
    def max_real(self) -> int:
        return max(a.real for a in self.arms)


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
            problems.append(f"{_location(tuple(err['loc']))}: {msg}")
        raise InvalidArgument(f"{source}: invalid plan:\n  " + "\n  ".join(problems)) from None


def load_plan_text(text: str, source: str = "plan") -> Plan:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid YAML: {exc}") from None
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

    if plan.dataset.import_ is not None:
        imp = plan.dataset.import_
        plan.dataset.import_ = imp.model_copy(update={"images": fix(imp.images), "masks": fix(imp.masks), "annotations": fix(imp.annotations)})
    if plan.split.group_csv:
        plan.split = plan.split.model_copy(update={"group_csv": fix(plan.split.group_csv)})
    return plan
