"""The features object: one feature vector per image for several image sets, all in one
feature space. The segmenter's Features job writes it (``outputs["features"]``) with
``encode_features``; evaluator.Quality reads it with ``decode_features``. One module holds
the format so that writer and reader cannot drift (numpy only: the segmenter may import it).

Format ``synthaug.features/1``: a NumPy ``.npz`` (``np.savez``, no pickled objects) with

* ``"__meta__"``: a 0-d str array holding JSON::

      {"format": "synthaug.features/1",
       "extractor": "segmenter_fpn" | "inception",      # the feature space
       "dim": 256,                                       # D, the width of every array
       "sets": {"real_train": {"dataset": "<dataset id>", "split": "train"},
                "real_test": {"dataset": "<dataset id>", "split": "test"},
                "gan-s0": {"dataset": "<dataset id>", "split": ""}, ...},
       "model": {...}}            # free-form: checkpoint key/sha256, weights, image size…

* ``"<name>"``: float32 (float16/float64 accepted) array N × D, one row per image;
* ``"<name>__ids"``: int64 array N, the image ids of those rows in the set's dataset
  (``dataset.json`` ids), unique.

Names: ``real_train`` (the real training images: the synthetic data derive from them),
``real_test`` (held-out real test images) and one per synthetic source, its label
(1–64 of ``[A-Za-z0-9._+-]``, starting with a letter or digit, without ``__``).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import FEATURE_SPACES, LABEL_RE

FORMAT = "synthaug.features/1"
META = "__meta__"
IDS_SUFFIX = "__ids"
REAL_TRAIN = "real_train"
REAL_TEST = "real_test"
REAL_SETS = (REAL_TRAIN, REAL_TEST)


def check_set_name(name: str, what: str) -> str:
    """`name` if it may name a set of a features object; InvalidArgument naming `what` otherwise."""
    if not LABEL_RE.match(name) or "__" in name:
        raise InvalidArgument(f"{what} {name!r} must be 1–64 letters, digits or ._+- starting with a letter or "
                              "digit, without '__'")
    return name


def check_feature_space(space: str, what: str) -> str:
    if space not in FEATURE_SPACES:
        raise InvalidArgument(f"{what} must be one of {', '.join(FEATURE_SPACES)}; got {space!r}")
    return space


@dataclass(frozen=True)
class FeatureSet:
    """One image set's features: rows of ``features`` belong to ``ids`` of ``dataset``."""

    name: str
    features: np.ndarray  # N × D, float32
    ids: np.ndarray  # N, int64
    dataset: str = ""
    split: str = ""

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Features:
    """A decoded features object."""

    extractor: str
    dim: int
    sets: dict[str, FeatureSet]
    model: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, what: str) -> FeatureSet:
        if name not in self.sets:
            raise InvalidArgument(f"{what}: the features have no set {name!r} (they have {', '.join(sorted(self.sets))})")
        return self.sets[name]


def encode_features(extractor: str, sets: Mapping[str, FeatureSet], model: Mapping[str, Any] | None = None) -> bytes:
    """The ``.npz`` bytes of `sets` (every one N × D with the same D, ids unique)."""
    check_feature_space(extractor, "extractor")
    dims = {np.shape(s.features)[1] for s in sets.values() if np.ndim(s.features) == 2}
    if len(dims) != 1:
        raise InvalidArgument(f"features: every set needs the same width D, got {sorted(dims)}")
    meta = {"format": FORMAT, "extractor": extractor, "dim": int(next(iter(dims))),
            "sets": {name: {"dataset": s.dataset, "split": s.split} for name, s in sets.items()},
            "model": dict(model or {})}
    arrays: dict[str, np.ndarray] = {META: np.array(json.dumps(meta, sort_keys=True))}
    for name, s in sets.items():
        check_set_name(name, "feature set")
        features, ids = np.asarray(s.features), np.asarray(s.ids)
        _check_set(name, features, ids)
        arrays[name] = features.astype(np.float32)
        arrays[name + IDS_SUFFIX] = ids.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _check_set(name: str, features: np.ndarray, ids: np.ndarray) -> None:
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise InvalidArgument(f"features: set {name!r} must be a non-empty N × D array, got shape {features.shape}")
    if features.dtype.kind != "f":
        raise InvalidArgument(f"features: set {name!r} must be floating point, got {features.dtype}")
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise InvalidArgument(f"features: set {name!r} row {row} is not finite")
    if ids.shape != (features.shape[0],) or ids.dtype.kind not in "iu":
        raise InvalidArgument(f"features: {name}{IDS_SUFFIX} must be {features.shape[0]} integer image ids, "
                              f"got {ids.dtype} {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"features: {name}{IDS_SUFFIX} has repeated image ids")


def decode_features(data: bytes, what: str = "features") -> Features:
    """A features object from its ``.npz`` bytes, checked: format, names, shapes, one width,
    finite values, unique ids. Errors name `what` and the offending set."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidArgument(f"{what}: not a {FORMAT} .npz ({exc.__class__.__name__}: {exc})") from None
    if META not in arrays or arrays[META].dtype.kind != "U" or arrays[META].ndim != 0:
        raise InvalidArgument(f"{what}: no {META!r} string (is this a {FORMAT} object?)")
    try:
        meta = json.loads(str(arrays.pop(META)))
    except json.JSONDecodeError:
        raise InvalidArgument(f"{what}: {META!r} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidArgument(f"{what}: {META}.format must be {FORMAT!r}")
    extractor = check_feature_space(str(meta.get("extractor")), f"{what}: {META}.extractor")
    described = meta.get("sets") or {}
    if not isinstance(described, dict):
        raise InvalidArgument(f"{what}: {META}.sets must be an object")
    sets: dict[str, FeatureSet] = {}
    for name in sorted(arrays):
        if name.endswith(IDS_SUFFIX):
            if name[: -len(IDS_SUFFIX)] not in arrays:
                raise InvalidArgument(f"{what}: {name!r} has no features array {name[: -len(IDS_SUFFIX)]!r}")
            continue
        check_set_name(name, f"{what}: set")
        if name + IDS_SUFFIX not in arrays:
            raise InvalidArgument(f"{what}: set {name!r} has no {name + IDS_SUFFIX!r} array")
        _check_set(name, arrays[name], arrays[name + IDS_SUFFIX])
        info = described.get(name) or {}
        sets[name] = FeatureSet(name, arrays[name], arrays[name + IDS_SUFFIX].astype(np.int64),
                                str(info.get("dataset", "")), str(info.get("split", "")))
    dims = {name: len(s.features[0]) for name, s in sets.items()}
    if len(set(dims.values())) > 1:
        raise InvalidArgument(f"{what}: sets differ in width: {dims}")
    dim = next(iter(dims.values()), 0)
    if "dim" in meta and meta["dim"] != dim:
        raise InvalidArgument(f"{what}: {META}.dim is {meta['dim']}, the arrays are {dim} wide")
    model = meta.get("model")
    return Features(extractor, dim, sets, dict(model) if isinstance(model, dict) else {})
