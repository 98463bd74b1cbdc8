"""`synthaug demo` end to end, as a newcomer runs it: procedural data, every service, a report."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.plan import load_plan
from orchestrator.runner import attempt_prefix
from orchestrator.runs import list_runs
from services.common.store import FileStore
from tests.conftest import REPO


@pytest.mark.slow
def test_demo_end_to_end_then_rerun_recomputes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_url = f"file://{tmp_path}/store"
    out = tmp_path / "report"
    assert main(["demo", "--store", store_url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    arms = [a.name for a in load_plan(REPO / "examples" / "demo.yaml").arms]
    # The terminal results table (from results.csv): a row per arm, no line over 100 columns.
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Results (means over seeds)"))
    table = lines[start : next(i for i in range(start, len(lines)) if lines[i].startswith("report: "))]
    for arm in arms:
        assert any(line.startswith(f"{arm} ") for line in table), f"{arm} missing from the results table"
    assert max(len(line) for line in table) <= 100
    assert (out / "index.html").is_file() and (out / "results.csv").is_file()
    assert "<img" in (out / "index.html").read_text()

    (run,) = list_runs(FileStore(tmp_path / "store"))
    assert run["state"] == "JOB_STATE_SUCCEEDED" and run["cached_steps"] == 0

    assert main(["demo", "--store", store_url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 steps executed" in printed
    store = FileStore(tmp_path / "store")
    (again,) = list_runs(store)
    assert again["executed_steps"] == 0 and again["cached_steps"] == run["executed_steps"]
    # The cached re-run is its own attempt: the record of the one that computed the steps stays.
    assert (again["attempt"], again["last_succeeded_attempt"]) == (2, 2)
    assert store.get_json(attempt_prefix(run["run_id"], 1) + "summary.json")["executed_steps"] == run["executed_steps"]
