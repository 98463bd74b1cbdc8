"""What a full report contains: tables per test set, the in-domain vs out-of-domain table,
Holm-adjusted comparisons, per-seed and per-image rows, the training budget (and its
warning), synthetic-data counts, provenance and the contact sheet — checked against values
computed here by hand."""
from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from scipy import stats as sps

from services.common.errors import InvalidArgument
from services.evaluator.config import ReportConfig
from services.evaluator.core.compare import per_image_values
from services.evaluator.core.provenance import parse_provenance
from services.evaluator.core.reports import ImageSet, build_report
from services.evaluator.core.stats import holm_adjust
from services.evaluator.core.training import summarize_training
from tests.unit.test_evaluator_reports import make_runs, make_truth

ARMS = [("real", 20, 0, 0, 5), ("comp_2k", 20, 40, 0, 3), ("gan-2k", 20, 0, 40, 4)]
SEEDS = {"real": (0, 1, 2), "comp_2k": (0, 1, 2), "gan-2k": (0, 1)}
STEPS = {"real": 625, "comp_2k": 1875, "gan-2k": 1875}  # the thesis' confound: 3× the steps


def budget_record(seed: int, iterations: int, eval_every: int = 125, batch: int = 4) -> dict:
    """A training record in the iteration-budget format; validation peaks mid-way."""
    its = list(range(eval_every, iterations + 1, eval_every))
    val = [0.6 + 0.2 * np.sin(np.pi * it / iterations) - 0.01 * seed for it in its]
    best = int(np.argmax(val))
    return {
        "epochs": [{"epoch": i, "iteration": it, "losses": {"loss": 1.0 / (i + 1)}, "val": {"iou": v, "f1": v + 0.1}}
                   for i, (it, v) in enumerate(zip(its, val))],
        "best_epoch": best, "select_metric": "iou",
        "budget": {"mode": "iterations", "iterations": iterations, "iterations_run": iterations,
                   "images_seen": iterations * batch, "batch_size": batch, "world_size": 1, "eval_every": eval_every,
                   "real_fraction": None,
                   # As the segmenter writes it: one count per training source, in source order.
                   "images_seen_by_source": [iterations * batch // 3, iterations * batch - iterations * batch // 3]},
        "training_set": {"sources": [{"name": "dataset r split train", "kind": "real"}, {"name": "dataset c split (all)", "kind": "composite"}]},
    }


PROVENANCE = {
    "format": "synthaug.provenance/1", "run_id": "run-0123456789abcdef", "plan": "ood-study", "code_version": "0.1.0",
    "steps": [{"label": "dataset", "kind": "dataset", "key": "k" * 64, "code_digest": "d" * 64},
              {"label": "compose", "kind": "compose", "key": "c" * 64, "code_digest": "e" * 64},
              {"label": "segment_train gan-2k s0", "kind": "segment_train", "key": "f" * 64, "code_digest": "0" * 64,
               "arm": "gan-2k", "seed": 0}],
    "datasets": [{"role": "real", "id": "a" * 32, "name": "isic"}, {"role": "split", "id": "b" * 32},
                 {"role": "composite", "id": "c" * 32}, {"role": "gan", "id": "9" * 32},
                 {"role": "test_set", "id": "8" * 32, "label": "ph2", "name": "ph2-import"}],
    "synthesis": {"real": 20},
    "arms": [{"name": "real", "real": 20}, {"name": "comp_2k", "real": 20, "composite": 40},
             {"name": "gan-2k", "real": 20, "gan": 40, "segmenter": {"lr": 0.01, "epochs": 4}}],
    "budget": {"mode": "epochs"},
}


def study(steps: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    truth, masks = make_truth(12, rng)
    truth2, masks2 = make_truth(9, np.random.default_rng(seed + 5))
    records = {(arm, s): budget_record(s, steps[arm]) for arm, *_ in ARMS for s in SEEDS[arm]}
    runs = []
    for arm in ARMS:
        runs += make_runs(truth, masks, [arm], SEEDS[arm[0]], rng, records=records)
        runs += make_runs(truth2, masks2, [arm], SEEDS[arm[0]], rng, "ph2", records, extra_shift=1)
    return truth, truth2, runs


@pytest.fixture(scope="module")
def full():
    truth, truth2, runs = study(STEPS)
    report = build_report(runs, truth, "OOD study", config=ReportConfig(overlay_images=3, n_bootstrap=300, contact_images=4),
                          seed=1, test_sets=[ImageSet("ph2", truth2)],
                          contact=[ImageSet("real", truth), ImageSet("composite", truth2)], provenance=PROVENANCE)
    return runs, report, report.files["index.html"].decode(), report.files["results.md"].decode()


def rows(report, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report.files[name].decode())))


def test_one_results_and_comparison_table_and_figures_per_test_set(full):
    _, report, page, md = full
    for label, n in (("internal", 12), ("ph2", 9)):
        section = page.split(f'<h2 id="test-set-{label}">')[1].split("<h2 ")[0]
        assert f"Results — test set {label} ({n} images)" in section
        assert section.count("<table>") == 2  # results and paired comparisons
        assert f"Paired comparisons — test set {label}" in section
        assert f"## Results — test set {label} ({n} images)" in md
    for stem in ("metrics_bar", "es_vs_ratio", "overlays"):
        assert f"{stem}.pdf" in report.files and f"{stem}_ph2.pdf" in report.files
    results = rows(report, "results.csv")
    assert [(r["test_set"], r["arm"]) for r in results] == [
        ("internal", "real"), ("internal", "comp_2k"), ("internal", "gan-2k"), ("ph2", "real"), ("ph2", "comp_2k"), ("ph2", "gan-2k")]
    # Markdown keeps the test set as a column, each arm's line still starting with its name.
    assert re.search(r"^\| comp_2k \| ph2 \| 3 \| 9 \|", md, re.MULTILINE)


def test_domain_table_is_the_headline_with_hand_computed_differences(full):
    runs, report, page, md = full
    assert page.index("In-domain vs out-of-domain") < page.index('id="test-set-internal"')
    assert md.index("## In-domain vs out-of-domain") < md.index("## Results")
    domain = rows(report, "domain_shift.csv")
    assert len(domain) == 3 * 2
    for row in domain:
        if row["arm"] == "real":
            assert row["mean_difference"] == ""  # the baseline itself
            continue
        mine = [r for r in runs if r.arm == row["arm"] and r.test_set == row["test_set"]]
        base = [r for r in runs if r.arm == "real" and r.test_set == row["test_set"]]
        a = np.mean([list(per_image_values(r.evaluation, "iou").values()) for r in mine], axis=0)
        b = np.mean([list(per_image_values(r.evaluation, "iou").values()) for r in base], axis=0)
        assert float(row["mean_difference"]) == pytest.approx((a - b).mean())
        assert float(row["ci_low"]) <= float(row["mean_difference"]) <= float(row["ci_high"])
        assert float(row["p_value"]) == pytest.approx(sps.wilcoxon(a - b).pvalue)


def test_paired_comparisons_carry_raw_and_holm_p(full):
    _, report, page, md = full
    comp = rows(report, "comparisons.csv")
    assert len(comp) == 2 * 2  # two arms against the baseline on two test sets: one family of four
    raw = [float(r["p_value"]) for r in comp]
    assert [float(r["p_holm"]) for r in comp] == pytest.approx(list(holm_adjust(raw)))
    assert all(float(r["p_holm"]) >= float(r["p_value"]) for r in comp)
    assert "<th>Wilcoxon p</th><th>Holm p</th>" in page and "| Wilcoxon p | Holm p |" in md


def test_per_image_csv_has_every_image_arm_seed_and_test_set(full):
    runs, report, _, _ = full
    per_image = rows(report, "per_image.csv")
    seeds = sum(len(s) for s in SEEDS.values())
    assert len(per_image) == 12 * seeds + 9 * seeds  # images × arms × seeds × test sets
    assert list(per_image[0])[:5] == ["test_set", "arm", "seed", "image_id", "image"]
    run = next(r for r in runs if r.arm == "gan-2k" and r.seed == 1 and r.test_set == "ph2")
    mine = [r for r in per_image if (r["arm"], r["seed"], r["test_set"]) == ("gan-2k", "1", "ph2")]
    assert [float(r["iou"]) for r in mine] == pytest.approx([x["iou"] for x in run.evaluation["per_image"]])
    per_seed = rows(report, "per_seed.csv")
    assert len(per_seed) == 2 * seeds and per_seed[0]["steps"] == "625"


def test_fewer_than_three_seeds_get_no_t_interval_and_say_why(full):
    runs, report, page, md = full
    results = {(r["test_set"], r["arm"]): r for r in rows(report, "results.csv")}
    gan = results[("internal", "gan-2k")]
    assert gan["iou_seed_ci_low"] == "" and gan["mask_ap_seed_ci_low"] == ""
    assert gan["iou_ci_low"] != ""  # the interval over images stays
    per_seed = [r.evaluation["mean_iou"] for r in runs if r.arm == "gan-2k" and r.test_set == "internal"]
    assert gan["iou_per_seed"] == ";".join(repr(float(v)) for v in per_seed)
    real = results[("internal", "real")]
    v = [r.evaluation["mean_iou"] for r in runs if r.arm == "real" and r.test_set == "internal"]
    half = sps.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    assert (float(real["iou_seed_ci_low"]), float(real["iou_seed_ci_high"])) == pytest.approx(
        (max(np.mean(v) - half, 0), min(np.mean(v) + half, 1)))
    for text in (page, md):
        note = re.search(r"([^.>]*): fewer than 3 seeds, so no across-seed interval", text)
        assert note and note.group(1).strip() == "gan-2k"
        assert " / ".join(f"{x:.3f}" for x in per_seed) in text


def test_unequal_budgets_warn_in_html_and_markdown(full):
    _, report, page, md = full
    (warning,) = [w for w in report.warnings if w.startswith("Unequal training budgets")]
    assert "1,875" in warning and "625" in warning and "3.00×" in warning
    assert '<div class="warning"><strong>Warning:</strong> Unequal training budgets' in page
    assert "> **Warning:** Unequal training budgets" in md
    budget = rows(report, "budget.csv")
    assert [(r["arm"], r["seed"], r["steps"], r["images_seen"]) for r in budget][:2] == [
        ("real", "0", "625", "2500"), ("real", "1", "625", "2500")]
    # ≤ 10% apart: no warning.
    _, _, runs = study({"real": 1000, "comp_2k": 1100, "gan-2k": 1050}, seed=3)
    quiet = build_report(runs, config=ReportConfig(n_bootstrap=200, overlay_images=0))
    assert quiet.warnings == []
    assert "Warning" not in quiet.files["index.html"].decode() and "Warning" not in quiet.files["results.md"].decode()


def test_training_summaries_from_new_and_old_records():
    new = summarize_training("a", 0, budget_record(0, 1000, eval_every=250))
    assert (new.mode, new.steps, new.images_seen, new.x_axis, new.xs) == ("iterations", 1000, 4000, "iteration",
                                                                          [250, 500, 750, 1000])
    assert new.selected == "iteration 500" and new.recorded_budget
    # An epoch-based record without "budget": steps and images from the per-epoch counts.
    old = {"epochs": [{"epoch": e, "iterations": 50, "images": 400, "val": {"iou": 0.5 + 0.1 * e}} for e in range(3)],
           "best_epoch": 2, "config": {"batch_size": 8}, "world_size": 1}
    s = summarize_training("a", 0, old)
    assert (s.mode, s.steps, s.images_seen, s.xs, s.selected) == ("epochs", 150, 1200, [50, 100, 150], "iteration 150")
    # Only the per-iteration log: steps are its length, images steps × batch × world size.
    older = {"epochs": [{"epoch": 0, "val": {}}], "steps": [{"iter": i} for i in range(30)], "config": {"batch_size": 2},
             "world_size": 2}
    s = summarize_training("a", 0, older)
    assert (s.steps, s.images_seen, s.x_axis, s.selected) == (30, 120, "epoch", "")
    with pytest.raises(InvalidArgument, match="budget.images_seen must be an integer"):
        summarize_training("a", 0, {"epochs": [], "budget": {"images_seen": "many"}})


def test_synthetic_data_and_provenance_sections(full):
    _, report, page, md = full
    assert "first <strong>N = 20</strong> real training images" in page and "N = 20" in md
    section = page.split('<h2 id="synthetic-data">')[1].split("<h2 ")[0]
    assert "<td class=\"l\">gan-2k</td><td class=\"r\">20</td><td class=\"r\">0</td><td class=\"r\">40</td>" in section
    assert 'epochs=4, lr=0.01' in section  # the per-arm segmenter overrides
    assert json.loads(report.files["provenance.json"]) == PROVENANCE
    prov = page.split('<h2 id="provenance">')[1].split('<h2 id="methods">')[0]
    assert "run-0123456789abcdef" in prov and "ood-study" in prov
    assert "8" * 32 in prov and "ph2-import" in prov  # the test set's dataset id
    assert "c" * 16 + "…" in prov and "c" * 17 not in prov.replace("c" * 32, "")  # keys shortened on the page
    assert "| segment_train gan-2k s0 | segment_train | ffffffffffffffff… | 0000000000000000… | gan-2k | 0 | – |" in md


def test_provenance_errors_name_the_item():
    for doc, needle in [
        ({}, "provenance.format must be 'synthaug.provenance/1'"),
        ({**PROVENANCE, "steps": [PROVENANCE["steps"][0], {"label": "x", "kind": "y", "code_digest": "z"}]},
         "provenance.steps[1].key must be a non-empty string"),
        ({**PROVENANCE, "datasets": [{"role": "test_set", "id": "x"}]}, "provenance.datasets[0].label"),
        ({**PROVENANCE, "synthesis": {"real": -1}}, "provenance.synthesis.real must be an integer ≥ 0"),
        ({**PROVENANCE, "arms": [{"name": "a", "real": 1, "segmenter": [1]}]}, "provenance.arms[0].segmenter"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            parse_provenance(json.dumps(doc))
        assert needle in str(info.value), (needle, str(info.value))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_provenance("{")


def test_contact_sheet_and_validation_curves(full):
    _, report, page, _ = full
    assert 'id="fig-contact_sheet"' in page and "Training images: real, composite" in page
    assert report.files["contact_sheet.pdf"].startswith(b"%PDF-")
    assert 'id="fig-validation_curves"' in page


def test_test_sets_must_match_the_runs():
    truth, truth2, runs = study(STEPS)
    internal = [r for r in runs if r.test_set == "internal"]
    with pytest.raises(InvalidArgument, match="test set 'ph2' has no runs"):
        build_report(internal, truth, test_sets=[ImageSet("ph2", truth2)], config=ReportConfig(n_bootstrap=200))
    with pytest.raises(InvalidArgument, match="seed 0 on test set 'ph2' appears twice"):
        build_report(runs + [next(r for r in runs if r.test_set == "ph2")])
