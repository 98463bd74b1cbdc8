"""`make gpu-check` on a machine without CUDA: the CPU mode at tiny size runs what can run on
CPU, says what it skipped and why, and writes its two reports; one failing section does not
stop the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def test_cpu_mode_runs_the_cpu_sections_and_names_the_skipped_ones(tmp_path: Path) -> None:
    # ddp is left out here: tests/integration/test_ddp.py launches torchrun itself.
    sections = "environment,segmenter,data_path,gan,isic,demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu", "--sections", sections,
                          "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (doc["mode"], doc["tiny"]) == ("cpu", True)
    status = {name: s["status"] for name, s in doc["sections"].items()}
    assert status == {"environment": "ok", "segmenter": "ok", "data_path": "ok", "gan": "ok",
                      "isic": "skipped", "demo": "skipped"}
    assert "CUDA only" in doc["sections"]["isic"]["note"] and "make demo" in doc["sections"]["demo"]["note"]
    segmenter = doc["sections"]["segmenter"]["results"]
    assert [r["images_per_s"] > 0 for r in segmenter["runs"]] == [True]
    assert segmenter["skipped"] == "bf16 AMP and channels_last: CUDA only"
    assert segmenter["inference"]["fp32"]["images_per_s"] > 0
    data = doc["sections"]["data_path"]["results"]
    assert data["decode_images_per_s"] > 0 and data["batches"]["2"] > 0 and data["cache_device"] == "cpu"
    gan = doc["sections"]["gan"]["results"]
    assert gan["train_pairs_per_s"]["batch 1, fp32"] > 0 and gan["generate_images_per_s"] > 0
    report = (tmp_path / "gpu-check.md").read_text()
    assert "| isic | skipped |" in report and "| segmenter | ok |" in report
    assert "skipped: isic (CUDA only" in run.stdout


def test_a_failing_section_is_reported_and_the_next_one_runs(tmp_path: Path) -> None:
    check = gpu_check.Check(cuda=False, tiny=True, deadline=float("inf"), out=tmp_path, isic=None)

    def broken() -> dict:
        raise ValueError("no such thing")

    def skipped() -> dict:
        raise gpu_check.Skipped("not here")

    gpu_check.run_section(check, "first", broken)
    gpu_check.run_section(check, "second", skipped)
    gpu_check.run_section(check, "third", lambda: {"figure": 1.5})
    doc = json.loads((tmp_path / "gpu-check.json").read_text())["sections"]
    assert [(n, s["status"], s["note"]) for n, s in doc.items()] == [
        ("first", "failed", "ValueError: no such thing"), ("second", "skipped", "not here"), ("third", "ok", "")]
    assert "ValueError: no such thing" in doc["first"]["results"]["traceback"]
    assert doc["third"]["results"] == {"figure": 1.5}
    assert "- **figure**: 1.5" in (tmp_path / "gpu-check.md").read_text()
