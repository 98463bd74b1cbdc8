"""Report tables in every format a reader needs: HTML (through the page template), Markdown,
LaTeX (booktabs) and CSV (full precision, for redoing the statistics).

A column is (row key, header, format). Formatting is one function per kind, so the same
number reads the same in every format; LaTeX only escapes the text and swaps a few
characters for their math-mode spelling.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from services.evaluator.core.report_rows import MAX_LISTED_SEEDS

MISSING = "–"


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{x:.{digits}f}"


def _signed(x: Any, digits: int = 4) -> str:
    return MISSING if x is None else f"{x:+.{digits}f}"


def _ci(value: Any, digits: int = 3, signed: bool = False) -> str:
    if not value:
        return MISSING
    fmt = _signed if signed else _num
    return f"[{fmt(value[0], digits)}, {fmt(value[1], digits)}]"


def _p(x: Any) -> str:
    if x is None:
        return MISSING
    return "<0.0001" if x < 1e-4 else f"{x:.4f}" if x < 0.01 else f"{x:.3f}"


def _seeds(values: Any) -> str:
    if not values:
        return MISSING
    if len(values) > MAX_LISTED_SEEDS:
        return f"{len(values)} seeds (per-seed table)"
    return " / ".join(_num(v) for v in values)


def _count(x: Any) -> str:
    return MISSING if x is None else f"{round(x):,}".replace(",", " ")


def _percent(x: Any) -> str:
    return MISSING if x is None else f"{100 * x:.1f}%"


def _fd(x: Any) -> str:
    """Fréchet distances span orders of magnitude (tiny features vs Inception's 2048): 4 significant digits."""
    return MISSING if x is None else f"{x:.4g}"


FORMATS: dict[str, Callable[[Any], str]] = {
    "text": lambda x: MISSING if x is None or x == "" else str(x),
    "int": _count,
    "num": _num,
    "num4": lambda x: _num(x, 4),
    "ci": _ci,
    "signed": _signed,
    "signed_ci": lambda v: _ci(v, 4, signed=True),
    "p": _p,
    "seeds": _seeds,
    "percent": _percent,
    # A value formatted by the row's producer (e.g. "12.30 ± 1.20"), aligned as a number.
    "pre": lambda x: MISSING if x is None or x == "" else str(x),
    "fd": _fd,
}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str = "num"

    @property
    def align(self) -> str:
        return "l" if self.kind == "text" else "r"

    def cell(self, row: Mapping[str, Any]) -> str:
        if self.kind == "signed_ci":  # an interval kept as two columns in the rows
            low, high = row.get(f"{self.key}_low"), row.get(f"{self.key}_high")
            return FORMATS["signed_ci"]((low, high) if low is not None else None)
        return FORMATS[self.kind](row.get(self.key))


@dataclass(frozen=True)
class Table:
    """A table as text cells: what the HTML template, Markdown and LaTeX render."""

    headers: list[str]
    align: list[str]
    cells: list[list[str]]
    #: Row indices before which a group starts (a rule in LaTeX), e.g. a new test set.
    groups: list[int] = field(default_factory=list)


def make_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], group_by: str | None = None) -> Table:
    groups = []
    if group_by is not None:
        groups = [i for i in range(1, len(rows)) if rows[i].get(group_by) != rows[i - 1].get(group_by)]
    return Table([c.header for c in columns], [c.align for c in columns],
                 [[c.cell(r) for c in columns] for r in rows], groups)


# --- the report's tables --------------------------------------------------------------------

