"""Reports: results table (Markdown + CSV), charts (PNG) and one self-contained HTML page.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no
global backend switch, safe in server threads).

**Training record** (written by the segmenter, read here for the training curves)::

    {"epochs": [{"epoch": 1,
                 "losses": {"loss_classifier": 0.41, "loss_box_reg": 0.30, "loss_mask": 0.52, ...},
                 "val": {"iou": 0.71, "f1": 0.80, ...}},
                ...]}

``losses`` are the epoch means of each training loss component; ``val`` holds validation
metrics of that epoch (either may be empty). Other keys are ignored.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.optimize import OptimizeWarning, curve_fit

from services.common.errors import InvalidArgument
from services.evaluator.config import DEFAULT_BOOTSTRAP, ReportConfig, check_metric
from services.evaluator.core.coco import GroundTruth, Predictions, decode_union
from services.evaluator.core.compare import (
    SEED_AGGREGATES,
    ArmAggregate,
    aligned,
    arm_aggregates,
    mean_over_seeds,
)
from services.evaluator.core.stats import paired_comparison

log = logging.getLogger(__name__)

DEFAULT_TITLE = "synthaug report"
GENERATOR_COLOURS = {"real": "#444444", "composite": "#1f77b4", "gan": "#d62728", "hybrid": "#2ca02c"}
TABLE_COLUMNS = [
    ("arm", "Arm"),
    ("n_seeds", "Seeds"),
    ("n_images", "Images"),
    ("mean_iou", "Mean IoU"),
    ("std_iou", "Std IoU"),
    ("mean_f1", "Mean F1"),
    ("std_f1", "Std F1"),
    ("es", "ES"),
    ("iou_ci", "IoU 95% CI"),
    ("es_ci", "ES 95% CI"),
    ("thresholded_jaccard", "Thr. Jaccard"),
    ("mask_ap", "Mask AP"),
    ("mask_ap_ci", "Mask AP 95% CI"),
    ("lesion_recall", "Lesion recall"),
    ("fp_per_image", "FP/image"),
]


@dataclass
class RunInput:
    """One arm × seed to report on (what ReportRequest.ArmRun points at, loaded)."""

    arm: str
    seed: int
    evaluation: dict[str, Any]
    predictions: Predictions | None = None
    training_record: dict[str, Any] | None = None
    real_count: int = 0
    composite_count: int = 0
    gan_count: int = 0

    @property
    def ratio(self) -> float | None:
        """Synthetic ratio f = D_syn / D_orig (None without real images)."""
        return (self.composite_count + self.gan_count) / self.real_count if self.real_count > 0 else None

    @property
    def generator(self) -> str:
        if self.composite_count and self.gan_count:
            return "hybrid"
        if self.gan_count:
            return "gan"
        if self.composite_count:
            return "composite"
        return "real"


@dataclass
class Report:
    """Report files by name: index.html first, then PNG / CSV / Markdown."""

    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def content_type(self, name: str) -> str:
        return {"html": "text/html; charset=utf-8", "png": "image/png", "csv": "text/csv; charset=utf-8",
                "md": "text/markdown; charset=utf-8", "json": "application/json"}[name.rsplit(".", 1)[-1]]


# --- table ---------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table_rows(aggs: Sequence[ArmAggregate]) -> list[dict[str, Any]]:
    """One row per arm: mean across seeds of each aggregate, and CIs (t across seeds, or
    the bootstrap CI over images with a single seed)."""
    rows = []
    for a in aggs:
        v = a.values
        def mean(key: str) -> float | None:
            return v[key].mean if key in v else None
        def ci(key: str) -> tuple[float, float] | None:
            # One seed of an aggregate without per-image values (AP): no interval to give.
            if key not in v or (v[key].n_seeds == 1 and SEED_AGGREGATES.get(key) is None):
                return None
            return (v[key].ci_low, v[key].ci_high)
        rows.append({
            "arm": a.arm, "n_seeds": len(a.seeds), "n_images": a.n_images,
            "mean_iou": mean("mean_iou"), "std_iou": a.std_iou, "mean_f1": mean("mean_f1"), "std_f1": a.std_f1,
            "es": mean("es"), "iou_ci": ci("mean_iou"), "es_ci": ci("es"),
            "thresholded_jaccard": mean("thresholded_jaccard"), "mask_ap": mean("mask_ap"), "mask_ap_ci": ci("mask_ap"),
            "lesion_recall": mean("lesion_recall"), "fp_per_image": mean("fp_per_image"),
        })
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    if isinstance(value, float):
        return _fmt(value)
    if value is None:
        return "–"
    return str(value)


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" if key == "arm" else "---:" for key, _ in TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]).replace("|", "\\|") for key, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with plain numbers (full precision); CIs as two columns each."""
    buf = io.StringIO()
    fields: list[str] = []
    for key, _ in TABLE_COLUMNS:
        fields += [f"{key[:-3]}_ci_low", f"{key[:-3]}_ci_high"] if key.endswith("_ci") else [key]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out: dict[str, Any] = {}
        for key, _ in TABLE_COLUMNS:
            value = row[key]
            if key.endswith("_ci"):
                out[f"{key[:-3]}_ci_low"], out[f"{key[:-3]}_ci_high"] = value if value else ("", "")
            else:
                out[key] = "" if value is None else value
        writer.writerow(out)
    return buf.getvalue()


