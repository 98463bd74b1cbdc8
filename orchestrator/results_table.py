"""The results of a run as a terminal table no wider than 100 columns.

Built from the report's `results.csv` (and `comparisons.csv` for the difference to the
baseline), the files a researcher redoes the statistics from; the Markdown, LaTeX and HTML
tables stay in the report. Numbers are the report's: means over seeds, IoU's 95% BCa
bootstrap interval over test images, the paired per-image IoU difference against the
baseline with its Holm-adjusted Wilcoxon p.
"""
from __future__ import annotations

import csv
import io
from typing import Mapping

from rich import box
from rich.console import Console
from rich.table import Table

#: The widest the table may be, whatever the terminal.
MAX_WIDTH = 100
#: Report files the table is built from (what a remote client fetches to print it).
TABLE_FILES = ("results.csv", "comparisons.csv")


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _number(value: str | None, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    return f"{float(value):.{digits}f}"


def _interval(low: str | None, high: str | None) -> str:
    if not low or not high:
        return ""
    return f" [{float(low):.3f}, {float(high):.3f}]"


def _p(value: str | None) -> str:
    if value is None or value == "":
        return "–"
    p = float(value)
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _difference_cells(comparison: Mapping[str, str] | None, is_baseline: bool) -> list[str]:
    """ΔIoU and p of an arm (the baseline says so; an arm without a comparison shows –)."""
    if comparison is None:
        return ["baseline", ""] if is_baseline else ["–", "–"]
    return [f"{float(comparison['mean_difference']):+.3f}", _p(comparison.get("p_holm"))]


def results_table(results_csv: str, comparisons_csv: str = "") -> Table:
    """One row per arm and test set: seeds, mean IoU [95% CI over images], ES (the mean of IoU
    and F1, so F1 = 2·ES − IoU), mask AP, and the IoU difference to the baseline with its
    Holm-adjusted p. The test-set column appears when there are several."""
    differences: dict[tuple[str, str], dict[str, str]] = {}
    baseline = ""
    for row in _rows(comparisons_csv) if comparisons_csv else []:
        if row.get("metric") == "iou":
            differences[(row["arm"], row["test_set"])] = row
            baseline = row.get("baseline", baseline)
    rows = _rows(results_csv)
    many_sets = len({r["test_set"] for r in rows}) > 1
    note = "IoU [95% CI]: BCa bootstrap over test images"
    if baseline:
        note += f"; ΔIoU: paired per-image difference to {baseline}, p: Wilcoxon signed-rank, Holm-adjusted"
    table = Table(title="Results (means over seeds)", caption=note, caption_justify="left", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    # Names wrap; numbers never do (the numeric columns alone take at most 70 columns).
    table.add_column("arm", overflow="fold", max_width=24)
    if many_sets:
        table.add_column("test set", overflow="fold", max_width=16)
    for name in ("seeds", "IoU [95% CI]", "ES", "mask AP", *(("ΔIoU", "p") if differences else ())):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        cells = [r["arm"]]
        if many_sets:
            cells.append(r["test_set"])
        cells += [
            r.get("n_seeds", ""),
            _number(r.get("mean_iou")) + _interval(r.get("iou_ci_low"), r.get("iou_ci_high")),
            _number(r.get("es")),
            _number(r.get("mask_ap")),
        ]
        if differences:
            cells += _difference_cells(differences.get((r["arm"], r["test_set"])), r["arm"] == baseline)
        table.add_row(*cells)
    return table


def print_results(console: Console, files: Mapping[str, bytes]) -> bool:
    """Print the table from a report's files (name → bytes); False when there is no results.csv."""
    results = files.get("results.csv")
    if results is None:
        return False
    comparisons = files.get("comparisons.csv", b"")
    console.print(results_table(results.decode(), comparisons.decode()), width=min(console.width, MAX_WIDTH))
    return True
