"""Every setting has one default: the service's config dataclass. The proto documents it
("Default: VALUE." in the field's comment) and this test holds the two together, so a
default can't drift between the proto, the code and the plan."""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

import pytest
import yaml

from services.common.config import config_fields, config_from_proto, config_to_mapping, config_to_proto
from tests.conftest import REPO

PROTO_DIR = REPO / "protos" / "synthaug" / "v1"

#: (proto file, message, config dataclass "module:Class", request fields that are not settings)
CONFIG_MESSAGES = [
    ("compositor.proto", "ComposeParams", "services.compositor.config:ComposeParams", ()),
    ("compositor.proto", "ExtractForegroundsRequest", "services.compositor.config:ForegroundParams", ("dataset", "split")),
    ("compositor.proto", "HarvestBackgroundsRequest", "services.compositor.config:BackgroundParams", ("dataset", "split", "image_prefix", "seed")),
    ("gan.proto", "GanConfig", "services.gan.config:GanConfig", ()),
    ("gan.proto", "GanGenerateRequest", "services.gan.config:GenerateConfig", ("checkpoint", "masks", "split", "seed", "name")),
    ("segmenter.proto", "SegmenterConfig", "services.segmenter.config:SegmenterConfig", ()),
    ("segmenter.proto", "PredictRequest", "services.segmenter.config:PredictConfig", ("checkpoint", "dataset", "split")),
    ("segmenter.proto", "FeaturesRequest", "services.segmenter.config:FeaturesConfig", ("checkpoint", "extractor", "weights", "sets", "seed")),
    ("evaluator.proto", "EvaluateRequest", "services.evaluator.config:EvalConfig", ("truth", "split", "predictions", "seed")),
    ("evaluator.proto", "ReportRequest", "services.evaluator.config:ReportConfig", ("runs", "truth", "split", "title", "prefix", "seed", "test_sets", "contact_sources", "provenance_json", "quality")),
    ("evaluator.proto", "QualityRequest", "services.evaluator.config:QualityConfig", ("features", "feature_space", "sources", "seed")),
]

_FIELD = re.compile(r"^\s*(optional\s+|repeated\s+)?([\w.<>, ]+?)\s+(\w+)\s*=\s*\d+\s*;")


def documented_fields(proto: str, message: str) -> dict[str, tuple[str, str | None]]:
    """field → (modifier, text after 'Default:' in its comment, or None)."""
    text = (PROTO_DIR / proto).read_text()
    start = re.search(rf"^message {message} \{{", text, re.M)
    assert start, f"message {message} not in {proto}"
    out: dict[str, tuple[str, str | None]] = {}
    comment: list[str] = []
    depth = 0
    for line in text[start.end():].splitlines():
        stripped = line.strip()
        if stripped.startswith("}") and depth == 0:
            break
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        m = _FIELD.match(line)
        if m:
            doc = " ".join(comment)
            d = re.search(r"Default: (.+?)(?:\.(?:\s|$)|\s+\(|$)", doc)
            out[m.group(3)] = ((m.group(1) or "").strip(), d.group(1).strip() if d else None)
        comment = []
    return out


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _parse_default(text: str) -> Any:
    return None if text == "unset" else yaml.safe_load(text)


def _message_type(proto: str, message: str) -> Any:
    module = importlib.import_module(f"synthaug.v1.{proto.removesuffix('.proto')}_pb2")
    return getattr(module, message)


@pytest.mark.parametrize(("proto", "message", "config", "exclude"), CONFIG_MESSAGES, ids=[m[1] for m in CONFIG_MESSAGES])
def test_documented_defaults_equal_the_dataclass(proto: str, message: str, config: str, exclude: tuple[str, ...]) -> None:
    cls = _load(config)
    defaults = config_to_mapping(cls())
    msg_type = _message_type(proto, message)
    fields = documented_fields(proto, message)
    problems = []
    for name, (_modifier, doc) in fields.items():
        if name in exclude:
            continue
        if name not in config_fields(cls):
            problems.append(f"{message}.{name}: no field {name} in {config}")
            continue
        descriptor = msg_type.DESCRIPTOR.fields_by_name[name]
        scalar = descriptor.message_type is None and descriptor.enum_type is None and descriptor.type != descriptor.TYPE_STRING
        if scalar and not descriptor.has_presence:
            problems.append(f"{message}.{name}: a number or bool setting must be `optional` (0/false may be a real value)")
        if doc is None:
            problems.append(f"{message}.{name}: comment has no 'Default: VALUE.'")
            continue
        documented = _parse_default(doc)
        actual = defaults[name]
        if isinstance(actual, dict) and set(actual) == {"min", "max"}:
            actual = [actual["min"], actual["max"]]
        if documented != actual and not (isinstance(actual, float) and isinstance(documented, (int, float)) and float(documented) == actual):
            problems.append(f"{message}.{name}: proto says default {documented!r}, {config} has {actual!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("proto", "message", "config", "exclude"), CONFIG_MESSAGES, ids=[m[1] for m in CONFIG_MESSAGES])
def test_round_trip_through_the_message(proto: str, message: str, config: str, exclude: tuple[str, ...]) -> None:
    """An empty message gives the defaults; the defaults sent explicitly come back equal."""
    cls = _load(config)
    msg_type = _message_type(proto, message)
    assert config_from_proto(cls, msg_type(), exclude=exclude) == cls()
    sent = config_to_proto(cls(), msg_type)
    assert config_from_proto(cls, sent, exclude=exclude) == cls()


def test_config_modules_do_not_import_torch() -> None:
    """Plans are validated with these modules alone: loading one must not cost a torch import."""
    import subprocess
    import sys

    modules = sorted({c.partition(":")[0] for _, _, c, _ in CONFIG_MESSAGES} | {"orchestrator.plan"})
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_every_config_is_a_dataclass_with_validate() -> None:
    for _, _, config, _ in CONFIG_MESSAGES:
        cls = _load(config)
        assert dataclasses.is_dataclass(cls), config
        assert callable(getattr(cls, "validate", None)), f"{config} has no validate()"
