"""The `synthaug` CLI without services: group help, the shipped demo plan, run listings,
the results table, remote errors."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from orchestrator.cli import main
from orchestrator.commands import example_plan_text, remote_error
from orchestrator.results_table import MAX_WIDTH, print_results
from orchestrator.runs import stored_runs
from services.common.cli_support import exit_code
from services.common.store import FileStore
from synthaug.v1 import common_pb2
from tests.run_records import recorded_run

S = common_pb2


@pytest.mark.parametrize("group", ["import", "dataset", "store"])
def test_a_command_group_without_subcommand_prints_its_own_help(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: synthaug {group} ")
    assert "SUBCOMMAND" in err and "Measure how synthetic" not in err  # not the top-level help


def test_no_command_prints_the_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Measure how synthetic" in capsys.readouterr().err


def test_shipped_plans_come_from_package_data_first_then_the_checkout(tmp_path: Path) -> None:
    installed = tmp_path / "site" / "synthaug"
    (installed / "examples").mkdir(parents=True)
    (installed / "examples" / "demo.yaml").write_text("name: packaged\n")
    checkout = tmp_path / "checkout" / "examples"
    checkout.mkdir(parents=True)
    (checkout / "demo.yaml").write_text("name: checkout\n")

    text, source, folder = example_plan_text("demo.yaml", package=installed, checkout=checkout)
    assert text == "name: packaged\n" and "package data" in source and folder == installed / "examples"
    (installed / "examples" / "demo.yaml").unlink()
    text, source, folder = example_plan_text("demo.yaml", package=installed, checkout=checkout)
    assert text == "name: checkout\n" and source == str(checkout / "demo.yaml") and folder == checkout
    (checkout / "demo.yaml").unlink()
    with pytest.raises(Exception, match="found neither as package data"):
        example_plan_text("demo.yaml", package=installed, checkout=checkout)


def test_demo_uses_the_store_synthaug_store_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHAUG_STORE", f"file://{tmp_path}/from-env")
    assert main(["demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"store file://{tmp_path}/from-env" in out and "plan demo" in out
    assert (tmp_path / "from-env").is_dir() and not (tmp_path / ".synthaug").exists()
    assert main(["demo", "--dry-run", "--store", f"file://{tmp_path}/flag"]) == 0  # the flag wins
    assert f"store file://{tmp_path}/flag" in capsys.readouterr().out


def test_status_lists_running_and_finished_runs_newest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path / "store")
    old = recorded_run(store, "old", started=1_000_000.0, finished=True)
    new = recorded_run(store, "new", started=2_000_000.0, finished=False, done_steps=3)
    runs = stored_runs(store)
    assert [r.run.id for r in runs] == [new, old]
    running, finished = runs
    assert (running.state, running.steps_done, running.finished, running.attempt) == (S.JOB_STATE_RUNNING, 3, 0.0, 1)
    assert running.steps_total == finished.steps_total == finished.steps_done
    assert (finished.state, finished.finished, finished.last_succeeded_attempt) == (S.JOB_STATE_SUCCEEDED, 1_000_012.5, 1)

    assert main(["status", "--store", store.url]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if new in line or old in line]
    assert len(lines) == 2 and new in lines[0] and "running" in lines[0] and f"3/{running.steps_total}" in lines[0]
    assert "succeeded" in lines[1] and "12 s" in lines[1]
    assert main(["status", "--store", store.url, "--limit", "1"]) == 0
    assert old not in capsys.readouterr().out


def _results_csv(rows: list[dict[str, object]]) -> bytes:
    fields = ["arm", "test_set", "n_seeds", "n_images", "mean_iou", "iou_ci_low", "iou_ci_high", "mean_f1", "es", "mask_ap"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_results_table_fits_100_columns_with_long_names_and_shows_the_numbers() -> None:
    rows = [{"arm": arm, "test_set": test, "n_seeds": 3, "n_images": 150, "mean_iou": 0.71234, "iou_ci_low": 0.69, "iou_ci_high": 0.733,
             "mean_f1": 0.8, "es": 0.756, "mask_ap": 0.4}
            for arm in ("real-1000", "hybrid-composite-7000-gan-7000-with-long-name") for test in ("internal", "ham10000-external-dermoscopy")]
    comparisons = (b"test_set,arm,baseline,metric,mean_difference,p_value,p_holm\n"
                   b"internal,hybrid-composite-7000-gan-7000-with-long-name,real-1000,iou,0.0123,0.004,0.0004\n"
                   b"internal,hybrid-composite-7000-gan-7000-with-long-name,real-1000,f1,0.5,0.5,0.5\n")
    for width in (200, 100, 80):
        out = io.StringIO()
        assert print_results(Console(file=out, width=width), {"results.csv": _results_csv(rows), "comparisons.csv": comparisons})
        lines = out.getvalue().splitlines()
        assert max(len(line) for line in lines) <= min(width, MAX_WIDTH)
        text = out.getvalue()
        assert text.count("0.712 [0.690, 0.733]") == 4 and "+0.012" in text and "<0.001" in text and "baseline" in text
        assert "test set" in text or width < MAX_WIDTH  # two test sets: the column is there (its header wraps below 100)
    out = io.StringIO()
    assert not print_results(Console(file=out), {})  # no results.csv: nothing printed
    assert out.getvalue() == ""


@pytest.mark.parametrize(("code", "status", "words"), [
    (grpc.StatusCode.INVALID_ARGUMENT, 2, "arms[0].real"),
    (grpc.StatusCode.NOT_FOUND, 2, "arms[0].real"),
    (grpc.StatusCode.UNAVAILABLE, 1, "did not answer"),
    (grpc.StatusCode.UNAUTHENTICATED, 1, "SYNTHAUG_AUTH_TOKEN"),
])
def test_remote_errors_keep_their_code_for_the_exit_status(code: grpc.StatusCode, status: int, words: str) -> None:
    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return code

        def details(self) -> str:
            return "arms[0].real: must be ≥ 1"

    err = remote_error("localhost:50050", Failed())
    assert exit_code(err.code) == status and words in str(err) and "localhost:50050" in str(err)
