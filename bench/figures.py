"""What every benchmark reports: figures with their conditions, checks of stated targets,
one table, one JSON file.

A figure is a measured value with the conditions it was measured under (sizes, workers,
store, device, threads), so that no number is quoted without them. A check is a target the
run itself evaluates ("≥ 2× the thesis loop per worker"); a benchmark prints no target it
does not check. Each bench script builds a `Results`, prints its table and, given
`--json PATH`, writes it there; `bench/run_all.py` (what `make bench`
runs) merges them into one table and bench/results.json.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ISIC = Path(os.environ.get("SYNTHAUG_ISIC", REPO.parent / "shared" / "data" / "isic2018-256"))


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    conditions: str

    def text(self) -> str:
        v = self.value
        if v != v:  # NaN: not measured
            return "n/a"
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 0.1 else 4
        return f"{v:.{digits}f} {self.unit}".strip()


@dataclass
class Check:
    """A target evaluated by the run: `met` is what the measured figures say."""

    name: str
    met: bool
    detail: str


@dataclass
class Results:
    bench: str
    figures: list[Figure] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def add(self, name: str, value: float, unit: str, conditions: str) -> Figure:
        fig = Figure(name, float(value), unit, conditions)
        self.figures.append(fig)
        print(f"  {name}: {fig.text()}  [{conditions}]", flush=True)
        return fig

    def check(self, name: str, met: bool, detail: str) -> Check:
        c = Check(name, bool(met), detail)
        self.checks.append(c)
        print(f"  check {name}: {'MET' if met else 'NOT MET'} ({detail})", flush=True)
        return c

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def to_json(self) -> dict[str, Any]:
        return {"bench": self.bench, "seconds": round(time.time() - self.started, 1),
                "figures": [asdict(f) for f in self.figures], "checks": [asdict(c) for c in self.checks],
                "notes": self.notes}

    def finish(self, json_path: Path | None) -> None:
        """Print this bench's table; write its JSON when asked."""
        print_table([self.to_json()])
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(self.to_json(), indent=1))


def machine() -> dict[str, Any]:
    """Where the figures come from (goes into results.json and the table's header)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cpu_cores": cores, "load_average_1min": round(os.getloadavg()[0], 2),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def load_note() -> str:
    """The load average before a measurement: other work on the machine makes figures noisy."""
    return f"load {os.getloadavg()[0]:.1f} on {machine()['cpu_cores']} cores"


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [("figure", "value", "conditions")]
    for r in results:
        for f in r["figures"]:
            rows.append((f"{r['bench']}: {f['name']}", Figure(**f).text(), f["conditions"]))
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in ((0, 60), (1, 18))]
    line = f"+-{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * 20}"
    print(line)
    for k, (name, value, cond) in enumerate(rows):
        print(f"| {name:<{widths[0]}} | {value:>{widths[1]}} | {cond}")
        if k == 0:
            print(line)
    print(line)
    checks = [(r["bench"], c) for r in results for c in r["checks"]]
    if checks:
        print("checks (targets this run evaluated):")
        for bench, c in checks:
            print(f"  [{'MET' if c['met'] else 'NOT MET'}] {bench}: {c['name']} ({c['detail']})")
    notes = [(r["bench"], n) for r in results for n in r.get("notes", [])]
    for bench, n in notes:
        print(f"  note ({bench}): {n}")
    sys.stdout.flush()


def import_isic(store: Any, folder: Path, limit: int | None = None, workers: int = 1,
                options: Any = None) -> Any:
    """An ISIC-style folder (images/*.jpg, masks/*_segmentation.png) imported as a user would
    (`synthaug import masks`), its first ``limit`` images. Default options: the JPEG bytes
    kept as they are, no splits."""
    from ingest.importers import ImportOptions, MaskOptions, import_masks
    from services.common.datasets import Dataset

    options = (MaskOptions(pattern="{stem}_segmentation.png"),
               options or ImportOptions(size=None, split=None, workers=workers))
    if limit is None:
        summary = import_masks(store, folder / "images", folder / "masks", *options)
        return Dataset.load(store, summary.dataset_id)
    with tempfile.TemporaryDirectory(prefix="isic-subset-") as tmp:
        (Path(tmp) / "images").mkdir()
        for path in sorted((folder / "images").glob("*.jpg"))[:limit]:
            shutil.copyfile(path, Path(tmp) / "images" / path.name)
        summary = import_masks(store, Path(tmp) / "images", folder / "masks", *options)
    return Dataset.load(store, summary.dataset_id)
