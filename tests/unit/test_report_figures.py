"""Report figures and tables as a paper needs them: nothing clipped or overlapping, no
zero-width error bars, PNG at 200 dpi, SVG and PDF, LaTeX that compiles, escaped HTML."""
from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from services.evaluator.config import ReportConfig
from services.evaluator.core.report_figures import (
    PNG_DPI,
    bar_chart,
    figure_files,
    overlay_grid,
    validation_curves,
)
from services.evaluator.core.report_inputs import ImageSet
from services.evaluator.core.report_tables import latex_escape
from services.evaluator.core.reports import build_report
from services.evaluator.core.training import summarize_training
from tests.unit.test_evaluator_reports import make_runs, make_truth
from tests.unit.test_report_contents import budget_record

LONG_ARMS = [(f"{name}-with-a-rather-long-name", 100, comp, gan, shift)
             for name, comp, gan, shift in [("real", 0, 0, 5), ("composite", 200, 0, 3), ("gan", 0, 200, 4),
                                            ("hybrid", 100, 100, 2), ("composite-x14", 1400, 0, 2), ("gan-x14", 0, 1400, 3),
                                            ("hybrid-x14", 700, 700, 2), ("composite-x6", 600, 0, 3)]]


@pytest.fixture(scope="module")
def eight_arms():
    rng = np.random.default_rng(1)
    truth, masks = make_truth(10, rng)
    return truth, make_runs(truth, masks, LONG_ARMS, (0,), rng)


def drawn(fig: Figure):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def texts_inside(fig: Figure) -> list[str]:
    """What reaches outside the figure (so would be clipped): any axes with its titles,
    labels and drawn tick labels, the suptitle, a legend."""
    renderer = drawn(fig)
    box = fig.bbox

    def out(ext) -> bool:
        return ext.x0 < box.x0 - 1 or ext.x1 > box.x1 + 1 or ext.y0 < box.y0 - 1 or ext.y1 > box.y1 + 1

    bad = [ax.get_title() or f"axes {i}" for i, ax in enumerate(fig.axes) if ax.get_visible() and out(ax.get_tightbbox(renderer))]
    if fig._suptitle is not None and out(fig._suptitle.get_window_extent(renderer)):
        bad.append(fig._suptitle.get_text())
    bad += [f"legend {i}" for i, legend in enumerate(fig.legends) if out(legend.get_window_extent(renderer))]
    return bad


def test_overlay_titles_do_not_overlap_and_nothing_is_clipped(eight_arms):
    truth, runs = eight_arms
    fig = overlay_grid(ImageSet("internal", truth), runs, 5)
    renderer = drawn(fig)
    suptitle = fig.get_suptitle()
    assert "green = ground truth" in suptitle
    sup = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert len(titles) == 1 + len(LONG_ARMS)  # ground truth and every arm, on the first row only
    for t in titles:
        assert not sup.overlaps(t.get_window_extent(renderer)), t.get_text()
        for ax in fig.axes:  # a column header never covers an image
            assert not t.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)) or ax is t.axes
    assert texts_inside(fig) == []
    labels = [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.get_ylabel()]
    assert labels[0] == "worst" and labels[-1] == "best" and "median" in labels


def test_bar_chart_is_not_clipped_and_has_no_zero_width_error_bars(eight_arms):
    _, runs = eight_arms
    from services.evaluator.core.report_rows import Stats, results_rows

    rows = results_rows("internal", runs, Stats(n_bootstrap=200))
    rows[1] = {**rows[1], "iou_ci": None}  # an arm without an interval: no error bar there
    fig = bar_chart(rows, "internal")
    assert texts_inside(fig) == []
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 4  # IoU, F1, ES, thresholded Jaccard; mask AP has no per-image values
    iou_bars = bars[0]
    (segments,) = iou_bars.lines[2]
    lengths = [abs(seg[1][1] - seg[0][1]) for seg in segments.get_segments()]
    assert len(lengths) == len(rows) - 1 and min(lengths) > 0
    assert "BCa bootstrap CI over test images" in ax.get_title()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Mask AP (no CI)" in legend


def test_figure_files_png_at_200_dpi_svg_and_pdf():
    fig = Figure(figsize=(4.0, 3.0))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    files = figure_files(fig, "f")
    assert sorted(files) == ["f.pdf", "f.png", "f.svg"]
    width, height = struct.unpack(">II", files["f.png"][16:24])  # IHDR
    assert PNG_DPI >= 200 and (width, height) == (4 * PNG_DPI, 3 * PNG_DPI)
    assert files["f.pdf"].startswith(b"%PDF-") and b"/FontFile2" in files["f.pdf"]  # TrueType embedded
    assert b"<svg" in files["f.svg"][:1000]
    assert figure_files(fig, "f") == files  # no timestamps: the same figure, the same bytes


def test_validation_curves_one_panel_per_arm_with_the_selected_evaluation_marked():
    summaries = [summarize_training(f"arm-{a}", s, budget_record(s, 500 + 250 * a, eval_every=125))
                 for a in range(7) for s in (0, 1, 2)]
    fig = validation_curves(summaries)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 7 and [ax.get_title() for ax in panels] == [f"arm-{a}" for a in range(7)]
    assert all(ax.get_xlabel() == "iteration" for ax in panels)
    first = summaries[0]
    stars = [line for line in panels[0].get_lines() if line.get_marker() == "*"]
    assert len(stars) == 3  # one per seed
    assert (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (first.xs[first.best_index], first.val[first.best_index]["iou"])
    styles = {line.get_linestyle() for line in panels[0].get_lines() if line.get_marker() == "o"}
    assert len(styles) == 3  # seeds as line styles
    assert texts_inside(fig) == []


def test_latex_tables_compile_looking(eight_arms):
    truth, runs = eight_arms
    for r in runs[:1]:
        r.arm = "real_100%&more"  # characters LaTeX must not see raw
    report = build_report(runs, truth, config=ReportConfig(n_bootstrap=200, overlay_images=0))
    for name in ("results.tex", "comparisons.tex"):
        tex = report.files[name].decode()
        assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 1
        assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
        spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
        body = tex.split("\\toprule\n")[1].split("\\bottomrule")[0]
        lines = [ln for ln in body.splitlines() if ln and not ln.startswith("\\midrule")]
        assert len(lines) >= 2
        for line in lines:
            assert line.endswith(" \\\\")
            assert len(re.split(r"(?<!\\)&", line)) == len(spec), line
            assert line.count("$") % 2 == 0, line  # math mode opened and closed
            assert not re.search(r"(?<!\\)[%_#]", line), line
        assert "real\\_100\\%\\&more" in tex
        assert "–" not in tex and "Δ" not in tex  # unicode dashes and symbols spelled for LaTeX
    assert latex_escape("-0.012 [−0.1, +0.2] ≥ 5 {x}") == "$-$0.012 [$-$0.1, +0.2] $\\geq$ 5 \\{x\\}"


def test_html_is_escaped_by_the_template(eight_arms):
    _, runs = eight_arms
    for r in runs[:1]:
        r.arm = "<b>bold</b>"
    report = build_report(runs[:2], title="A & B <i>", config=ReportConfig(n_bootstrap=200, overlay_images=0))
    page = report.files["index.html"].decode()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "<title>A &amp; B &lt;i&gt;</title>" in page
    assert report.files["results.md"].decode().startswith("# A & B <i>\n")