RESULTS = [
    Column("arm", "Arm", "text"), Column("test_set", "Test set", "text"), Column("n_seeds", "Seeds", "int"),
    Column("n_images", "Images", "int"), Column("mean_iou", "Mean IoU"), Column("iou_ci", "IoU 95% CI (images)", "ci"),
    Column("iou_seed_ci", "IoU 95% CI (seeds)", "ci"), Column("iou_per_seed", "IoU per seed", "seeds"),
    Column("std_iou", "Std IoU"), Column("mean_f1", "Mean F1"), Column("std_f1", "Std F1"), Column("es", "ES"),
    Column("es_ci", "ES 95% CI (images)", "ci"), Column("thresholded_jaccard", "Thr. Jaccard"),
    Column("mask_ap", "Mask AP"), Column("mask_ap_seed_ci", "Mask AP 95% CI (seeds)", "ci"),
    Column("lesion_recall", "Lesion recall"), Column("fp_per_image", "FP/image"),
]
#: The paper table: what fits a column width.
RESULTS_LATEX = [
    Column("test_set", "Test set", "text"), Column("arm", "Arm", "text"), Column("n_seeds", "Seeds", "int"),
    Column("mean_iou", "IoU"), Column("iou_ci", "95% CI", "ci"), Column("mean_f1", "F1"), Column("es", "ES"),
    Column("thresholded_jaccard", "Thr. J."), Column("mask_ap", "Mask AP"),
]
COMPARISONS = [
    Column("arm", "Arm", "text"), Column("test_set", "Test set", "text"), Column("baseline", "vs", "text"),
    Column("metric", "Metric", "text"), Column("n_images", "Images", "int"), Column("mean_a", "Mean"),
    Column("mean_b", "Baseline mean"), Column("mean_difference", "Mean diff", "signed"),
    Column("ci", "95% CI (BCa)", "signed_ci"), Column("p_value", "Wilcoxon p", "p"), Column("p_holm", "Holm p", "p"),
]
COMPARISONS_LATEX = [
    Column("test_set", "Test set", "text"), Column("arm", "Arm", "text"), Column("baseline", "vs", "text"),
    Column("mean_difference", "$\\Delta$ IoU", "signed"), Column("ci", "95% CI", "signed_ci"),
    Column("p_value", "$p$", "p"), Column("p_holm", "$p$ (Holm)", "p"),
]
PER_SEED = [
    Column("arm", "Arm", "text"), Column("test_set", "Test set", "text"), Column("seed", "Seed", "int"),
    Column("n_images", "Images", "int"), Column("mean_iou", "Mean IoU"), Column("iou_ci", "IoU 95% CI (percentile)", "ci"),
    Column("mean_f1", "Mean F1"), Column("es", "ES"), Column("thresholded_jaccard", "Thr. Jaccard"),
    Column("mask_ap", "Mask AP"), Column("lesion_recall", "Lesion recall"), Column("fp_per_image", "FP/image"),
    Column("steps", "Steps", "int"), Column("images_seen", "Images seen", "int"), Column("selected", "Selected", "text"),
]
BUDGET = [
    Column("arm", "Arm", "text"), Column("seeds", "Seeds", "text"), Column("mode", "Budget", "text"),
    Column("steps", "Optimiser steps", "int"), Column("steps_per_seed", "Steps per seed", "text"),
    Column("images_seen", "Images seen", "int"), Column("by_source", "Images seen by source", "text"),
    Column("batch", "Batch × GPUs", "text"), Column("eval_every", "Validation every", "text"),
    Column("real_fraction", "Real fraction", "num"), Column("selected", "Selected evaluation", "text"),
]
SYNTHESIS = [
    Column("arm", "Arm", "text"), Column("real", "Real", "int"), Column("composite", "Composite", "int"),
    Column("gan", "GAN", "int"), Column("ratio", "Synthetic ratio f", "num"), Column("overrides", "Segmenter overrides", "text"),
]
STEPS = [
    Column("label", "Step", "text"), Column("kind", "Kind", "text"), Column("key", "Key", "text"),
    Column("code_digest", "Code digest", "text"), Column("arm", "Arm", "text"), Column("seed", "Seed", "int"),
    Column("test_set", "Test set", "text"),
]
DATASETS = [
    Column("role", "Role", "text"), Column("label", "Label", "text"), Column("name", "Name", "text"),
    Column("id", "Dataset id", "text"), Column("step", "Step", "text"),
]