def comparisons(runs: Sequence[RunInput], baseline: str, metric: str = "iou", n_bootstrap: int = DEFAULT_BOOTSTRAP,
                seed: int = 0) -> list[dict[str, Any]]:
    """Each arm vs the baseline arm: paired difference of the per-image metric (averaged over
    each arm's seeds) with bootstrap CI and Wilcoxon p-value."""
    metric = check_metric(metric)
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r.arm, []).append(r.evaluation)
    if baseline not in by_arm:
        raise InvalidArgument(f"baseline arm {baseline!r} is not among the runs")
    base = mean_over_seeds(by_arm[baseline], metric)
    out = []
    for arm, evs in by_arm.items():
        if arm == baseline:
            continue
        _, va, vb = aligned(mean_over_seeds(evs, metric), base)
        c = paired_comparison(va, vb, metric, n_bootstrap, seed)
        out.append({"arm": arm, "baseline": baseline, **c.as_dict()})
    return out


def comparisons_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["| Arm | vs | Metric | Images | Mean diff | 95% CI | Wilcoxon p |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['baseline']} | {r['metric']} | {r['n_images']} | {r['mean_difference']:+.4f} | "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


# --- figures -------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def bar_chart(aggs: Sequence[ArmAggregate], title: str = "") -> bytes:
    """Grouped bars per arm (mean IoU, mean F1, ES, thresholded Jaccard, mask AP) with CI error bars."""
    keys = [("mean_iou", "IoU"), ("mean_f1", "F1"), ("es", "ES"), ("thresholded_jaccard", "Thr. Jaccard"), ("mask_ap", "Mask AP")]
    keys = [(k, lab) for k, lab in keys if any(k in a.values for a in aggs)]
    n_arms = len(aggs)
    fig = Figure(figsize=(min(16.0, max(6.0, 1.1 * n_arms + 2)), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(keys))
    x = np.arange(n_arms)
    cmap = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for j, (key, label) in enumerate(keys):
        means = np.array([a.values[key].mean if key in a.values else np.nan for a in aggs])
        lows = np.array([a.values[key].ci_low if key in a.values else np.nan for a in aggs])
        highs = np.array([a.values[key].ci_high if key in a.values else np.nan for a in aggs])
        # Scores live in [0, 1]; a t interval over two seeds can reach past that, which says
        # nothing beyond "unknown", so the drawn bars stop at the bounds (the table has the numbers).
        lows, highs = np.clip(lows, 0.0, 1.0), np.clip(highs, 0.0, 1.0)
        err = np.vstack([np.clip(means - lows, 0, None), np.clip(highs - means, 0, None)])
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, means, width, yerr=err, capsize=3, label=label, color=cmap[j % len(cmap)])
    ax.set_xticks(x)
    ax.set_xticklabels([a.arm for a in aggs], rotation=20 if n_arms > 4 else 0, ha="right" if n_arms > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% CI)")
    ax.set_title(title or "Test metrics per arm")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=min(5, len(keys)), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 if n_arms <= 4 else -0.22))
    fig.tight_layout()
    return _png(fig)


def logistic(f: np.ndarray, top: float, k: float, f0: float) -> np.ndarray:
    """Three-parameter logistic top / (1 + exp(−k (f − f0))), the curve the thesis fitted."""
    return top / (1.0 + np.exp(-k * (np.asarray(f, dtype=np.float64) - f0)))


