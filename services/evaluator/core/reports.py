"""Reports: everything a researcher needs to read, check and publish an experiment, built
from the evaluations of every arm × seed × test set.

Files (names relative to the report's prefix; a test set other than "internal" adds
``_<label>`` to its figures' names):

* ``index.html`` — one self-contained page (PNG figures embedded), rendered from the Jinja2
  templates in services/evaluator/templates: headline table first, then per test set its
  results, paired comparisons and figures, per-seed results, training budget, synthetic
  data, training images, provenance, methods and the list of files.
* ``results.md`` — the same report in Markdown (figures linked); ``results.csv`` /
  ``results.tex`` — results per arm and test set; ``comparisons.csv`` / ``.tex`` — paired
  comparisons with raw and Holm-adjusted p; ``domain_shift.csv`` / ``.tex`` — in-domain vs
  out-of-domain (with more than one test set); ``per_seed.csv``; ``per_image.csv`` (every
  image × arm × seed × test set); ``budget.csv``; ``provenance.json`` (when given).
* Figures, each as ``.png`` (200 dpi), ``.svg`` and ``.pdf``: ``metrics_bar``,
  ``es_vs_ratio``, ``overlays`` (per test set), ``validation_curves``, ``training_losses``,
  ``contact_sheet``; with quality results, per feature space ``quality_gain_<space>`` (IoU
  gain against FD) and ``closest_pairs_<space>``.
* With quality results (report_quality): ``quality.csv`` / ``quality.tex`` — every feature
  space × source (and the real-vs-real floor) with FD, KID, P/R/D/C against test and
  train, memorisation and mask fidelity.

The statistics are described in report_rows and on the page's Methods section; training
records in training; the provenance document in provenance.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jinja2
import numpy as np

from services.common.errors import InvalidArgument
from services.evaluator.config import ReportConfig
from services.evaluator.core.coco import GroundTruth
from services.evaluator.core.provenance import (
    Provenance,
    describe_overrides,
    parse_provenance,
)
from services.evaluator.core.report_figures import (
    BAR_CI_LABEL,
    PNG_DPI,
    bar_chart,
    closest_pairs_sheet,
    contact_sheet,
    es_vs_ratio_chart,
    figure_files,
    fit_logistic,
    gain_vs_distance_chart,
    logistic,
    loss_curves,
    overlay_grid,
    validation_curves,
)
from services.evaluator.core.report_inputs import (
    INTERNAL,
    ImageSet,
    RunInput,
    check_runs,
    default_baseline,
    test_set_order,
)
from services.evaluator.core.report_quality import (
    NO_INCEPTION,
    QUALITY_FIELDS,
    check_quality,
    gain_points,
    parse_quality,
    quality_rows,
)
from services.evaluator.core.report_rows import (
    COMPARISON_FIELDS,
    DOMAIN_FIELDS,
    PER_IMAGE_FIELDS,
    PER_SEED_FIELDS,
    RESULTS_CSV,
    Stats,
    comparison_rows,
    domain_rows,
    per_image_rows,
    per_seed_rows,
    results_rows,
)
from services.evaluator.core.report_tables import (
    BUDGET,
    COMPARISONS,
    COMPARISONS_LATEX,
    DATASETS,
    FORMATS,
    PER_SEED,
    QUALITY_LATEX,
    QUALITY_TEST,
    QUALITY_TRAIN,
    RESULTS,
    RESULTS_LATEX,
    STEPS,
    SYNTHESIS,
    Column,
    Table,
    domain_table,
    make_table,
    to_csv,
    to_latex,
    to_markdown,
)
from services.evaluator.core.stats import MIN_SEEDS_FOR_T
from services.evaluator.core.training import (
    BUDGET_TOLERANCE,
    TrainingSummary,
    arm_budgets,
    budget_warnings,
    parse_training_record,
    summarize_training,
)

__all__ = [
    "INTERNAL", "ImageSet", "Report", "RunInput", "build_report", "check_runs", "fit_logistic", "logistic",
    "parse_training_record",
]

DEFAULT_TITLE = "synthaug report"
#: Keys and digests on the page are shortened to this many characters (provenance.json has them whole).
SHORT_HASH = 16
#: Per-seed tables longer than this are folded on the page.
FOLD_ROWS = 24

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("services.evaluator", "templates"),
    autoescape=lambda name: (name or "").endswith(".html.j2"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

CONTENT_TYPES = {"html": "text/html; charset=utf-8", "png": "image/png", "svg": "image/svg+xml",
                 "pdf": "application/pdf", "csv": "text/csv; charset=utf-8", "md": "text/markdown; charset=utf-8",
                 "tex": "text/x-tex; charset=utf-8", "json": "application/json"}


@dataclass
class Report:
    """Report files by name (index.html first), notes on what could not be drawn, and
    warnings a reader must see (also shown on the page and in the Markdown)."""

    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def content_type(self, name: str) -> str:
        return CONTENT_TYPES[name.rsplit(".", 1)[-1]]


@dataclass(frozen=True)
class FigureOut:
    """A figure as the page shows it: its file stem, caption and embedded PNG."""

    stem: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class QualitySection:
    """One feature space's quality results as the page shows them."""

    feature_space: str
    sample_size: int
    kid_subset_size: int
    near_copy_threshold: float
    settings: dict[str, Any]
    test: Table
    test_md: str
    train: Table
    train_md: str
    figures: list[FigureOut]


