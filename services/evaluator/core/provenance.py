"""A run's provenance as the report shows it: which step computed what (its cache key and
the digest of the code that computed it), which datasets the numbers rest on, from how many
real images the synthetic data derive, and each arm's composition and deliberate exceptions.

The orchestrator writes it; the report checks it, renders it and stores it unchanged as
``provenance.json``. It describes what the results are, not how this attempt went (no
timings, no "was cached" flags), so that the same results always give the same report. Format ``synthaug.provenance/1`` (keys not listed are kept, not shown)::

    {"format": "synthaug.provenance/1",
     "run_id": "…", "plan": "thesis-table4", "plan_sha256": "…", "code_version": "0.1.0",  # optional
     "steps": [{"label": "compose", "kind": "compose", "key": "<hex>", "code_digest": "<hex>",
                "arm": "comp-2k", "seed": 0, "test_set": "ph2"}, ...],   # arm, seed, test_set optional
     "datasets": [{"role": "real" | "split" | "composite" | "gan" | "test_set" | …,
                   "id": "<dataset id>", "name": "isic", "label": "ph2", "step": "compose"}, ...],
                   # name, step optional; label required for role "test_set"
     "synthesis": {"real": 1000},            # N: synthetic data derive from the first N real images
     "arms": [{"name": "comp-2k", "real": 1000, "composite": 2000, "gan": 0,
               "segmenter": {"epochs": 5}}, ...],   # segmenter: per-arm overrides ({} = none)
     "budget": {"mode": "iterations", "iterations": 1875}}   # the plan's segmenter.budget, optional
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from services.common.errors import InvalidArgument

FORMAT = "synthaug.provenance/1"
#: Largest provenance document accepted (a plan of a few hundred steps is well under 1 MB).
MAX_BYTES = 4_000_000


@dataclass(frozen=True)
class StepRecord:
    label: str
    kind: str
    key: str
    code_digest: str
    arm: str = ""
    seed: int | None = None
    test_set: str = ""


@dataclass(frozen=True)
class DatasetRecord:
    role: str
    id: str
    name: str = ""
    label: str = ""
    step: str = ""


@dataclass(frozen=True)
class ArmRecord:
    name: str
    real: int
    composite: int
    gan: int
    segmenter: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """The checked document and its parts."""

    document: dict[str, Any]
    steps: list[StepRecord]
    datasets: list[DatasetRecord]
    synthesis_real: int | None
    arms: list[ArmRecord]
    budget: dict[str, Any] | None
    run_id: str = ""
    plan: str = ""
    plan_sha256: str = ""
    code_version: str = ""

    def json_bytes(self) -> bytes:
        """The document as given, canonical (sorted keys, indented): provenance.json."""
        return (json.dumps(self.document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def arm(self, name: str) -> ArmRecord | None:
        return next((a for a in self.arms if a.name == name), None)


def _str(obj: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{where}.{key} must be an integer ≥ 0, got {value!r}")
    return value


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, Mapping) for x in value):
        raise InvalidArgument(f"{where}.{key} must be a list of objects")
    return value


def parse_provenance(text: str | bytes | Mapping[str, Any], where: str = "provenance") -> Provenance:
    """Check a provenance document (format in the module docstring); InvalidArgument names
    the first offending item, e.g. ``provenance.steps[3].key``."""
    if isinstance(text, (str, bytes)):
        if len(text) > MAX_BYTES:
            raise InvalidArgument(f"{where}: {len(text)} bytes, at most {MAX_BYTES}")
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"{where}: not valid JSON ({exc})") from None
    else:
        doc = json.loads(json.dumps(dict(text)))  # a plain, JSON-able copy
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: must be a JSON object")
    if doc.get("format") != FORMAT:
        raise InvalidArgument(f"{where}.format must be {FORMAT!r}, got {doc.get('format')!r}")
    steps = []
    for i, s in enumerate(_list(doc, "steps", where)):
        w = f"{where}.steps[{i}]"
        seed = s.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidArgument(f"{w}.seed must be an integer or null, got {seed!r}")
        steps.append(StepRecord(_str(s, "label", w), _str(s, "kind", w), _str(s, "key", w), _str(s, "code_digest", w),
                                _str(s, "arm", w, False), seed, _str(s, "test_set", w, False)))
    datasets = []
    for i, d in enumerate(_list(doc, "datasets", where)):
        w = f"{where}.datasets[{i}]"
        role = _str(d, "role", w)
        datasets.append(DatasetRecord(role, _str(d, "id", w), _str(d, "name", w, False),
                                      _str(d, "label", w, role == "test_set"), _str(d, "step", w, False)))
    synthesis = doc.get("synthesis")
    synthesis_real = None
    if synthesis is not None:
        if not isinstance(synthesis, Mapping):
            raise InvalidArgument(f"{where}.synthesis must be an object")
        if synthesis.get("real") is not None:
            synthesis_real = _count(synthesis, "real", f"{where}.synthesis")
    arms = []
    for i, a in enumerate(_list(doc, "arms", where)):
        w = f"{where}.arms[{i}]"
        overrides = a.get("segmenter") or {}
        if not isinstance(overrides, Mapping):
            raise InvalidArgument(f"{w}.segmenter must be an object of overridden settings")
        arms.append(ArmRecord(_str(a, "name", w), _count(a, "real", w), _count(a, "composite", w), _count(a, "gan", w),
                              dict(overrides)))
    budget = doc.get("budget")
    if budget is not None and not isinstance(budget, Mapping):
        raise InvalidArgument(f"{where}.budget must be an object")
    header = {k: _str(doc, k, where, False) for k in ("run_id", "plan", "plan_sha256", "code_version")}
    return Provenance(doc, steps, datasets, synthesis_real, arms, dict(budget) if budget is not None else None, **header)


def describe_overrides(overrides: Mapping[str, Any]) -> str:
    """Per-arm segmenter overrides in one line ("epochs=5, lr=0.01"; "" for none)."""
    return ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(overrides.items()))