def fit_logistic(f: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray | None, str]:
    """Least-squares logistic fit (scipy curve_fit); (None, reason) when it cannot be fitted."""
    f = np.asarray(f, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(np.unique(f)) < 3:
        return None, f"needs ≥ 3 distinct ratios, has {len(np.unique(f))}"
    p0 = [float(y.max()), 1.0, float(np.median(f))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(logistic, f, y, p0=p0, maxfev=20000,
                                  bounds=([0.0, -50.0, -1e3], [1.5, 50.0, 1e3]))
    except (RuntimeError, ValueError, OptimizeWarning) as exc:
        return None, f"fit failed ({exc.__class__.__name__})"
    if params[0] >= 1.5 - 1e-6 or abs(params[1]) >= 50 - 1e-6:
        return None, "no plateau or step within the data (the fit ran into its bounds)"
    return params, ""


def es_vs_ratio_chart(runs: Sequence[RunInput], notes: list[str] | None = None) -> bytes | None:
    """ES against the synthetic ratio f = D_syn / D_orig, one colour and one fitted logistic
    per generator type (real-only runs, f = 0, belong to every type's curve)."""
    points = [(r.generator, r.ratio, float(r.evaluation["es"])) for r in runs if r.ratio is not None]
    if not any(g != "real" for g, _, _ in points):
        return None
    baseline = [(f, y) for g, f, y in points if g == "real"]
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if baseline:
        ax.scatter([f for f, _ in baseline], [y for _, y in baseline], color=GENERATOR_COLOURS["real"], label="real only", zorder=3)
    f_max = max(f for _, f, _ in points)
    grid = np.linspace(0, f_max * 1.05 if f_max > 0 else 1.0, 200)
    for gen in ("composite", "gan", "hybrid"):
        pts = [(f, y) for g, f, y in points if g == gen]
        if not pts:
            continue
        colour = GENERATOR_COLOURS[gen]
        ax.scatter([f for f, _ in pts], [y for _, y in pts], color=colour, label=gen, zorder=3)
        xs = [f for f, _ in pts + baseline]
        ys = [y for _, y in pts + baseline]
        params, reason = fit_logistic(xs, ys)
        if params is None:
            if notes is not None:
                notes.append(f"ES vs ratio: no logistic curve for {gen}: {reason}")
            continue
        top, k, f0 = params
        ax.plot(grid, logistic(grid, *params), color=colour, lw=1.5,
                label=f"{gen} fit: {top:.3f} / (1 + e^(−{k:.2f}·(f {-f0:+.2f})))")
    ax.set_xlabel("synthetic ratio f = D_syn / D_orig")
    ax.set_ylabel("ES = (IoU + F1) / 2")
    ax.set_title("ES against the synthetic ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _overlay(ax, image: np.ndarray | None, truth: np.ndarray, pred: np.ndarray | None, text: str) -> None:
    h, w = truth.shape
    base = image if image is not None else np.full((h, w, 3), 128, np.uint8)
    ax.imshow(base, interpolation="nearest")
    if pred is not None and pred.any():
        rgba = np.zeros((h, w, 4), dtype=np.float32)
        rgba[pred] = (1.0, 0.15, 0.1, 0.35)
        ax.imshow(rgba, interpolation="nearest")
        ax.contour(pred.astype(np.float32), levels=[0.5], colors=["#ff3b1f"], linewidths=1.0)
    if truth.any():
        ax.contour(truth.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    if text:
        ax.set_xlabel(text, fontsize=7)


def overlay_grid(
    truth: GroundTruth,
    runs: Sequence[RunInput],
    count: int,
    load_image: Callable[[dict[str, Any]], np.ndarray] | None = None,
) -> bytes | None:
    """Rows of test images: ground truth (green outline) and, per arm, the first seed's
    predicted union (red) with its IoU. Rows span the first arm's per-image IoU from worst
    to best, so the grid shows failures as well as successes."""
    arms: dict[str, RunInput] = {}
    for r in runs:
        if r.predictions is not None and r.arm not in arms:
            arms[r.arm] = r
    if count <= 0 or not arms:
        return None
    first = next(iter(arms.values()))
    iou_by_id = {int(row["image_id"]): float(row["iou"]) for row in first.evaluation["per_image"]}
    ids = sorted((i for i in iou_by_id if i in truth.instances), key=lambda i: (iou_by_id[i], i))
    if not ids:
        return None
    picks = [ids[int(round(j))] for j in np.linspace(0, len(ids) - 1, min(count, len(ids)))]
    picks = list(dict.fromkeys(picks))
    by_id = {r["id"]: r for r in truth.images}
    cols = 1 + len(arms)
    fig = Figure(figsize=(2.2 * cols, 2.3 * len(picks) + 0.4))
    per_arm_iou = {arm: {int(row["image_id"]): float(row["iou"]) for row in r.evaluation["per_image"]} for arm, r in arms.items()}
    for i, image_id in enumerate(picks):
        rec = by_id[image_id]
        h, w = rec["height"], rec["width"]
        image = None
        if load_image is not None:
            try:
                image = load_image(rec)
            except (OSError, ValueError, KeyError) as exc:  # a missing image must not sink the report
                log.warning("overlay: cannot load image %s: %s", rec["file_name"], exc)
        t = decode_union([x.rle for x in truth.instances[image_id]], h, w)
        ax = fig.add_subplot(len(picks), cols, i * cols + 1)
        _overlay(ax, image, t, None, str(rec["file_name"])[:28])
        if i == 0:
            ax.set_title("ground truth", fontsize=9)
        for j, (arm, run) in enumerate(arms.items(), start=2):
            thr = float(run.evaluation.get("score_threshold", 0.5))
            p_insts = [p for p in run.predictions.instances.get(image_id, []) if p.score >= thr]
            p = decode_union([x.rle for x in p_insts], h, w)
            ax = fig.add_subplot(len(picks), cols, i * cols + j)
            iou = per_arm_iou[arm].get(image_id)
            _overlay(ax, image, t, p, f"IoU {iou:.3f}" if iou is not None else "")
            if i == 0:
                ax.set_title(arm, fontsize=9)
    fig.suptitle("green: ground truth · red: prediction (score ≥ threshold)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def parse_training_record(record: Any, what: str = "training record") -> list[dict[str, Any]]:
    """Validated epochs of a training record (format in the module docstring)."""
    if not isinstance(record, Mapping) or not isinstance(record.get("epochs"), list):
        raise InvalidArgument(f"{what}: expected an object with an 'epochs' list")
    epochs = []
    for i, e in enumerate(record["epochs"]):
        if not isinstance(e, Mapping):
            raise InvalidArgument(f"{what}: epoch entry {i} must be an object")
        try:
            epoch = int(e.get("epoch", i + 1))
            losses = {str(k): float(v) for k, v in (e.get("losses") or {}).items()}
            val = {str(k): float(v) for k, v in (e.get("val") or {}).items() if isinstance(v, (int, float))}
        except (TypeError, ValueError, AttributeError):
            raise InvalidArgument(f"{what}: epoch entry {i}: losses and val must map names to numbers") from None
        epochs.append({"epoch": epoch, "losses": losses, "val": val})
    return epochs


def training_curves(arm: str, runs: Sequence[RunInput]) -> bytes | None:
    """Training losses (left) and validation metrics (right) per epoch for one arm's seeds."""
    records = [(r.seed, parse_training_record(r.training_record, f"training record of {r.arm} seed {r.seed}"))
               for r in runs if r.training_record is not None]
    records = [(s, e) for s, e in records if e]
    if not records:
        return None
    fig = Figure(figsize=(10, 3.8))
    ax_l = fig.add_subplot(1, 2, 1)
    ax_v = fig.add_subplot(1, 2, 2)
    styles = ["-", "--", ":", "-."]
    loss_names = sorted({k for _, ep in records for e in ep for k in e["losses"]})
    val_names = sorted({k for _, ep in records for e in ep for k in e["val"]})
    colours = {name: f"C{i % 10}" for i, name in enumerate(loss_names + val_names)}
    for s_i, (seed, epochs) in enumerate(records):
        ls = styles[s_i % len(styles)]
        x = [e["epoch"] for e in epochs]
        for name in loss_names:
            ys = [e["losses"].get(name, np.nan) for e in epochs]
            ax_l.plot(x, ys, ls, color=colours[name], label=f"{name} (seed {seed})" if len(records) > 1 else name)
        for name in val_names:
            ys = [e["val"].get(name, np.nan) for e in epochs]
            ax_v.plot(x, ys, ls, marker="o", ms=3, color=colours[name], label=f"{name} (seed {seed})" if len(records) > 1 else name)
    ax_l.set_title(f"{arm}: training losses")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_l.grid(alpha=0.3)
    if loss_names:
        ax_l.legend(fontsize=7)
    for ax in (ax_l, ax_v):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_v.set_title(f"{arm}: validation")
    ax_v.set_xlabel("epoch")
    ax_v.grid(alpha=0.3)
    if val_names:
        ax_v.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# --- the page ------------------------------------------------------------------------------


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[k]))}</td>" for k, _ in TABLE_COLUMNS) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_comparisons(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{t}</th>" for t in ("Arm", "vs", "Metric", "Images", "Mean diff", "95% CI", "Wilcoxon p"))
    body = "".join(
        f"<tr><td>{html.escape(r['arm'])}</td><td>{html.escape(r['baseline'])}</td><td>{r['metric']}</td><td>{r['n_images']}</td>"
        f"<td>{r['mean_difference']:+.4f}</td><td>[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]</td><td>{r['p_value']:.3g}</td></tr>"
        for r in rows)
    return f"<h2>Paired comparisons</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{color:#666;font-size:13px}"""


def html_page(title: str, rows, comparison_rows, figures: Sequence[tuple[str, str, bytes]], notes: Sequence[str]) -> str:
    """One self-contained page: tables and the PNGs embedded as base64 data URIs."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Results</h2>", _html_table(rows),
             "<p class=\"note\">Means over seeds; 95% CIs are Student-t intervals across seeds, or the percentile bootstrap "
             "over test images for a single seed. ES = (IoU + F1) / 2 as in the thesis; thresholded Jaccard counts per-image "
             "IoU below 0.65 as 0; mask AP is COCO AP@[.5:.95].</p>",
             _html_comparisons(comparison_rows)]
    for name, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt=\"{html.escape(name)}\" src=\"data:image/png;base64,{data}\">")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def check_runs(runs: Sequence[tuple[str, int]], baseline: str | None = None, what: str = "runs") -> None:
    """InvalidArgument unless the (arm, seed) pairs make a report: at least one, each with an
    arm name, none twice, and `baseline` (when given) among the arms. Cheap: a service
    checks a request with it before starting the work."""
    if not runs:
        raise InvalidArgument(f"{what}: a report needs at least one run")
    seen: set[tuple[str, int]] = set()
    for i, (arm, seed) in enumerate(runs):
        if not arm:
            raise InvalidArgument(f"{what}[{i}].arm is empty: every run needs an arm name")
        if (arm, seed) in seen:
            raise InvalidArgument(f"{what}[{i}]: arm {arm!r} seed {seed} appears twice")
        seen.add((arm, seed))
    arms = list(dict.fromkeys(arm for arm, _ in runs))
    if baseline is not None and baseline not in arms:
        raise InvalidArgument(f"baseline arm {baseline!r} is not among the runs' arms ({', '.join(arms)})")


def build_report(
    runs: Sequence[RunInput],
    truth: GroundTruth | None = None,
    title: str = "",
    *,
    config: ReportConfig | None = None,
    load_image: Callable[[dict[str, Any]], np.ndarray] | None = None,
    seed: int = 0,
) -> Report:
    """All report files, titled `title` (default DEFAULT_TITLE). `config.baseline_arm`
    (default: the first real-only arm, else the first arm) is what the other arms are
    compared with."""
    config = (config or ReportConfig()).validate()
    title = title or DEFAULT_TITLE
    check_runs([(r.arm, r.seed) for r in runs], config.baseline_arm)
    baseline = config.baseline_arm
    report = Report()
    aggs = arm_aggregates((r.arm, r.seed, r.evaluation) for r in runs)
    rows = table_rows(aggs)
    if baseline is None:
        real = [r.arm for r in runs if r.generator == "real" and r.real_count > 0]
        baseline = real[0] if real else runs[0].arm
    comp_rows = comparisons(runs, baseline, "iou", config.n_bootstrap, seed) if len(aggs) > 1 else []
    figures: list[tuple[str, str, bytes]] = [("metrics_bar.png", "Metrics per arm (95% CI)", bar_chart(aggs, title))]
    es_png = es_vs_ratio_chart(runs, report.notes)
    if es_png is not None:
        figures.append(("es_vs_ratio.png", "ES against the synthetic ratio", es_png))
    if truth is not None:
        grid = overlay_grid(truth, runs, config.overlay_images, load_image)
        if grid is not None:
            figures.append(("overlays.png", "Test images: ground truth and predictions", grid))
    arms = list(dict.fromkeys(r.arm for r in runs))
    for i, arm in enumerate(arms):
        png = training_curves(arm, [r for r in runs if r.arm == arm])
        if png is not None:
            figures.append((f"training_{i:02d}.png", f"Training curves: {arm}", png))
    md = f"# {title}\n\n" + table_markdown(rows)
    if comp_rows:
        md += "\n## Paired comparisons (per-image IoU, mean over seeds)\n\n" + comparisons_markdown(comp_rows)
    report.files["index.html"] = html_page(title, rows, comp_rows, figures, report.notes).encode("utf-8")
    for name, _, png in figures:
        report.files[name] = png
    report.files["results.csv"] = table_csv(rows).encode("utf-8")
    report.files["results.md"] = md.encode("utf-8")
    return report
