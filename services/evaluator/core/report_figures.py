"""Report figures, legible as paper figures: bars per test set, ES against the synthetic
ratio, overlays of test images, validation and loss curves, a contact sheet of training
images. Each function returns a matplotlib Figure (or None when there is nothing to draw);
``figure_files`` writes it as PNG (PNG_DPI), SVG and PDF (fonts embedded as TrueType).

Drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
switch, safe in server threads), every figure with the constrained layout, so that titles,
labels and legends are never clipped and never overlap.
"""
from __future__ import annotations

import io
import logging
import math
import textwrap
import warnings
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy.optimize import OptimizeWarning, curve_fit

from services.common.seeding import derive_seed
from services.evaluator.core.coco import decode_union
from services.evaluator.core.report_inputs import ImageSet, RunInput
from services.evaluator.core.training import TrainingSummary

log = logging.getLogger(__name__)

PNG_DPI = 200
FIGURE_FORMATS = ("png", "svg", "pdf")
GENERATOR_COLOURS = {"real": "#444444", "composite": "#1f77b4", "gan": "#d62728", "hybrid": "#2ca02c"}
METRIC_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
SEED_STYLES = ["-", "--", ":", "-."]
#: (row key, interval key or None, legend label) of the bars; AP has no per-image values.
BAR_METRICS = [("mean_iou", "iou_ci", "IoU"), ("mean_f1", "f1_ci", "F1"), ("es", "es_ci", "ES"),
               ("thresholded_jaccard", "thresholded_jaccard_ci", "Thr. Jaccard"), ("mask_ap", None, "Mask AP")]
BAR_CI_LABEL = "error bars: 95% BCa bootstrap CI over test images"
_RC: dict[Any, Any] = {"svg.hashsalt": "synthaug", "pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9}
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"dpi": PNG_DPI, "metadata": {"Software": None}},
    "svg": {"metadata": {"Date": None}},
    "pdf": {"metadata": {"CreationDate": None}},
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrap(text: str, width: int = 18) -> str:
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=True, break_long_words=True)) or text


def figure_files(fig: Figure, stem: str) -> dict[str, bytes]:
    """`stem`.png / .svg / .pdf of `fig`, without timestamps (the same figure gives the same
    bytes), fonts embedded as TrueType in the PDF (what journals ask for)."""
    out = {}
    with matplotlib.rc_context(_RC):
        for fmt in FIGURE_FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, **_SAVE_OPTIONS[fmt])
            out[f"{stem}.{fmt}"] = buf.getvalue()
            # The first drawing placed everything; the other formats keep that layout
            # (recomputing it costs more than drawing).
            fig.set_layout_engine("none")
    return out


# --- bars -------------------------------------------------------------------------------------


