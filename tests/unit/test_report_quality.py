"""The report's "Synthetic data quality" section: a table per feature space with the floor
first, quality.csv / .tex, the Inception note, the closest pairs drawn from the datasets
the quality JSON names, and the gain-against-FD points from the paired comparisons."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.evaluator.config import QualityConfig, ReportConfig
from services.evaluator.core.features import decode_features, encode_features
from services.evaluator.core.quality import FLOOR, SourceInput, assess_quality
from services.evaluator.core.report_quality import NO_INCEPTION, gain_points
from services.evaluator.core.report_rows import Stats, comparison_rows
from services.evaluator.core.reports import RunInput, build_report
from tests.unit.test_evaluator_reports import make_runs, make_truth
from tests.unit.test_quality import feature_sets

#: (arm, real, composite, gan, shift): the composite arm trained on source "good", the GAN
#: arm's seed 0 on "copy" and seed 1 on "shifted" (a GAN per seed).
ARMS = [("real", 20, 0, 0, 5), ("comp", 20, 40, 0, 3), ("gan", 20, 0, 40, 2)]
SOURCE_OF = {("comp", 0): "good", ("comp", 1): "good", ("gan", 0): "copy", ("gan", 1): "shifted"}


def quality_doc(space: str = "segmenter_fpn", seed: int = 3) -> dict:
    features = decode_features(encode_features(space, feature_sets()))
    sources = [SourceInput("good"), SourceInput("copy", {"truth_dataset": "dcopy", "per_image": [
        {"image_id": i, "iou": v} for i, v in enumerate([0.2, 0.6, 0.8, 1.0])]}, "evals/copy.json"), SourceInput("shifted")]
    return assess_quality(features, sources, QualityConfig(kid_subsets=20), seed)


def study_runs() -> list[RunInput]:
    rng = np.random.default_rng(0)
    truth, masks = make_truth(10, rng)
    runs = make_runs(truth, masks, ARMS, (0, 1), rng)
    for r in runs:
        r.quality_source = SOURCE_OF.get((r.arm, r.seed), "")
    return runs


@pytest.fixture(scope="module")
def built():
    runs = study_runs()
    doc = quality_doc()
    loaded = []

    def load(dataset: str, image_id: int) -> np.ndarray:
        loaded.append((dataset, image_id))
        return np.full((6, 6, 3), image_id % 255, np.uint8)

    report = build_report(runs, config=ReportConfig(n_bootstrap=200, overlay_images=0), seed=1, quality=[doc],
                          quality_images=load)
    return runs, doc, report, loaded


def test_section_tables_floor_first_and_the_inception_note(built):
    _, doc, report, _ = built
    page, md = report.files["index.html"].decode(), report.files["results.md"].decode()
    section = page.split('<h2 id="quality">')[1].split("<h2 ")[0]
    assert NO_INCEPTION in section and NO_INCEPTION in md
    assert '<a href="#quality">' in page and 'id="quality-segmenter_fpn"' in section
    assert "Against the held-out real test images" in section and "Against real training images" in section
    rows = section.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert [r.split("</td>")[0].split(">")[-1] for r in rows] == [f"{FLOOR} (floor)", "good", "copy", "shifted"]
    copy = doc["rows"][2]
    assert f"{copy['vs_test']['kid_mean'] * 1e3:.2f} ± {copy['vs_test']['kid_std'] * 1e3:.2f}" in rows[2]
    assert f"{100 * copy['memorisation']['near_copy_share']:.1f}%" in rows[2]
    assert "0.650 [0.50, 0.85]" in rows[2]  # mask fidelity: mean [q25, q75] of 0.2, 0.6, 0.8, 1.0
    assert f"n = {doc['sample_size']} images" in section
    assert "### Feature space: segmenter_fpn" in md and "| real-vs-real (floor) |" in md


def test_quality_csv_and_latex(built):
    _, doc, report, _ = built
    rows = list(csv.DictReader(io.StringIO(report.files["quality.csv"].decode())))
    assert [r["label"] for r in rows] == [FLOOR, "good", "copy", "shifted"]
    for row, src in zip(rows, doc["rows"]):
        assert float(row["fd_test"]) == src["vs_test"]["fd"] and float(row["coverage_train"]) == src["vs_train"]["coverage"]
        assert float(row["near_copy_share"]) == src["memorisation"]["near_copy_share"]
        assert float(row["ratio_q50"]) == src["memorisation"]["ratio_quantiles"]["q50"]
    assert rows[2]["fidelity_mean_iou"] == "0.65" and rows[1]["fidelity_mean_iou"] == ""
    tex = report.files["quality.tex"].decode()
    assert "\\label{tab:synthaug-quality}" in tex and "$\\pm$" in tex and "real-vs-real (floor)" in tex
    assert "quality.csv" in report.files["index.html"].decode()  # listed among the files


def test_closest_pairs_are_drawn_from_the_named_datasets(built):
    _, doc, report, loaded = built
    for stem in ("closest_pairs_segmenter_fpn", "quality_gain_segmenter_fpn"):
        assert report.files[f"{stem}.pdf"].startswith(b"%PDF-") and f"{stem}.svg" in report.files
    expected = []
    for row in doc["rows"][1:]:
        for p in row["closest_pairs"]:
            expected += [(row["dataset"], p["synthetic_id"]), ("dreal", p["train_id"])]
    assert loaded == expected and len(loaded) == 2 * 3 * 8


def test_gain_points_pair_each_arm_with_its_sources_fd(built):
    runs, doc, _, _ = built
    comparisons = comparison_rows({"internal": runs}, "real", Stats(200, 1))
    points = {p.arm: p for p in gain_points(doc, runs, comparisons)}
    fd = {r["label"]: r["vs_test"]["fd"] for r in doc["rows"]}
    assert set(points) == {"comp", "gan"}
    assert points["comp"].fd == pytest.approx(fd["good"]) and points["comp"].sources == ("good",)
    gan = points["gan"]
    assert gan.sources == ("copy", "shifted") and gan.fd == pytest.approx((fd["copy"] + fd["shifted"]) / 2)
    assert (gan.fd_low, gan.fd_high) == (min(fd["copy"], fd["shifted"]), max(fd["copy"], fd["shifted"]))
    c = next(c for c in comparisons if c["arm"] == "gan")
    assert (gan.gain, gan.ci_low, gan.ci_high) == (c["mean_difference"], c["ci_low"], c["ci_high"])
    assert gan.generator == "gan"


def test_two_feature_spaces_and_errors():
    runs = study_runs()
    fpn, inception = quality_doc(), quality_doc("inception")
    report = build_report(runs, config=ReportConfig(n_bootstrap=200, overlay_images=0), quality=[fpn, inception])
    page = report.files["index.html"].decode()
    assert NO_INCEPTION not in page and 'id="quality-inception"' in page and "closest_pairs_inception.png" in report.files
    # Without quality_images the pairs are drawn grey, not skipped.
    assert "closest_pairs_segmenter_fpn.png" in report.files
    cfg = ReportConfig(n_bootstrap=200, overlay_images=0)
    with pytest.raises(InvalidArgument, match="feature space 'segmenter_fpn' appears twice"):
        build_report(runs, config=cfg, quality=[fpn, fpn])
    bad = study_runs()
    bad[2].quality_source = "gan-s9"
    with pytest.raises(InvalidArgument, match="quality_source 'gan-s9' is not a source of the quality results"):
        build_report(bad, config=cfg, quality=[fpn])
    with pytest.raises(InvalidArgument, match=r"quality\[0\]: format must be 'synthaug.quality/1'"):
        build_report(runs, config=cfg, quality=[{"format": "x"}])
    broken = {**fpn, "rows": [fpn["rows"][1], fpn["rows"][0]]}
    with pytest.raises(InvalidArgument, match=r"quality\[0\].rows must start with the 'real-vs-real' row"):
        build_report(runs, config=cfg, quality=[broken])
    # No quality: no section, no files (and a run may then name no quality source).
    with pytest.raises(InvalidArgument, match="quality_source 'good' is not a source of the quality results \\(none given\\)"):
        build_report(runs, config=cfg)
    for r in runs:
        r.quality_source = ""
    plain = build_report(runs, config=cfg)
    assert 'id="quality"' not in plain.files["index.html"].decode() and "quality.csv" not in plain.files
