"""Orchestration overhead of a small plan, from the run's own summary, and a cached re-run.

    .venv/bin/python bench/bench_orchestrator.py [--count 40] [--iterations 8] [--json PATH]

The plan is examples/demo.yaml scaled down (fewer, smaller images, one seed, a few training
steps), run with `synthaug run` in embedded mode (the four services on loopback, a fresh
file:// store). The runner records per step the time a step waited for a free slot
(queued), went from the orchestrator's decision to the service starting it (dispatch), ran
in the service (compute) and had its result handled (result); overhead is dispatch + result
summed over the steps (steps run in parallel, so it is compared with the summed step time,
not the wall time). The plan is then run again: every step is cached, and that run's own
wall time is reported (the services' start-up, outside the run, separately).
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import REPO, Results, load_note

from services.common.store import FileStore

#: Per-step timing keys the runner writes (summary.json "steps"), and the run-level total.
STEP_KEYS = ("queued_seconds", "dispatch_seconds", "compute_seconds", "result_seconds")


def small_plan(count: int, iterations: int) -> dict[str, Any]:
    """examples/demo.yaml with fewer images, one seed and a few optimiser steps."""
    plan = copy.deepcopy(yaml.safe_load((REPO / "examples" / "demo.yaml").read_text()))
    plan["name"] = "bench-overhead"
    plan["seeds"] = plan["seeds"][:1]
    plan["dataset"]["demo"]["count"] = count
    # the synthetic sources and every arm use this many real images; 12 is the least the
    # quality step scores (half of them, with 5 nearest neighbours)
    real = max(12, count // 3)
    if real > count * plan["split"]["train"]:
        raise ValueError(f"--count {count} leaves fewer than {real} training images; use at least {int(real / plan['split']['train']) + 1}")
    plan["synthesis"]["real"] = real
    for arm in plan["arms"]:
        for source in ("real", "composite", "gan"):
            if source in arm:
                arm[source] = real
        arm["name"] = arm["name"].rsplit("-", 1)[0] + f"-{real}"
    plan["gan"]["config"].update(n_epochs=1, n_epochs_decay=1)
    plan["segmenter"]["budget"]["iterations"] = iterations
    plan["segmenter"]["config"]["eval_every"] = iterations
    plan["segmenter"]["config"]["warmup_iters"] = min(plan["segmenter"]["config"].get("warmup_iters", 10), iterations)
    plan["evaluation"]["n_bootstrap"] = 100
    plan["evaluation"]["overlay_images"] = 2
    return plan


def run_plan(plan_path: Path, store_url: str) -> float:
    """`synthaug run` in a fresh process; returns its wall time (services' start-up included)."""
    exe = Path(sys.executable).parent / "synthaug"
    cmd = [str(exe) if exe.exists() else "synthaug", "run", str(plan_path), "--store", store_url, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"synthaug run failed with exit code {proc.returncode}")
    return wall


def latest_summary(store: FileStore) -> dict[str, Any]:
    """The summary of the run written last (a re-run of the same plan on the same code is
    the same run; on changed code it is another run, with only the changed steps to do)."""
    keys = [k for k in store.list("runs/") if k.endswith("/summary.json") and "/attempts/" not in k]
    if not keys:
        raise RuntimeError("no run summary in the store")
    return store.get_json(max(keys, key=lambda k: (store.root / k).stat().st_mtime_ns))


def overhead(summary: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Run-level totals, from the summary's own keys when the runner writes them, else
    computed from what it does write; the second value says which."""
    steps = summary.get("steps", [])
    if all(k in s for s in steps for k in STEP_KEYS) and "overhead_seconds" in summary:
        totals = {k: float(summary.get(k, sum(s[k] for s in steps))) for k in STEP_KEYS}
        totals["overhead_seconds"] = float(summary["overhead_seconds"])
        totals["step_seconds"] = float(summary.get("step_seconds", totals["dispatch_seconds"]
                                                   + totals["compute_seconds"] + totals["result_seconds"]))
        return totals, "from the runner's per-step timing (summary.json)"
    wall, compute = float(summary["wall_seconds"]), float(summary.get("compute_seconds", 0.0))
    totals = {"overhead_seconds": max(0.0, wall - compute), "step_seconds": wall}
    return totals, "summary.json has no per-step timing: overhead = wall time with no step computing"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=40, help="demo images")
    ap.add_argument("--iterations", type=int, default=8, help="optimiser steps per arm")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = Results("orchestrator")
    print(f"== orchestrator ({load_note()})", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-orchestrator-"))
    try:
        plan = small_plan(args.count, args.iterations)
        plan_path = tmp / "plan.yaml"
        plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
        store = FileStore(tmp / "store")
        arms = ", ".join(a["name"] for a in plan["arms"])
        size = plan.get("image_size", plan["dataset"]["demo"].get("size"))
        what = (f"demo plan scaled down: {args.count} images at {size} px, arms {arms}, 1 seed, "
                f"{args.iterations} steps per arm; embedded services, file:// store, "
                f"{len(os.sched_getaffinity(0))} cores")
        wall = run_plan(plan_path, store.url)
        first = latest_summary(store)
        totals, source = overhead(first)
        n = first.get("executed_steps", 0)
        cond = f"{what}; {n} steps executed; {source}; {load_note()}"
        res.add("run wall time (steps only)", first["wall_seconds"], "s", cond)
        res.add("`synthaug run` wall time (services' start-up included)", wall, "s", cond)
        res.add("summed step time (dispatch + compute + result)", totals["step_seconds"], "s", cond)
        if "queued_seconds" in totals:
            res.add("summed time steps waited for a free slot (not in step time)", totals["queued_seconds"], "s", cond)
            res.add("summed dispatch time (decision → service starts the job)", totals["dispatch_seconds"], "s", cond)
            res.add("summed result handling time", totals["result_seconds"], "s", cond)
        res.add("orchestration overhead", totals["overhead_seconds"], "s", cond)
        res.add("orchestration overhead, share of summed step time",
                100 * totals["overhead_seconds"] / max(totals["step_seconds"], 1e-9), "%", cond)

        wall = run_plan(plan_path, store.url)
        again = latest_summary(store)
        totals, source = overhead(again)
        cond = (f"same plan and store again: {again.get('executed_steps', '?')} steps executed, "
                f"{again.get('cached_steps', '?')} cached; {source}; {load_note()}")
        res.add("cached re-run: run wall time", again["wall_seconds"], "s", cond)
        res.add("cached re-run: `synthaug run` wall time (services' start-up included)", wall, "s", cond)
        res.add("cached re-run: orchestration overhead (reading step records)", totals["overhead_seconds"], "s", cond)
        same_run = again.get("run_id") == first.get("run_id")
        res.check("cached re-run executes no step", again.get("executed_steps", -1) == 0,
                  f"{again.get('executed_steps')} executed, {again.get('cached_steps')} cached"
                  + ("" if same_run else "; the code changed between the runs, so it was another run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
