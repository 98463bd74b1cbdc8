"""Every benchmark, one table (figure | value | conditions), bench/results.json.

    .venv/bin/python bench/run_all.py [--quick] [--only compositor,segmenter] [--out bench/results.json]

What `make bench` runs. Each benchmark runs in its own process with the sizes below (chosen
so the whole set takes under 15 minutes on a quiet 2-core machine; --quick is a smoke run
of a few minutes) and writes its figures as JSON; this script merges them, prints one table
with every figure's conditions, the checks the run evaluated, and writes the JSON file
with the machine's description. A failing benchmark is reported and the others still run
(the exit status is then 1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import REPO, machine, print_table

BENCH = Path(__file__).resolve().parent

#: name → (script, arguments for `make bench`, arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "import": ("bench_import.py", ["--count", "200"], ["--count", "50"]),
    "compositor": ("bench_compositor.py", ["--count", "3000", "--repeats", "2", "--s3-count", "300"],
                   ["--count", "300", "--repeats", "1", "--s3-count", "100", "--images", "200",
                    "--backgrounds", "60"]),
    "gan": ("bench_gan.py", ["--skip-isic"], ["--skip-isic"]),
    "evaluator": ("bench_evaluator.py", ["--images", "1000", "--repeats", "3"], ["--images", "200", "--repeats", "1"]),
    "orchestrator": ("bench_orchestrator.py", ["--count", "40", "--iterations", "8"],
                     ["--count", "24", "--iterations", "4"]),
    # The thesis configuration costs ~30 s per image here: its batch is capped at 4 (memory
    # allows ~7; per-image throughput on a CPU hardly depends on it) to stay within 15 minutes.
    "segmenter": ("bench_segmenter.py", ["--thesis-max-batch", "4"], ["--quick"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (minutes)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    results, failures = [], []
    start = time.perf_counter()
    info = machine()
    print(f"machine: {info}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        for name in names:
            script, full, quick = BENCHMARKS[name]
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(BENCH / script), *(quick if args.quick else full), "--json", str(out)]
            print(f"\n$ {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            code = subprocess.call(cmd, cwd=REPO, env=env)
            seconds = time.perf_counter() - t0
            if code != 0 or not out.exists():
                failures.append(f"{name} (exit {code})")
                results.append({"bench": name, "seconds": round(seconds, 1), "figures": [], "checks": [],
                                "notes": [f"FAILED with exit code {code}"]})
                continue
            r = json.loads(out.read_text())
            r["seconds"] = round(seconds, 1)
            results.append(r)
    total = time.perf_counter() - start
    others = sorted(p.name for p in BENCH.glob("bench_*.py") if p.name not in {b[0] for b in BENCHMARKS.values()})
    if others:  # nothing silently left out: scripts without a row here run on their own
        results.append({"bench": "run_all", "seconds": 0.0, "figures": [], "checks": [],
                        "notes": [f"not part of this table (run them on their own): {', '.join(others)}"]})
    timings = ", ".join(f"{r['bench']} {r['seconds']:.0f} s" for r in results)
    print(f"\n== all benchmarks: {total / 60:.1f} min ({timings})")
    print_table(results)
    document = {"machine": info, "quick": args.quick, "seconds": round(total, 1), "benchmarks": results}
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"written: {args.out}")
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