@dataclass
class TestSetSection:
    label: str
    n_images: int
    results: Table
    results_md: str
    comparisons: Table | None
    comparisons_md: str
    figures: list[FigureOut]


def _suffix(label: str) -> str:
    return "" if label == INTERNAL else f"_{label}"


def _without(columns: Sequence[Column], *keys: str) -> list[Column]:
    return [c for c in columns if c.key not in keys]


def _short(text: str) -> str:
    return text if len(text) <= SHORT_HASH else text[:SHORT_HASH] + "…"


def _image_sets(runs: Sequence[RunInput], truth: GroundTruth | None, load_image: Callable[..., Any] | None,
                test_sets: Sequence[ImageSet]) -> dict[str, ImageSet]:
    out: dict[str, ImageSet] = {}
    if truth is not None:
        out[INTERNAL] = ImageSet(INTERNAL, truth, load_image)
    for s in test_sets:
        if s.label in out:
            raise InvalidArgument(f"test set {s.label!r} is given twice")
        out[s.label] = s
    evaluated = {r.test_set for r in runs}
    for label in out:
        if label not in evaluated:
            raise InvalidArgument(f"test set {label!r} has no runs (runs name: {', '.join(sorted(evaluated))})")
    return out


def _training(runs: Sequence[RunInput]) -> dict[tuple[str, int], TrainingSummary]:
    """One summary per arm × seed (its runs on several test sets share one training)."""
    out: dict[tuple[str, int], TrainingSummary] = {}
    for r in runs:
        if r.training_record is not None and (r.arm, r.seed) not in out:
            out[(r.arm, r.seed)] = summarize_training(r.arm, r.seed, r.training_record)
    return out


def _budget_rows(summaries: Sequence[TrainingSummary]) -> list[dict[str, Any]]:
    rows = []
    for b in arm_budgets(summaries):
        items = b.per_seed
        first = items[0]
        by_source: dict[str, list[int]] = {}
        for s in items:
            for name, n in s.images_by_source.items():
                by_source.setdefault(name, []).append(n)
        evals = {s.eval_every for s in items}
        rows.append({
            "arm": b.arm, "seeds": ", ".join(str(s) for s in b.seeds), "mode": "/".join(b.modes),
            "steps": b.steps, "images_seen": b.images_seen,
            "steps_per_seed": " / ".join(FORMATS["int"](s.steps) for s in items),
            "by_source": " · ".join(f"{k} {FORMATS['int'](np.mean(v))}" for k, v in by_source.items()),
            "batch": "–" if first.batch_size is None else f"{first.batch_size} × {first.world_size or 1}",
            "eval_every": "epoch" if evals == {None} and first.mode == "epochs"
                          else " / ".join(f"{e} iterations" for e in sorted(x for x in evals if x is not None)) or "–",
            "real_fraction": first.real_fraction,
            "selected": " / ".join(s.selected or "–" for s in items),
        })
    return rows