#: Synthetic data quality, one table per feature space: against the real test images …
QUALITY_TEST = [
    Column("row", "Source", "text"), Column("n_images", "Images", "int"), Column("fd_test", "FD", "fd"),
    Column("kid_test_text", "KID ×10³ (± std)", "pre"), Column("precision_test", "Precision"),
    Column("recall_test", "Recall"), Column("density_test", "Density"), Column("coverage_test", "Coverage"),
    Column("near_copy_share", "Near-copies", "percent"), Column("ratio_q50", "NN ratio train/test (median)"),
    Column("fidelity_text", "Mask fidelity IoU (mean [q25, q75])", "pre"),
]
#: … and against real training images (for comparison: a copying generator looks better here).
QUALITY_TRAIN = [
    Column("row", "Source", "text"), Column("fd_train", "FD", "fd"), Column("kid_train_text", "KID ×10³ (± std)", "pre"),
    Column("precision_train", "Precision"), Column("recall_train", "Recall"), Column("density_train", "Density"),
    Column("coverage_train", "Coverage"),
]
QUALITY_LATEX = [
    Column("feature_space", "Features", "text"), Column("row", "Source", "text"), Column("fd_test", "FD", "fd"),
    Column("kid_test_text", "KID$\\times 10^3$", "pre"), Column("precision_test", "P"), Column("recall_test", "R"),
    Column("density_test", "D"), Column("coverage_test", "C"), Column("near_copy_share", "Near-copies", "percent"),
    Column("fidelity_mean_iou", "Mask fid."),
]


def domain_table(rows: Sequence[Mapping[str, Any]], test_sets: Sequence[str], baseline: str) -> Table:
    """Wide form of report_rows.domain_rows: one row per arm; per test set its mean IoU, its
    change against the baseline with 95% CI, and the Holm-adjusted p."""
    headers, align = ["Arm"], ["l"]
    for label in test_sets:
        headers += [f"IoU ({label})", f"Δ vs {baseline} ({label}) [95% CI]", f"Holm p ({label})"]
        align += ["r", "r", "r"]
    cells = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        line = [arm]
        for label in test_sets:
            r = next((x for x in rows if x["arm"] == arm and x["test_set"] == label), None)
            if r is None:
                line += [MISSING] * 3
            elif arm == baseline:
                line += [_num(r["mean_iou"]), "(baseline)", MISSING]
            else:
                diff = r["mean_difference"]
                ci = _ci((r["ci_low"], r["ci_high"]), 3, signed=True) if diff is not None else ""
                line += [_num(r["mean_iou"]), f"{_signed(diff, 3)} {ci}".strip(), _p(r["p_holm"])]
        cells.append(line)
    return Table(headers, align, cells)


# --- renderers --------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in table.headers) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in table.align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.cells]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"–": "--", "−": "$-$", "×": r"$\times$", "Δ": r"$\Delta$", "≥": r"$\geq$", "≤": r"$\leq$",
                  "·": r"$\cdot$", "±": r"$\pm$", "<": r"$<$", ">": r"$>$"}
_MATH = re.compile(r"\$[^$]*\$")


def latex_escape(text: str) -> str:
    """Text for a LaTeX table cell: special characters escaped, minus signs as math minus,
    a few symbols in math mode. Spans already in $…$ (headers written for LaTeX) are kept."""
    out, pos = [], 0
    for m in _MATH.finditer(text):
        out.append(_escape_plain(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape_plain(text[pos:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    text = re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in text)


def to_latex(table: Table, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); groups separated by \\midrule."""
    spec = "".join(table.align)
    lines = [
        "% synthaug report table; needs \\usepackage{booktabs}",
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
        " & ".join(latex_escape(h) for h in table.headers) + " \\\\", "\\midrule",
    ]
    for i, row in enumerate(table.cells):
        if i in table.groups:
            lines.append("\\midrule")
        lines.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """CSV with plain numbers (full precision). An interval (a key ending in "_ci") becomes
    two columns KEY_low, KEY_high; a list (per-seed values) one column joined by ";"; None
    an empty cell."""
    header: list[str] = []
    for key in fields:
        header += [f"{key}_low", f"{key}_high"] if key.endswith("_ci") else [key]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out: dict[str, Any] = {}
        for key in fields:
            value = row.get(key)
            if f"{key}_low" in header:
                out[f"{key}_low"], out[f"{key}_high"] = value if value else ("", "")
            elif isinstance(value, list):
                out[key] = ";".join(repr(float(v)) for v in value)
            else:
                out[key] = "" if value is None else value
        writer.writerow(out)
    return buf.getvalue()
