"""A trained model as one self-contained file (`synthaug model export`, `synthaug predict`).

A run's model file (the segmenter's outputs["model"]) holds the best evaluation's weights and
what rebuilds the network; to predict as the plan did, a user also needs the thresholds the
plan predicted and scored with, the image size it trained at, and where the model came
from. The export holds all of it, written with ``torch.save`` of plain containers (tensors,
str, int, float, bool, None, lists, dicts), so ``torch.load(path, weights_only=True)`` reads
it and nothing is unpickled. Format ``synthaug.model-export/1``::

    {"format": "synthaug.model-export/1",
     "model": {name: tensor},                 # the best evaluation's state_dict (weights only)
     "spec": {"architecture", "num_classes", "min_size", "max_size", ...},   # ModelSpec
     "categories": [{"id", "name", "supercategory"}, ...],
     "image_size": 256,                       # what every image is resized to for prediction
     "thresholds": {"export": 0.05,           # detections kept (COCO AP uses all of them)
                    "score": 0.5,             # detections entering the pixel masks (IoU, F1)
                    "mask": 0.5},             # mask probability the masks are cut at
     "predict": {"detections_per_image": 100, "batch_size": 4},
     "provenance": {"run_id", "plan", "arm", "seed", "step_key", "code_digest",
                    "datasets": [{"role", "id", ...}], ...},   # free-form JSON-like values
     "extra": {"best_epoch", "iteration", "val": {...}}}       # the model file's own record

The segmenter's own loader (core/predictor.py load_model_file) reads an export as it reads a
model file (weights, spec, categories), so an export uploaded to the store is also a
PredictRequest.checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from services.common.errors import InvalidArgument
from services.segmenter.config import PredictConfig, check_thresholds
from services.segmenter.core.checkpoints import from_bytes, state_dict_from, to_bytes
from services.segmenter.core.models import ModelSpec

EXPORT_FORMAT = "synthaug.model-export/1"


@dataclass(frozen=True)
class Thresholds:
    """The plan's thresholds: what predictions keep (export), what enters the pixel metrics
    (score, ≥ export) and where mask probabilities are cut (mask)."""

    export: float
    score: float
    mask: float

    def validate(self, what: str = "thresholds") -> Thresholds:
        check_thresholds(what, "export", self.export, "mask", self.mask)
        check_thresholds(what, "score", self.score, "mask", self.mask)
        if self.export > self.score:
            raise InvalidArgument(f"{what}: export ({self.export:g}) is above score ({self.score:g})")
        return self


@dataclass(frozen=True)
class ExportedModel:
    """An export's description (everything but the weights)."""

    spec: ModelSpec
    categories: list[dict[str, Any]]
    image_size: int
    thresholds: Thresholds
    detections_per_image: int
    batch_size: int
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def predict_config(self) -> PredictConfig:
        """The PredictConfig the plan predicted with."""
        cfg = PredictConfig(
            export_threshold=self.thresholds.export,
            detections_per_image=self.detections_per_image,
            mask_threshold=self.thresholds.mask,
            batch_size=self.batch_size,
        )
        cfg.validate()
        return cfg


def _plain(value: Any, where: str) -> Any:
    """`value` if it holds only what weights_only loading accepts and JSON can show (str, int,
    finite float, bool, None, lists, str-keyed dicts); InvalidArgument naming the item."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument(f"{where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    raise InvalidArgument(f"{where}: a {type(value).__name__} cannot be stored in a model export")


def export_model(model_file: bytes, what: str, thresholds: Thresholds, predict: PredictConfig,
                 provenance: Mapping[str, Any]) -> bytes:
    """The bytes of an export of `model_file` (a segmenter model file: its weights, spec and
    categories) with the plan's thresholds, prediction settings and `provenance`."""
    thresholds.validate("thresholds")
    predict.validate()
    obj = from_bytes(model_file, what)
    if "spec" not in obj or "categories" not in obj:
        raise InvalidArgument(f"{what} is not a synthaug segmenter model file (no spec/categories)")
    state = state_dict_from(obj, what)
    spec = ModelSpec.from_dict(obj["spec"])
    if spec.min_size != spec.max_size:
        raise InvalidArgument(f"{what}: the model resizes to {spec.min_size}–{spec.max_size} px, not one image size")
    doc = {
        "format": EXPORT_FORMAT,
        "model": {k: v.detach().cpu().contiguous() for k, v in state.items()},
        "spec": _plain(spec.to_dict(), "spec"),
        "categories": _plain(list(obj["categories"]), "categories"),
        "image_size": int(spec.min_size),
        "thresholds": {"export": float(thresholds.export), "score": float(thresholds.score), "mask": float(thresholds.mask)},
        "predict": {"detections_per_image": int(predict.detections_per_image), "batch_size": int(predict.batch_size)},
        "provenance": _plain(dict(provenance), "provenance"),
        "extra": _plain(dict(obj.get("extra") or {}), "extra"),
    }
    return to_bytes(doc)


def read_export(data: bytes, what: str) -> ExportedModel:
    """An export's description, checked (InvalidArgument naming `what` otherwise)."""
    obj = from_bytes(data, what)
    if obj.get("format") != EXPORT_FORMAT:
        raise InvalidArgument(f"{what} is not a synthaug model export (format {obj.get('format')!r}, expected "
                              f"{EXPORT_FORMAT!r}); `synthaug model export` writes one")
    try:
        t, p = obj["thresholds"], obj["predict"]
        model = obj["model"]
        if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
            raise InvalidArgument(f"{what}: 'model' is not a state dict of tensors")
        exported = ExportedModel(
            spec=ModelSpec.from_dict(obj["spec"]),
            categories=list(obj["categories"]),
            image_size=int(obj["image_size"]),
            thresholds=Thresholds(float(t["export"]), float(t["score"]), float(t["mask"])).validate(f"{what} thresholds"),
            detections_per_image=int(p["detections_per_image"]),
            batch_size=int(p["batch_size"]),
            provenance=dict(obj.get("provenance") or {}),
            extra=dict(obj.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what}: incomplete model export ({exc.__class__.__name__}: {exc})") from None
    exported.predict_config()  # validates the prediction settings
    return exported