def _budget_csv_rows(summaries: Sequence[TrainingSummary]) -> list[dict[str, Any]]:
    """budget.csv: one row per arm × seed, numbers as numbers."""
    return [{"arm": s.arm, "seed": s.seed, "mode": s.mode, "steps": s.steps, "images_seen": s.images_seen,
             "batch_size": s.batch_size, "world_size": s.world_size, "eval_every": s.eval_every,
             "real_fraction": s.real_fraction, "images_seen_by_source": json.dumps(s.images_by_source, sort_keys=True),
             "selected": s.selected, "recorded_budget": s.recorded_budget} for s in summaries]


def _synthesis_rows(runs: Sequence[RunInput], provenance: Provenance | None) -> list[dict[str, Any]]:
    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        r = next(x for x in runs if x.arm == arm)
        recorded = provenance.arm(arm) if provenance is not None else None
        rows.append({"arm": arm, "real": r.real_count, "composite": r.composite_count, "gan": r.gan_count,
                     "ratio": r.ratio, "overrides": describe_overrides(recorded.segmenter) if recorded else ""})
    return rows


def _seed_note(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    few = list(dict.fromkeys(r["arm"] for rs in rows.values() for r in rs if r["n_seeds"] < MIN_SEEDS_FOR_T))
    if not few:
        return ""
    return (f"{', '.join(few)}: fewer than {MIN_SEEDS_FOR_T} seeds, so no across-seed interval (with 2 seeds "
            "Student's t(0.975, 1) = 12.7 stretches it over most of [0, 1], which says nothing); their per-seed "
            "values are listed instead, and the CI over images is the uncertainty shown.")


def build_report(
    runs: Sequence[RunInput],
    truth: GroundTruth | None = None,
    title: str = "",
    *,
    config: ReportConfig | None = None,
    load_image: Callable[[dict[str, Any]], np.ndarray] | None = None,
    seed: int = 0,
    test_sets: Sequence[ImageSet] = (),
    contact: Sequence[ImageSet] = (),
    provenance: Provenance | Mapping[str, Any] | str | None = None,
    quality: Sequence[Mapping[str, Any]] = (),
    quality_images: Callable[[str, int], np.ndarray] | None = None,
) -> Report:
    """All report files, titled `title` (default DEFAULT_TITLE).

    `truth` (with `load_image`) are the internal test set's images, `test_sets` those of the
    others (by the label the runs name): both only for the overlays. `contact`: training
    images for the contact sheet. `provenance`: the run's provenance document (checked with
    provenance.parse_provenance). `quality`: quality JSONs (quality.py; at most one per
    feature space) for the "Synthetic data quality" section, whose closest pairs
    `quality_images(dataset id, image id)` draws. `config.baseline_arm` (default: the first real-only arm,
    else the first arm) is what the other arms are compared with; `seed` seeds every
    bootstrap of the report."""
    config = (config or ReportConfig()).validate()
    title = title or DEFAULT_TITLE
    check_runs([(r.arm, r.seed, r.test_set) for r in runs], config.baseline_arm)
    if provenance is not None and not isinstance(provenance, Provenance):
        provenance = parse_provenance(provenance)
    images = _image_sets(runs, truth, load_image, test_sets)
    quality = [parse_quality(doc, f"quality[{i}]") for i, doc in enumerate(quality)]
    check_quality(quality, runs)
    baseline = config.baseline_arm or default_baseline(runs)
    report = Report()
    stats = Stats(config.n_bootstrap, seed)
    order = test_set_order(runs)
    arms = list(dict.fromkeys(r.arm for r in runs))
    # Report order: test set (internal first), arm (as given), seed.
    runs = sorted(runs, key=lambda r: (order.index(r.test_set), arms.index(r.arm), r.seed))
    groups = {label: [r for r in runs if r.test_set == label] for label in order}

    results = {label: results_rows(label, groups[label], stats) for label in order}
    comparisons = comparison_rows(groups, baseline, stats, "iou", report.notes) if len(arms) > 1 else []
    domain = domain_rows(results, comparisons, baseline) if len(order) > 1 and comparisons else []
    training = _training(runs)
    summaries = list(training.values())
    report.warnings += budget_warnings(arm_budgets(summaries))

    figures: dict[str, FigureOut] = {}

    def add_figure(fig: Any, stem: str, caption: str) -> FigureOut | None:
        if fig is None:
            return None
        files = figure_files(fig, stem)
        report.files.update(files)
        figures[stem] = FigureOut(stem, caption, files[f"{stem}.png"])
        return figures[stem]

    sections = []
    all_results = [row for label in order for row in results[label]]
    for label in order:
        rows = results[label]
        comp = [c for c in comparisons if c["test_set"] == label]
        figs = [add_figure(bar_chart(rows, label), f"metrics_bar{_suffix(label)}",
                           f"Metrics per arm, test set {label} ({BAR_CI_LABEL}; mask AP has none)"),
                add_figure(es_vs_ratio_chart(groups[label], label, report.notes), f"es_vs_ratio{_suffix(label)}",
                           f"ES against the synthetic ratio, test set {label}")]
        if label in images:
            figs.append(add_figure(overlay_grid(images[label], groups[label], config.overlay_images),
                                   f"overlays{_suffix(label)}", f"Test images of {label}: ground truth and predictions"))
        sections.append(TestSetSection(
            label, int(rows[0]["n_images"]), make_table(rows, _without(RESULTS, "test_set")), to_markdown(make_table(rows, RESULTS)),
            make_table(comp, _without(COMPARISONS, "test_set")) if comp else None,
            to_markdown(make_table(comp, COMPARISONS)) if comp else "", [f for f in figs if f is not None]))

    curves = [add_figure(validation_curves(summaries), "validation_curves",
                         "Validation curves (★: the evaluation whose weights were tested)"),
              add_figure(loss_curves(summaries), "training_losses", "Training loss")]
    sheet = add_figure(contact_sheet(contact, config.contact_images, seed), "contact_sheet",
                       "Training images: " + ", ".join(s.label for s in contact)) if contact else None

    quality_sections, quality_flat = [], []
    for doc in quality:
        space = doc["feature_space"]
        flat = quality_rows(doc)
        quality_flat += flat
        points = gain_points(doc, runs, comparisons)
        if comparisons and not points:
            report.notes.append(f"quality ({space}): no gain-against-distance figure: no compared arm names one of its "
                                "sources (ArmRun.quality_source)")
        floor_fd = {label: float(doc["rows"][0]["vs_test"]["fd"]) for label in order}
        pairs = [(r["label"], r.get("closest_pairs", []), str(r.get("dataset", "")), str(doc["real"]["train"]["dataset"]))
                 for r in doc["rows"][1:]]
        figs = [add_figure(gain_vs_distance_chart(points, floor_fd, space), f"quality_gain_{space}",
                           f"IoU gain against the baseline ({baseline}) vs the source's FD to the real test images, "
                           f"{space} features (dashed: real-vs-real floor)"),
                add_figure(closest_pairs_sheet(pairs, quality_images, space), f"closest_pairs_{space}",
                           f"Closest (synthetic, real training) pairs, {space} features: near-copies show here first")]
        quality_sections.append(QualitySection(
            space, int(doc["sample_size"]), int(doc.get("kid_subset_size", 0)), float(doc["near_copy_threshold"]),
            dict(doc.get("settings") or {}), make_table(flat, QUALITY_TEST), to_markdown(make_table(flat, QUALITY_TEST)),
            make_table(flat, QUALITY_TRAIN), to_markdown(make_table(flat, QUALITY_TRAIN)), [f for f in figs if f is not None]))

    per_seed = per_seed_rows(runs, training)
    budget = _budget_rows(summaries)
    synthesis = _synthesis_rows(runs, provenance)
    steps = [{**vars(s), "key": _short(s.key), "code_digest": _short(s.code_digest)}
             for s in provenance.steps] if provenance else []
    datasets = [vars(d) for d in provenance.datasets] if provenance else []
    seed_note = _seed_note(results)

    # Data files: full precision, for redoing the statistics and for papers.
    report.files["results.csv"] = to_csv(all_results, RESULTS_CSV).encode()
    report.files["results.tex"] = to_latex(make_table(all_results, RESULTS_LATEX, "test_set"),
                                           "Test results per arm (mean over seeds; 95% BCa bootstrap CI over test images).",
                                           "tab:synthaug-results").encode()
    if comparisons:
        report.files["comparisons.csv"] = to_csv(comparisons, COMPARISON_FIELDS).encode()
        report.files["comparisons.tex"] = to_latex(
            make_table(comparisons, COMPARISONS_LATEX, "test_set"),
            f"Paired comparisons against {baseline}: mean per-image IoU difference, 95% BCa CI, Wilcoxon signed-rank p "
            f"and Holm-adjusted p over all {len(comparisons)} comparisons.", "tab:synthaug-comparisons").encode()
    domain_tab = domain_table(domain, order, baseline) if domain else None
    if domain_tab is not None:
        report.files["domain_shift.csv"] = to_csv(domain, DOMAIN_FIELDS).encode()
        report.files["domain_shift.tex"] = to_latex(domain_tab, f"In-domain vs out-of-domain: mean IoU and change against "
                                                    f"{baseline} per test set (95% BCa CI, Holm-adjusted p).",
                                                    "tab:synthaug-domain").encode()
    report.files["per_seed.csv"] = to_csv(per_seed, PER_SEED_FIELDS).encode()
    report.files["per_image.csv"] = to_csv(per_image_rows(runs), PER_IMAGE_FIELDS).encode()
    if summaries:
        budget_rows = _budget_csv_rows(summaries)
        report.files["budget.csv"] = to_csv(budget_rows, list(budget_rows[0])).encode()
    if quality_flat:
        report.files["quality.csv"] = to_csv(quality_flat, QUALITY_FIELDS).encode()
        report.files["quality.tex"] = to_latex(
            make_table(quality_flat, QUALITY_LATEX, "feature_space"),
            "Synthetic data quality against the real test images: Fréchet distance, KID (×10³, ± std over subsets), "
            "k-NN precision, recall, density and coverage, share of near-copies of training images, mask fidelity "
            "(mean IoU); the real-vs-real floor first.", "tab:synthaug-quality").encode()
    if provenance is not None:
        report.files["provenance.json"] = provenance.json_bytes()

    context = {
        "title": title, "baseline": baseline, "arms": arms, "test_sets": order, "sections": sections,
        "n_runs": len(runs), "seeds": sorted({r.seed for r in runs}),
        "warnings": report.warnings, "notes": report.notes, "seed_note": seed_note,
        "domain": domain_tab, "domain_md": to_markdown(domain_tab) if domain_tab else "",
        "n_comparisons": len(comparisons), "min_seeds": MIN_SEEDS_FOR_T, "tolerance": BUDGET_TOLERANCE,
        "per_seed": make_table(per_seed, PER_SEED), "per_seed_md": to_markdown(make_table(per_seed, PER_SEED)),
        "fold_per_seed": len(per_seed) > FOLD_ROWS,
        "budget": make_table(budget, BUDGET) if budget else None,
        "budget_md": to_markdown(make_table(budget, BUDGET)) if budget else "",
        "curves": [f for f in curves if f is not None], "sheet": sheet,
        "synthesis": make_table(synthesis, SYNTHESIS), "synthesis_md": to_markdown(make_table(synthesis, SYNTHESIS)),
        "provenance": provenance, "short_hash": SHORT_HASH,
        "plan_budget": json.dumps(provenance.budget, sort_keys=True) if provenance and provenance.budget else "",
        "steps": make_table(steps, STEPS) if steps else None, "steps_md": to_markdown(make_table(steps, STEPS)) if steps else "",
        "datasets": make_table(datasets, DATASETS) if datasets else None,
        "datasets_md": to_markdown(make_table(datasets, DATASETS)) if datasets else "",
        "dpi": PNG_DPI, "figures": figures,
        "quality": quality_sections,
        "quality_note": NO_INCEPTION if quality and not any(d["feature_space"] == "inception" for d in quality) else "",
    }
    context["files"] = ["results.md", *report.files]  # index.html and results.md are added below
    report.files = {"index.html": _ENV.get_template("report.html.j2").render(context).encode("utf-8"),
                    "results.md": _ENV.get_template("report.md.j2").render(context).encode("utf-8"),
                    **report.files}
    return report
