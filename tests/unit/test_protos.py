"""The committed generated code is exactly what `make protos` produces."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    gen = _load_generator()
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed_dir = REPO / "synthaug" / "v1"
    committed = {p.name: p.read_bytes() for p in committed_dir.iterdir() if p.is_file() and p.suffix in (".py", ".pyi", ".typed")}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"synthaug/v1 is stale for {stale}: run `make protos` and commit"
    # Every proto has messages, stubs and type stubs.
    for proto in (REPO / "protos" / "synthaug" / "v1").glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert proto.stem + suffix in fresh


def test_job_state_zero_value_is_unspecified() -> None:
    from synthaug.v1 import common_pb2

    assert common_pb2.JobState.Name(0) == "JOB_STATE_UNSPECIFIED"