def bar_chart(rows: Sequence[Mapping[str, Any]], test_set: str) -> Figure:
    """Grouped bars per arm (mean over seeds of IoU, F1, ES, thresholded Jaccard, mask AP).
    Error bars are the BCa CI over test images; mask AP has no per-image values and so no
    error bar at all (never a zero-width one)."""
    keys = [k for k in BAR_METRICS if any(r.get(k[0]) is not None for r in rows)]
    n_arms = len(rows)
    fig = _figure(min(16.0, max(6.0, 0.25 * n_arms * len(keys) + 2.0)), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(keys))
    x = np.arange(n_arms)
    for j, (key, ci_key, label) in enumerate(keys):
        pos = x + (j - (len(keys) - 1) / 2) * width
        means = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        ax.bar(pos, np.nan_to_num(means), width, label=label if ci_key else f"{label} (no CI)",
               color=METRIC_COLOURS[j % len(METRIC_COLOURS)])
        if ci_key is None:
            continue
        has = np.array([r.get(ci_key) is not None and r.get(key) is not None for r in rows])
        if not has.any():
            continue
        lows = np.array([r[ci_key][0] for r, h in zip(rows, has) if h])
        highs = np.array([r[ci_key][1] for r, h in zip(rows, has) if h])
        m = means[has]
        err = np.vstack([np.clip(m - lows, 0, None), np.clip(highs - m, 0, None)])
        ax.errorbar(pos[has], m, yerr=err, fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5)
    ax.set_xticks(x)
    many = n_arms > 5
    ax.set_xticklabels([_wrap(str(r["arm"]), 14) for r in rows], rotation=30 if many else 0,
                       ha="right" if many else "center", fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("score, mean over seeds")
    ax.set_title(f"Test set: {test_set} — {BAR_CI_LABEL}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", ncols=min(5, len(keys)), fontsize=8, frameon=False)
    return fig


# --- ES against the synthetic ratio -----------------------------------------------------------


def logistic(f: np.ndarray, top: float, k: float, f0: float) -> np.ndarray:
    """Three-parameter logistic top / (1 + exp(−k (f − f0))), the curve the thesis fitted."""
    return top / (1.0 + np.exp(-k * (np.asarray(f, dtype=np.float64) - f0)))


def fit_logistic(f: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray | None, str]:
    """Least-squares logistic fit (scipy curve_fit); (None, reason) when it cannot be fitted."""
    fs = np.asarray(f, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if len(np.unique(fs)) < 3:
        return None, f"needs ≥ 3 distinct ratios, has {len(np.unique(fs))}"
    p0 = [float(ys.max()), 1.0, float(np.median(fs))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(logistic, fs, ys, p0=p0, maxfev=20000,
                                  bounds=([0.0, -50.0, -1e3], [1.5, 50.0, 1e3]))
    except (RuntimeError, ValueError, OptimizeWarning) as exc:
        return None, f"fit failed ({exc.__class__.__name__})"
    if params[0] >= 1.5 - 1e-6 or abs(params[1]) >= 50 - 1e-6:
        return None, "no plateau or step within the data (the fit ran into its bounds)"
    return params, ""


def es_vs_ratio_chart(runs: Sequence[RunInput], test_set: str, notes: list[str] | None = None) -> Figure | None:
    """ES of every run against its synthetic ratio f = D_syn / D_orig on one test set; one
    colour and one fitted logistic per generator type (real-only runs, f = 0, belong to
    every type's curve)."""
    points = [(r.generator, r.ratio, float(r.evaluation["es"])) for r in runs if r.ratio is not None]
    if not any(g != "real" for g, _, _ in points):
        return None
    baseline = [(f, y) for g, f, y in points if g == "real"]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    if baseline:
        ax.scatter([f for f, _ in baseline], [y for _, y in baseline], color=GENERATOR_COLOURS["real"], label="real only", zorder=3, s=18)
    f_max = max(f for _, f, _ in points)
    grid = np.linspace(0, f_max * 1.05 if f_max > 0 else 1.0, 200)
    for gen in ("composite", "gan", "hybrid"):
        pts = [(f, y) for g, f, y in points if g == gen]
        if not pts:
            continue
        colour = GENERATOR_COLOURS[gen]
        ax.scatter([f for f, _ in pts], [y for _, y in pts], color=colour, label=gen, zorder=3, s=18)
        params, reason = fit_logistic([f for f, _ in pts + baseline], [y for _, y in pts + baseline])
        if params is None:
            if notes is not None:
                notes.append(f"ES vs ratio ({test_set}): no logistic curve for {gen}: {reason}")
            continue
        top, k, f0 = params
        ax.plot(grid, logistic(grid, *params), color=colour, lw=1.5,
                label=f"{gen} fit: {top:.3f} / (1 + e^(−{k:.2f}·(f {-f0:+.2f})))")
    ax.set_xlabel("synthetic ratio f = D_syn / D_orig")
    ax.set_ylabel("ES = (IoU + F1) / 2, one point per seed")
    ax.set_title(f"ES against the synthetic ratio — test set: {test_set}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return fig


# --- overlays -------------------------------------------------------------------------------


def _draw(ax: Any, image: np.ndarray | None, truth: np.ndarray | list[np.ndarray], pred: np.ndarray | None) -> None:
    masks = truth if isinstance(truth, list) else [truth]
    h, w = masks[0].shape
    ax.imshow(image if image is not None else np.full((h, w, 3), 128, np.uint8), interpolation="nearest")
    if pred is not None and pred.any():
        rgba = np.zeros((h, w, 4), dtype=np.float32)
        rgba[pred] = (1.0, 0.15, 0.1, 0.35)
        ax.imshow(rgba, interpolation="nearest")
        ax.contour(pred.astype(np.float32), levels=[0.5], colors=["#ff3b1f"], linewidths=0.9)
    for m in masks:
        if m.any():
            ax.contour(m.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _load(images: ImageSet, rec: Mapping[str, Any]) -> np.ndarray | None:
    if images.load_image is None:
        return None
    try:
        return images.load_image(dict(rec))
    except (OSError, ValueError, KeyError) as exc:  # a missing image must not sink the report
        log.warning("report: cannot load image %s of %s: %s", rec.get("file_name"), images.label, exc)
        return None


def _rank_label(position: int, n: int, median: int) -> str:
    if position == 0:
        return "worst"
    if position == n - 1:
        return "best"
    if position == median:
        return "median"
    return f"rank {position + 1}/{n}"


def overlay_grid(images: ImageSet, runs: Sequence[RunInput], count: int) -> Figure | None:
    """Rows of test images of one test set: ground truth (green outline) and, per arm, the
    lowest seed's predicted union (red) with its IoU. Rows run from the worst to the best
    image by IoU averaged over the drawn arms (worst, median and best always among them)."""
    arms: dict[str, RunInput] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        if r.predictions is not None and r.arm not in arms:
            arms[r.arm] = r
    arms = {arm: arms[arm] for arm in dict.fromkeys(r.arm for r in runs) if arm in arms}
    if count <= 0 or not arms:
        return None
    truth = images.truth
    iou = {arm: {int(row["image_id"]): float(row["iou"]) for row in r.evaluation["per_image"]} for arm, r in arms.items()}
    ids = [i for i in truth.instances if all(i in v for v in iou.values())]
    if not ids:
        return None
    mean_iou = {i: float(np.mean([v[i] for v in iou.values()])) for i in ids}
    ranked = sorted(ids, key=lambda i: (mean_iou[i], i))
    n = len(ranked)
    median = (n - 1) // 2
    positions = sorted({round(float(p)) for p in np.linspace(0, n - 1, min(count, n))})
    if len(positions) >= 3 and median not in positions:  # the interior pick nearest the median becomes it
        nearest = min(range(1, len(positions) - 1), key=lambda j: abs(positions[j] - median))
        positions = sorted(set(positions[:nearest] + [median] + positions[nearest + 1:]))
    by_id = {r["id"]: r for r in truth.images}
    cols = 1 + len(arms)
    cell = 1.55
    fig = _figure(cell * cols + 0.4, cell * len(positions) + 0.7)
    axes = fig.subplots(len(positions), cols, squeeze=False)
    for row_i, pos in enumerate(positions):
        image_id = ranked[pos]
        rec = by_id[image_id]
        h, w = int(rec["height"]), int(rec["width"])
        image = _load(images, rec)
        t = decode_union([x.rle for x in truth.instances[image_id]], h, w)
        ax = axes[row_i, 0]
        _draw(ax, image, t, None)
        ax.set_ylabel(f"{_rank_label(pos, n, median)}\n{_wrap(str(rec['file_name']), 20)}", fontsize=7)
        if row_i == 0:
            ax.set_title("ground truth", fontsize=8)
        for col, (arm, run) in enumerate(arms.items(), start=1):
            thr = float(run.evaluation.get("score_threshold", 0.5))
            assert run.predictions is not None
            p = decode_union([x.rle for x in run.predictions.instances.get(image_id, []) if x.score >= thr], h, w)
            ax = axes[row_i, col]
            _draw(ax, image, t, p)
            ax.set_xlabel(f"IoU {iou[arm][image_id]:.3f}", fontsize=7, labelpad=1)
            if row_i == 0:
                ax.set_title(f"{_wrap(arm, 16)}\n(seed {run.seed})", fontsize=8)
    fig.suptitle(f"Test set {images.label}: "
                 "green = ground truth, red = prediction (score ≥ threshold); rows by mean IoU, worst to best",
                 fontsize=9)
    return fig


# --- curves ---------------------------------------------------------------------------------


def _panels(n: int, cell_w: float, cell_h: float, sharex: bool) -> tuple[Figure, np.ndarray]:
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(cell_w * ncols + 0.3, cell_h * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True, sharex=sharex)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _curves(summaries: Sequence[TrainingSummary], value: Callable[[TrainingSummary, int], float | None],
            ylabel: str, title: str, mark_selected: bool) -> Figure | None:
    by_arm: dict[str, list[TrainingSummary]] = {}
    for s in summaries:
        if any(value(s, i) is not None for i in range(len(s.xs))):
            by_arm.setdefault(s.arm, []).append(s)
    if not by_arm:
        return None
    # One x scale for all panels where they share a unit: a longer training is visibly longer.
    same_unit = len({s.x_axis for items in by_arm.values() for s in items}) == 1
    fig, axes = _panels(len(by_arm), 2.9, 2.3, same_unit)
    for a_i, (arm, items) in enumerate(by_arm.items()):
        ax = axes.flat[a_i]
        colour = f"C{a_i % 10}"
        handles = []
        for s_i, s in enumerate(sorted(items, key=lambda s: s.seed)):
            ys = [value(s, i) for i in range(len(s.xs))]
            ys_arr = np.array([np.nan if y is None else y for y in ys], dtype=np.float64)
            style = SEED_STYLES[s_i % len(SEED_STYLES)]
            (line,) = ax.plot(s.xs, ys_arr, style, color=colour, lw=1.2, marker="o", ms=2.2, label=f"seed {s.seed}")
            handles.append(line)
            if mark_selected and s.best_index is not None and not np.isnan(ys_arr[s.best_index]):
                ax.plot([s.xs[s.best_index]], [ys_arr[s.best_index]], marker="*", ms=10, color=colour,
                        markeredgecolor="black", markeredgewidth=0.6, zorder=5, linestyle="none")
        if mark_selected and any(s.best_index is not None for s in items):
            handles.append(Line2D([], [], marker="*", ms=9, color=colour, markeredgecolor="black", linestyle="none", label="selected"))
        ax.set_title(_wrap(arm, 28), fontsize=9)
        ax.set_xlabel(items[0].x_axis, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.tick_params(labelbottom=True)  # shared x: still label every panel (a row may be short)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if len(handles) > 1:
            ax.legend(handles=handles, fontsize=6, loc="best", frameon=False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def validation_curves(summaries: Sequence[TrainingSummary]) -> Figure | None:
    """One panel per arm: the validation metric used for model selection against iterations
    (epochs for records without iteration counts), seeds as line styles, ★ at the selected
    evaluation (the weights the test results come from)."""
    metrics = [s.select_metric for s in summaries]
    metric = max(set(metrics), key=metrics.count) if metrics else "iou"

    def value(s: TrainingSummary, i: int) -> float | None:
        return s.val[i].get(metric)

    return _curves(summaries, value, f"validation {metric}", f"Validation {metric} per arm (★ selected evaluation)", True)


def loss_curves(summaries: Sequence[TrainingSummary]) -> Figure | None:
    """One panel per arm: the total training loss at each validation point, seeds as line styles."""

    def value(s: TrainingSummary, i: int) -> float | None:
        losses = s.losses[i]
        if "loss" in losses:
            return losses["loss"]
        return float(sum(losses.values())) if losses else None

    return _curves(summaries, value, "training loss", "Training loss per arm", False)


# --- contact sheet ----------------------------------------------------------------------------


def contact_sheet(sources: Sequence[ImageSet], per_source: int, seed: int = 0) -> Figure | None:
    """A row of training images per source (real, composite, GAN…), `per_source` drawn at
    random from each (stream (seed, "report/contact-sheet", label)), instance masks outlined
    in green."""
    sources = [s for s in sources if s.truth.images]
    if per_source <= 0 or not sources:
        return None
    cols = min(per_source, max(len(s.truth.images) for s in sources))
    cell = 1.35
    fig = _figure(cell * cols + 0.5, cell * len(sources) + 0.6)
    axes = fig.subplots(len(sources), cols, squeeze=False)
    for row_i, source in enumerate(sources):
        recs = source.truth.images
        rng = np.random.default_rng(derive_seed(seed, "report/contact-sheet", source.label))
        picks = sorted(rng.choice(len(recs), size=min(cols, len(recs)), replace=False).tolist())
        for col in range(cols):
            ax = axes[row_i, col]
            if col >= len(picks):
                ax.set_axis_off()
                continue
            rec = recs[picks[col]]
            h, w = int(rec["height"]), int(rec["width"])
            masks = [decode_union([inst.rle], h, w) for inst in source.truth.instances.get(rec["id"], [])]
            _draw(ax, _load(source, rec), masks or [np.zeros((h, w), bool)], None)
        axes[row_i, 0].set_ylabel(f"{_wrap(source.label, 16)}\n({len(recs):,} images)", fontsize=8)
    fig.suptitle("Training images of the run (green: instance masks)", fontsize=10)
    return fig


# --- synthetic data quality -------------------------------------------------------------------


def gain_vs_distance_chart(points: Sequence[Any], floor_fd: Mapping[str, float], feature_space: str) -> Figure | None:
    """One panel per test set: each arm's paired IoU change against the baseline (95% BCa
    CI) at the Fréchet distance to the real test images of the source it trained on
    (horizontal bar: the range over its seeds' sources). The dashed line is the
    real-vs-real floor: the FD real images themselves score. `points`:
    report_quality.GainPoint; `floor_fd`: test set → floor FD (the same for every panel)."""
    if not points:
        return None
    test_sets = list(dict.fromkeys(p.test_set for p in points))
    fig, axes = _panels(len(test_sets), 4.2, 3.2, sharex=True)
    for ax, label in zip(axes.flat, test_sets):
        pts = [p for p in points if p.test_set == label]
        for gen in dict.fromkeys(p.generator for p in pts):
            sel = [p for p in pts if p.generator == gen]
            x = np.array([p.fd for p in sel])
            y = np.array([p.gain for p in sel])
            yerr = np.vstack([np.clip(y - [p.ci_low for p in sel], 0, None), np.clip([p.ci_high for p in sel] - y, 0, None)])
            xerr = np.vstack([x - [p.fd_low for p in sel], [p.fd_high for p in sel] - x])
            ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="o", ms=4, capsize=2.5, elinewidth=0.9,
                        color=GENERATOR_COLOURS.get(gen, "#444444"), label=gen)
            for p in sel:
                ax.annotate(_wrap(p.arm, 16), (p.fd, p.gain), textcoords="offset points", xytext=(4, 4), fontsize=6)
        ax.axhline(0.0, color="black", lw=0.8)
        if label in floor_fd:
            ax.axvline(floor_fd[label], color="#444444", lw=1.0, ls="--", label="real-vs-real floor")
        ax.set_title(f"test set: {label}", fontsize=9)
        ax.set_xlabel(f"FD to real test images ({feature_space})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ IoU vs baseline (95% CI)", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=7, frameon=False)
    width = fig.get_figwidth()
    fig.suptitle(_wrap("Does better-looking synthetic data help more? IoU gain against distance to real data",
                       int(width * 11)), fontsize=10)
    return fig


def closest_pairs_sheet(rows: Sequence[tuple[str, Sequence[Mapping[str, Any]], str, str]],
                        load: Callable[[str, int], np.ndarray] | None, feature_space: str) -> Figure | None:
    """Per source two rows: its synthetic images closest to a real training image (top) and
    that training image (below), closest first, with the feature distance. `rows`: (source
    label, closest_pairs of the quality JSON, synthetic dataset id, real training dataset
    id). Images that cannot be loaded are drawn grey."""
    rows = [r for r in rows if r[1]]
    if not rows:
        return None
    cols = max(len(pairs) for _, pairs, _, _ in rows)
    cell = 1.3
    fig = _figure(cell * cols + 0.8, cell * 2 * len(rows) + 0.7)
    axes = fig.subplots(2 * len(rows), cols, squeeze=False)

    def image(dataset: str, image_id: int) -> np.ndarray:
        if load is not None:
            try:
                return load(dataset, image_id)
            except (OSError, ValueError, KeyError) as exc:  # a missing image must not sink the report
                log.warning("report: cannot load image %s of dataset %s: %s", image_id, dataset, exc)
        return np.full((8, 8, 3), 128, np.uint8)

    for r, (label, pairs, synthetic, real) in enumerate(rows):
        for col in range(cols):
            top, bottom = axes[2 * r, col], axes[2 * r + 1, col]
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
            if col >= len(pairs):
                top.set_axis_off()
                bottom.set_axis_off()
                continue
            p = pairs[col]
            top.imshow(image(synthetic, int(p["synthetic_id"])), interpolation="nearest")
            bottom.imshow(image(real, int(p["train_id"])), interpolation="nearest")
            top.set_title(f"d = {p['distance']:.3g}", fontsize=7)
            top.set_xlabel(f"#{p['synthetic_id']}", fontsize=6, labelpad=1)
            bottom.set_xlabel(f"train #{p['train_id']}", fontsize=6, labelpad=1)
        axes[2 * r, 0].set_ylabel(f"{_wrap(label, 14)}", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("nearest real\ntraining image", fontsize=7)
    fig.suptitle(f"Synthetic images closest to a real training image ({feature_space} features), closest first",
                 fontsize=10)
    return fig
