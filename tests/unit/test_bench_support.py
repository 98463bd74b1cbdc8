"""The benchmarks' own machinery: the thesis' composition loop they compare against, the
figures table and JSON, and the orchestration-overhead plan and arithmetic. (Speeds are
never asserted.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import bench_orchestrator  # noqa: E402
import thesis_compositor  # noqa: E402
from figures import Results, print_table  # noqa: E402

from orchestrator.plan import parse_plan  # noqa: E402


def _assets(tmp_path: Path) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    fgs, bgs = [], []
    for i in range(3):  # BGRA lesions: an opaque disc in a transparent square
        fg = np.zeros((40 + 10 * i, 50, 4), np.uint8)
        fg[..., :3] = rng.integers(0, 120, 3)
        cv2.circle(fg, (25, 20 + 5 * i), 15, (60, 40, 30, 255), -1)
        fgs.append(str(tmp_path / f"fg{i}.png"))
        cv2.imwrite(fgs[-1], fg)
    for i in range(2):
        bgs.append(str(tmp_path / f"bg{i}.png"))
        cv2.imwrite(bgs[-1], np.full((64, 64, 3), 200 - 20 * i, np.uint8))
    return fgs, bgs


@pytest.mark.parametrize("kind", ["pil", "cv2"])
def test_thesis_loop_writes_an_image_and_one_white_mask_per_composite(tmp_path: Path, kind: str) -> None:
    fgs, bgs = _assets(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    job = thesis_compositor.LoopJob(fgs, bgs, str(out), 2, 7, seed=3, size=64, objects=3)
    assert thesis_compositor.LOOPS[kind](job) == 5
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i:06d}.png" for i in range(2, 7)] + [f"{i:06d}_mask.png" for i in range(2, 7)])
    for i in range(2, 7):
        image = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / f"{i:06d}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}  # one merged white mask, no instances
        assert (image[mask == 255] != image[0, 0]).any()  # lesions were pasted where the mask is white
    # The same job writes the same files (a seeded random.Random per job).
    again = tmp_path / "again"
    again.mkdir()
    thesis_compositor.LOOPS[kind](thesis_compositor.LoopJob(fgs, bgs, str(again), 2, 7, seed=3, size=64, objects=3))
    assert all((out / n).read_bytes() == (again / n).read_bytes() for n in names)


def test_results_json_and_table_carry_every_figure_with_its_conditions(tmp_path: Path, capsys) -> None:
    res = Results("demo")
    res.add("throughput", 1234.5, "images/s", "2 workers, file:// store")
    res.add("ratio", 2.345, "×", "same run")
    res.check("≥ 2× the baseline", False, "1.9×")
    res.finish(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(f["name"], f["value"], f["unit"], f["conditions"]) for f in doc["figures"]] == [
        ("throughput", 1234.5, "images/s", "2 workers, file:// store"), ("ratio", 2.345, "×", "same run")]
    assert doc["checks"] == [{"name": "≥ 2× the baseline", "met": False, "detail": "1.9×"}]
    capsys.readouterr()
    print_table([doc])
    table = capsys.readouterr().out
    assert "| demo: throughput" in table and "1234 images/s" in table and "2 workers, file:// store" in table
    assert "2.35 ×" in table and "[NOT MET] demo: ≥ 2× the baseline (1.9×)" in table


def test_overhead_plan_is_a_valid_scaled_down_demo_plan() -> None:
    plan = bench_orchestrator.small_plan(count=24, iterations=4)
    parsed = parse_plan(plan, "bench plan")  # the orchestrator accepts it
    assert parsed.name == "bench-overhead" and list(parsed.seeds) == [0]
    assert plan["dataset"]["demo"]["count"] == 24
    assert [a["name"] for a in plan["arms"]] == ["real-12", "composite-12", "gan-12"]
    assert plan["segmenter"]["budget"]["iterations"] == plan["segmenter"]["config"]["eval_every"] == 4


def test_overhead_is_read_from_the_step_timing_or_computed_from_wall_time() -> None:
    steps = [{"queued_seconds": 1.0, "dispatch_seconds": 0.25, "compute_seconds": 10.0, "result_seconds": 0.5},
             {"queued_seconds": 0.0, "dispatch_seconds": 0.25, "compute_seconds": 6.0, "result_seconds": 0.0}]
    summary = {"steps": steps, "queued_seconds": 1.0, "dispatch_seconds": 0.5, "compute_seconds": 16.0,
               "result_seconds": 0.5, "overhead_seconds": 1.0, "step_seconds": 17.0, "wall_seconds": 12.0}
    totals, source = bench_orchestrator.overhead(summary)
    assert totals["overhead_seconds"] == 1.0 and totals["step_seconds"] == 17.0 and totals["queued_seconds"] == 1.0
    assert "per-step timing" in source
    totals, source = bench_orchestrator.overhead({"steps": [{"label": "x"}], "wall_seconds": 12.0, "compute_seconds": 11.5})
    assert totals == {"overhead_seconds": 0.5, "step_seconds": 12.0} and "no per-step timing" in source
