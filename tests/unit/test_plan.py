"""Plan validation names the bad field; the step graph and its keys behave as documented."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.graph import build_graph, training_order_seed
from orchestrator.plan import load_plan, load_plan_text, parse_plan
from services.common.config import config_to_mapping
from services.common.errors import InvalidArgument
from services.common.seeding import derive_seed
from services.compositor.config import BackgroundParams, ComposeParams, ForegroundParams
from services.evaluator.config import EvalConfig, ReportConfig
from services.gan.config import GanConfig, GenerateConfig
from services.segmenter.config import PredictConfig, SegmenterConfig
from tests.conftest import REPO

BASE = {
    "name": "p",
    "seeds": [1, 2],
    "dataset": {"demo": {"count": 20, "size": 64}},
    "arms": [
        {"name": "real", "real": 10},
        {"name": "comp", "real": 10, "composite": 30},
        {"name": "gan", "real": 10, "gan": 20},
        {"name": "hybrid", "real": 10, "composite": 10, "gan": 10},
    ],
}


def plan_with(**changes: object) -> dict:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arms": [{"name": "a", "real": 0}]}, "arms[0].real: Input should be greater than 0"),
        ({"arms": [{"name": "a", "real": 5, "composite": -1}]}, "arms[0].composite"),
        ({"arms": [{"name": "a", "real": 5, "gann": 3}]}, "arms[0].gann: Extra inputs are not permitted; known fields: name, real, composite, gan, segmenter"),
        ({"arms": []}, "arms: List should have at least 1 item"),
        ({"arms": [{"name": "a", "real": 5}, {"name": "a", "real": 6}]}, "arm names must be unique; repeated: ['a']"),
        ({"seeds": [1, 1]}, "seeds: seeds must be distinct"),
        ({"dataset": {"demo": {"count": 5}, "name": "x"}}, "dataset: give exactly one of `name`, `import` or `demo`"),
        ({"dataset": {"import": {"format": "masks", "images": "a"}}}, "dataset.import: format 'masks' needs `masks`"),
        ({"split": {"train": 0.5, "val": 0.2, "test": 0.2}}, "split: train + val + test must be 1"),
        ({"gan": {"config": {"ngf": "many"}}}, "gan.config.ngf must be an integer, got 'many'"),
        ({"segmenter": {"config": {"epochz": 3}}}, "segmenter.config: unknown field(s) epochz; known fields: architecture, weights, epochs"),
        ({"compositor": {"params": {"blend": "BLEND_MODE_GAUSSIAN"}}}, "compositor.params.blend must be one of hard, gaussian, poisson, got 'BLEND_MODE_GAUSSIAN'"),
        ({"compositor": {"params": {"scale": [0.2, 0.5]}}}, "compositor.params.scale must be a mapping of min, max"),
        ({"compositor": {"min_area": 16}}, "compositor.min_area: Extra inputs are not permitted; known fields: foregrounds, backgrounds, params, workers"),
        ({"dataset": {"demo": {"count": 5}, "improt": {}}}, "dataset.improt: Extra inputs are not permitted; known fields: name, import, demo"),
        ({"name": "bad name!"}, "name: String should match pattern"),
    ],
)
def test_validation_names_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)


def test_yaml_errors() -> None:
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        load_plan_text("name: [unclosed")
    with pytest.raises(InvalidArgument, match="must be a YAML mapping"):
        load_plan_text("- a\n- b")
    with pytest.raises(InvalidArgument, match="not found"):
        load_plan("/nonexistent/plan.yaml")
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        load_plan_text("[" * 50_000 + "]" * 50_000)


def test_graph_shape_and_nesting() -> None:
    g = build_graph(parse_plan(BASE))
    kinds = [s.kind for s in g.steps]
    # one dataset, one split, shared synthesis, then 4 arms × 2 seeds × (train, predict, evaluate), one report
    assert kinds.count("dataset") == kinds.count("split") == 1
    assert kinds.count("foregrounds") == kinds.count("backgrounds") == 1
    assert kinds.count("compose") == 2  # composites and separate GAN masks
    assert kinds.count("gan_train") == kinds.count("gan_generate") == 1
    assert kinds.count("segment_train") == kinds.count("predict") == kinds.count("evaluate") == 8
    assert kinds.count("report") == 1
    composes = {s.params["role"]: s for s in g.of_kind("compose")}
    assert composes["composite"].params["count"] == 30 and composes["gan_masks"].params["count"] == 20
    assert composes["composite"].params["seed"] != composes["gan_masks"].params["seed"]
    assert g.of_kind("gan_generate")[0].deps["masks"] is composes["gan_masks"]
    hybrid = [s for s in g.of_kind("segment_train") if s.arm == "hybrid"]
    assert {tuple(sorted(s.deps)) for s in hybrid} == {("composite", "gan", "real")}
    keys = [s.key for s in g.steps]
    assert len(set(keys)) == len(keys)
    # topological order
    seen: set[str] = set()
    for s in g.steps:
        assert all(d.key in seen for d in s.deps.values())
        seen.add(s.key)


def test_keys_change_exactly_downstream() -> None:
    a = {s.label: s.key for s in build_graph(parse_plan(BASE)).steps}
    changed = plan_with(segmenter={"config": {"epochs": 7}})
    b = {s.label: s.key for s in build_graph(parse_plan(changed)).steps}
    same = {label for label in a if a[label] == b[label]}
    assert same == {"dataset", "split", "real prefix 10 for synthesis", "foregrounds", "backgrounds", "compose composites", "compose GAN masks", "train GAN", "generate GAN images"}
    assert build_graph(parse_plan(BASE)).steps[-1].key == build_graph(parse_plan(dict(BASE))).steps[-1].key


def test_per_seed_gan_and_no_synthesis() -> None:
    g = build_graph(parse_plan(plan_with(gan={"per_seed": True})))
    assert len(g.of_kind("gan_train")) == 2 and len(g.of_kind("gan_generate")) == 2
    only_real = build_graph(parse_plan(plan_with(arms=[{"name": "r", "real": 5}])))
    # No synthetic arm: no synthesis prefix either.
    assert [s.kind for s in only_real.steps] == ["dataset", "split", "segment_train", "predict", "evaluate", "segment_train", "predict", "evaluate", "report"]


def test_shipped_plans_are_valid() -> None:
    thesis = load_plan(REPO / "examples" / "thesis-table4.yaml")
    assert [(a.real, a.composite, a.gan) for a in thesis.arms] == [
        (1000, 0, 0), (1000, 2000, 0), (1000, 0, 2000), (1000, 1000, 1000), (1000, 14000, 0), (1000, 0, 14000), (1000, 7000, 7000)
    ]
    demo = load_plan(REPO / "examples" / "demo.yaml")
    assert demo.dataset.demo is not None


def test_dry_run_shows_the_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.yaml"
    import yaml

    plan.write_text(yaml.safe_dump(BASE))
    assert main(["run", str(plan), "--dry-run", "--store", f"file://{tmp_path}/store"]) == 0
    out = capsys.readouterr().out
    assert "34 steps (0 cached)" in out
    assert "new key" in out and "code digests" in out
    assert "train arm=hybrid seed=2" in out and "compose GAN masks" in out
    assert main(["run", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2


def test_loss_components_of_progress_metrics() -> None:
    from orchestrator.metrics import loss_components

    segmenter_epoch = {"loss/loss_mask": 0.3, "loss/loss_classifier": 0.2, "images_per_s": 5.0, "val/iou": 0.7}
    assert loss_components(segmenter_epoch) == {"loss_mask": 0.3, "loss_classifier": 0.2}
    assert loss_components({"loss": 1.5, "lr": 0.01}) == {"total": 1.5}
    assert loss_components({"G_L1": 20.0, "D_fake": 0.6, "pairs_per_s": 3.0}) == {"G_L1": 20.0, "D_fake": 0.6}



def test_quality_figures_of_a_quality_jobs_metrics() -> None:
    from orchestrator.metrics import quality_figures

    metrics = {"sample_size": 15.0, "real-vs-real.fd_test": 10.0, "gan-s0.fd_test": 80.0, "gan-s0.mask_fidelity": 0.4, "v1.2.kid_test": 0.1}
    assert quality_figures(metrics) == {("real-vs-real", "fd_test"): 10.0, ("gan-s0", "fd_test"): 80.0, ("gan-s0", "mask_fidelity"): 0.4,
                                        ("v1.2", "kid_test"): 0.1}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"evaluation": {"n_bootstrap": 50}}, "evaluation.n_bootstrap must be in [100, 100000], got 50"),
        ({"evaluation": {"overlay_images": 100}}, "evaluation.overlay_images must be in [0, 24] (0 = none), got 100"),
        ({"image_size": 16}, "image_size: Input should be greater than or equal to 32"),
        ({"arms": [{"name": "a", "real": 5, "segmenter": {"lr": -1.0}}]}, "arms[0].segmenter: lr must be ≥ 0, got -1.0"),
        ({"arms": [{"name": "a", "real": 5, "segmenter": {"gamma": 0.5}}]}, "arms[0].segmenter: unknown field(s) gamma"),
        ({"arms": [{"name": "a", "real": 5, "segmenter": {"min_size": 64}}]}, "arms[0].segmenter: min_size follow the plan's image_size"),
        ({"evaluation": {"export_threshold": 2.0}}, "evaluation.export_threshold must be in [0, 1], got 2.0"),
        ({"segmenter": {"config": {"architecture": "unet"}}}, "segmenter.config.architecture 'unet' is unknown"),
        ({"gan": {"config": {"norm": "layer"}}}, "gan.config.norm must be one of"),
        ({"compositor": {"params": {"min_objects": 3, "max_objects": 2}}}, "compositor.params.max_objects (2) must be ≥ min_objects (3)"),
        ({"compositor": {"backgrounds": {"dilate_px": -1}}}, "compositor.backgrounds.dilate_px must be in [0, 256], got -1"),
        ({"segmenter": {"predict": {"batch_size": 0}}}, "segmenter.predict.batch_size must be ≥ 1, got 0"),
        ({"gan": {"generate": {"batchnorm": "frozen"}}}, "gan.generate.batchnorm must be one of"),
    ],
)
def test_values_the_services_would_reject_fail_up_front(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)


def test_group_csv_content_enters_the_split_key(tmp_path: Path) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text("image,lesion_id\na,1\n")
    plan = plan_with(split={"train": 0.6, "val": 0.2, "test": 0.2, "group_csv": str(csv), "group_column": "lesion_id"})
    before = build_graph(parse_plan(plan)).of_kind("split")[0].key
    csv.write_text("image,lesion_id\na,2\n")
    assert build_graph(parse_plan(plan)).of_kind("split")[0].key != before


@pytest.mark.parametrize(
    "changes, message",
    [
        # Settings the service has but its request does not carry would be silently dropped.
        ({"segmenter": {"config": {"gamma": 0.5}}}, "segmenter.config: unknown field(s) gamma"),
        # What the orchestrator sets itself: counts from the arms, seeds from the plan's.
        ({"gan": {"generate": {"count": 5}}}, "gan.generate: unknown field(s) count; known fields: dropout, batchnorm, resize, batch_size"),
        ({"evaluation": {"seed": 3}}, "evaluation: unknown field(s) seed"),
        (
            {"evaluation": {"export_threshold": 0.5, "score_threshold": 0.3}},
            "evaluation.export_threshold (0.5) is above evaluation.score_threshold (0.3)",
        ),
        # One place for the export threshold: the evaluation decides what predictions keep.
        ({"segmenter": {"predict": {"export_threshold": 0.1}}}, "set it as evaluation.export_threshold"),
        # The budget has its own section.
        ({"segmenter": {"config": {"iterations": 100}}}, "set the training budget as segmenter.budget: {iterations: N}"),
        ({"evaluation": {"mask_threshold": 0.4}}, "evaluation.mask_threshold (0.4) differs from segmenter.predict.mask_threshold (0.5)"),
    ],
)
def test_plans_set_only_what_reaches_the_service(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)


def test_settings_default_to_the_services_dataclasses_and_keys_name_resolved_settings() -> None:
    g = build_graph(parse_plan(BASE))
    step = {s.kind: s for s in g.steps}
    assert step["foregrounds"].params["settings"] == ForegroundParams()
    # An unset background method resolves to what the compositor does with a dataset.
    assert step["backgrounds"].params["settings"] == BackgroundParams(method="inpaint_telea")
    assert step["compose"].params["params"] == ComposeParams()
    assert step["gan_train"].params["config"] == GanConfig()
    assert step["gan_generate"].params["settings"] == GenerateConfig(count=20)
    # The segmenter's defaults, with the plan's image size and the equal budget filled in.
    assert step["segment_train"].params["config"] == SegmenterConfig(min_size=256, max_size=256, iterations=36, eval_every=3)
    assert step["predict"].params["settings"] == PredictConfig()
    evaluate = step["evaluate"].params["settings"]
    assert evaluate.mask_threshold == PredictConfig().mask_threshold  # read at the threshold masks were cut at
    assert (evaluate.score_threshold, evaluate.n_bootstrap) == (EvalConfig().score_threshold, EvalConfig().n_bootstrap)
    assert step["report"].params["settings"] == ReportConfig()
    # Spelling out a default is the same plan: the same keys, because keys hash resolved settings.
    explicit = plan_with(
        compositor={"params": {"output_size": ComposeParams().output_size}, "backgrounds": {"method": "inpaint_telea"}},
        segmenter={"predict": {k: v for k, v in config_to_mapping(PredictConfig()).items() if k != "export_threshold"}},
        evaluation={"n_bootstrap": EvalConfig().n_bootstrap, "export_threshold": PredictConfig().export_threshold},
    )
    assert [s.key for s in build_graph(parse_plan(explicit)).steps] == [s.key for s in g.steps]


def test_one_n_bootstrap_sets_the_evaluations_and_the_reports() -> None:
    plan = parse_plan(plan_with(evaluation={"n_bootstrap": 500, "overlay_images": 3, "baseline_arm": "real"}))
    assert plan.evaluation.evaluate.n_bootstrap == plan.evaluation.report.n_bootstrap == 500
    assert (plan.evaluation.report.overlay_images, plan.evaluation.report.baseline_arm) == (3, "real")


def test_loading_a_plan_imports_no_server_and_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from orchestrator.plan import load_plan\n"
        "load_plan('examples/demo.yaml'); load_plan('examples/thesis-table4.yaml'); load_plan('examples/thesis-table4-epochs.yaml')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.endswith('.server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stderr


# --- one image size ---------------------------------------------------------------------------


def test_every_size_follows_the_plans_image_size() -> None:
    plan = parse_plan(plan_with(image_size=64, gan={"config": {"depth": 6}}))
    assert plan.compositor.params.output_size == plan.gan.config.image_size == 64
    assert all((plan.arm_segmenter(a).min_size, plan.arm_segmenter(a).max_size) == (64, 64) for a in plan.arms)
    default = parse_plan(BASE)
    assert default.image_size == 256 and default.compositor.params.output_size == 256 and default.segmenter.config.max_size == 256
    # Spelling out the same size is the same plan.
    same = parse_plan(plan_with(image_size=64, gan={"config": {"depth": 6, "image_size": 64}}, compositor={"params": {"output_size": 64}}))
    assert [s.key for s in build_graph(same).steps] == [s.key for s in build_graph(plan).steps]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_size": 64, "compositor": {"params": {"output_size": 128}}}, "compositor.params.output_size (128) differs from image_size (64)"),
        ({"gan": {"config": {"image_size": 512}}}, "gan.config.image_size (512) differs from image_size (default 256)"),
        ({"image_size": 96, "segmenter": {"config": {"min_size": 800}}}, "segmenter.config.min_size (800) differs from image_size (96)"),
        ({"image_size": 96, "segmenter": {"config": {"max_size": 1333}}}, "segmenter.config.max_size (1333) differs from image_size (96)"),
    ],
)
def test_a_service_size_that_disagrees_names_both_fields(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)


def test_imports_keep_their_own_size() -> None:
    imp = {"import": {"format": "masks", "images": "/i", "masks": "/m"}}
    plan = parse_plan(plan_with(dataset=imp, image_size=64, gan={"config": {"depth": 6}}))
    assert plan.dataset.import_ is not None and plan.dataset.import_.size == 256  # stored size ≠ training size
    keep = parse_plan(plan_with(dataset={"import": {**imp["import"], "size": "keep"}}))
    assert keep.dataset.import_ is not None and keep.dataset.import_.size == "keep"
    assert build_graph(keep).steps[0].params["import"]["size"] == "keep"
    with pytest.raises(InvalidArgument, match=r"dataset.import.size: .*size must be in \[32, 4096\] or 'keep', got 8"):
        parse_plan(plan_with(dataset={"import": {**imp["import"], "size": 8}}))


# --- synthesis from the real prefix -----------------------------------------------------------


def test_synthesis_reads_the_smallest_synthetic_arms_real_prefix() -> None:
    plan = parse_plan(plan_with(arms=[{"name": "r", "real": 40}, {"name": "c", "real": 20, "composite": 5}, {"name": "g", "real": 30, "gan": 5}]))
    assert plan.synthesis_real == 20  # the real-only arm's 40 do not count
    g = build_graph(plan)
    (subset,) = g.of_kind("subset")
    assert subset.params == {"split": "train", "count": 20, "order_seed": subset.params["order_seed"]}
    assert {s.deps["dataset"].key for s in g.of_kind("foregrounds") + g.of_kind("backgrounds") + g.of_kind("gan_train")} == {subset.key}
    # Every training source of every arm and seed uses the one order the prefix is taken from.
    assert {s.params["order_seed"] for s in g.of_kind("segment_train")} == {subset.params["order_seed"]}
    explicit = parse_plan(plan_with(synthesis={"real": 10}))
    assert explicit.synthesis_real == 10


def test_a_synthetic_arm_with_fewer_real_images_than_the_synthesis_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"arms\[1\] \(comp\) has 10 real images, fewer than synthesis.real \(15\)"):
        parse_plan(plan_with(synthesis={"real": 15}))


# --- training budget --------------------------------------------------------------------------


def test_default_budget_is_equal_and_sized_from_the_largest_real_only_arm() -> None:
    arms = [{"name": "r10", "real": 10}, {"name": "r21", "real": 21}, {"name": "mix", "real": 21, "composite": 60}]
    plan = parse_plan(plan_with(arms=arms, segmenter={"config": {"epochs": 5, "batch_size": 4}}))
    budget = plan.budget
    assert (budget.mode, budget.source, budget.reference) == ("iterations", "equal", "r21")
    assert budget.iterations == 6 * 5 and budget.eval_every == 6  # ceil(21 / 4) iterations per epoch
    configs = [plan.arm_segmenter(a) for a in plan.arms]
    assert {(c.iterations, c.eval_every) for c in configs} == {(30, 6)}
    # No real-only arm: the arm with the most real images sizes it.
    only_mixed = parse_plan(plan_with(arms=arms[2:], segmenter={"config": {"epochs": 5, "batch_size": 4}}))
    assert (only_mixed.budget.reference, only_mixed.budget.iterations) == ("mix", 30)


def test_budget_modes() -> None:
    epochs = parse_plan(plan_with(segmenter={"budget": {"epochs": 7}}))
    cfg = epochs.arm_segmenter(epochs.arms[1])
    assert (epochs.budget.mode, cfg.epochs, cfg.iterations, cfg.eval_every) == ("epochs", 7, None, None)
    iterations = parse_plan(plan_with(segmenter={"budget": {"iterations": 100}, "config": {"eval_every": 25}}))
    assert {(iterations.arm_segmenter(a).iterations, iterations.arm_segmenter(a).eval_every) for a in iterations.arms} == {(100, 25)}
    seen = parse_plan(plan_with(segmenter={"budget": {"images_seen": 401}, "config": {"batch_size": 8}}))
    assert (seen.budget.source, seen.budget.iterations) == ("images_seen", 51)
    # Validation every epoch of the reference arm, never beyond the budget.
    short = parse_plan(plan_with(segmenter={"budget": {"iterations": 2}}))
    assert short.budget.eval_every == 2


@pytest.mark.parametrize(
    "segmenter, message",
    [
        ({"budget": {}}, "give exactly one of `epochs`, `iterations` or `images_seen`"),
        ({"budget": {"epochs": 3, "iterations": 9}}, "give exactly one of"),
        ({"budget": {"iterations": 0}}, "segmenter.budget.iterations: Input should be greater than 0"),
        ({"budget": {"iterations": 50}, "config": {"epochs": 3}}, "segmenter.config.epochs (3) has no effect with segmenter.budget"),
        ({"budget": {"epochs": 4}, "config": {"epochs": 3}}, "segmenter.config.epochs (3) differs from segmenter.budget.epochs (4)"),
    ],
)
def test_budget_errors(segmenter: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(segmenter=segmenter))
    assert message in str(info.value)


def test_per_arm_overrides_are_deliberate_exceptions() -> None:
    arms = [{"name": "r", "real": 10}, {"name": "c", "real": 10, "composite": 20, "segmenter": {"lr": 0.005, "epochs": 3}}]
    plan = parse_plan(plan_with(arms=arms))
    base, special = (plan.arm_segmenter(a) for a in plan.arms)
    assert (special.lr, special.epochs, special.iterations) == (0.005, 3, None)  # epochs alone: this arm trains by epochs
    assert (base.lr, base.iterations) == (SegmenterConfig().lr, 36)
    g = build_graph(plan)
    assert {s.params["config"].lr for s in g.of_kind("segment_train") if s.arm == "c"} == {0.005}
    assert g.of_kind("report")[0].params["arms"][1]["segmenter"] == {"lr": 0.005, "epochs": 3}
    # A bad override names the arm.
    with pytest.raises(InvalidArgument, match=r"arms\[0\].segmenter: eval_every must be ≥ 1"):
        parse_plan(plan_with(arms=[{"name": "r", "real": 10, "segmenter": {"eval_every": 0}}]))


def test_shipped_plans_use_equal_budgets_one_size_and_the_real_prefix() -> None:
    thesis = load_plan(REPO / "examples" / "thesis-table4.yaml")
    assert (thesis.budget.mode, thesis.budget.iterations, thesis.synthesis_real, thesis.image_size) == ("iterations", 3750, 1000, 256)
    epochs = load_plan(REPO / "examples" / "thesis-table4-epochs.yaml")
    assert (epochs.budget.mode, epochs.budget.epochs) == ("epochs", 30)
    assert [a.model_dump() for a in epochs.arms] == [a.model_dump() for a in thesis.arms]
    demo = load_plan(REPO / "examples" / "demo.yaml")
    assert (demo.image_size, demo.budget.iterations, demo.synthesis_real, demo.evaluation.export_threshold) == (64, 40, 30, 0.05)


def test_export_threshold_reaches_predict() -> None:
    g = build_graph(parse_plan(plan_with(evaluation={"export_threshold": 0.01, "score_threshold": 0.4})))
    assert {s.params["settings"].export_threshold for s in g.of_kind("predict")} == {0.01}
    assert {s.params["settings"].score_threshold for s in g.of_kind("evaluate")} == {0.4}


def test_a_plan_without_gan_arms_is_not_held_to_the_gans_size_rules() -> None:
    plan = parse_plan(plan_with(image_size=96, arms=[{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5}]))
    assert plan.compositor.params.output_size == 96 and plan.arm_segmenter(plan.arms[0]).min_size == 96
    with pytest.raises(InvalidArgument, match=r"gan.config.image_size must be a positive multiple of 2\*\*depth = 256, got 96"):
        parse_plan(plan_with(image_size=96))


# --- external test sets ------------------------------------------------------------------------

TEST_SETS = [
    {"label": "ph2", "dataset": {"demo": {"count": 6, "seed": 7, "size": 96}}},
    {"label": "clinic-b", "dataset": {"import": {"format": "masks", "images": "b/images", "masks": "b/masks", "size": "keep"}}, "split": "test"},
]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"split": {"train": 0.8, "val": 0.2, "test": 0}}, "split.test is 0 (no internal test split): give test_sets to evaluate on"),
        ({"split": {"train": 0.8, "val": 0, "test": 0.2}}, "split: val must be > 0: model selection needs it"),
        ({"test_sets": [{"label": "internal", "dataset": {"demo": {"count": 5}}}]}, "test_sets[0].label: 'internal' is the internal test split's label"),
        ({"test_sets": [{"label": "a b", "dataset": {"demo": {"count": 5}}}]}, "test_sets[0].label: String should match pattern"),
        ({"test_sets": [{"label": "a", "dataset": {"demo": {"count": 5}}}, {"label": "a", "dataset": {"demo": {"count": 6}}}]},
         "test_sets labels must be unique; repeated: ['a']"),
        ({"test_sets": [{"label": "a", "dataset": {"demo": {"count": 20, "size": 64}}}]}, "test_sets[0] (a): its dataset is the training dataset"),
        ({"test_sets": [{"label": "a", "dataset": {"name": "x"}}, {"label": "b", "dataset": {"name": "x"}}]},
         "test_sets[1] (b) is the same data as test_sets[0] (a)"),
        ({"test_sets": [{"label": "a", "dataset": {"name": "x"}, "split": "dev"}]}, "test_sets[0].split: Input should be"),
        ({"test_sets": [{"label": "a", "dataset": {"import": {"format": "coco", "images": "i"}}}]},
         "test_sets[0].dataset.import: format 'coco' needs `annotations`"),
        ({"test_sets": [{"label": "a"}]}, "test_sets[0].dataset: Field required"),
    ],
)
def test_test_set_errors_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)


def test_every_arm_and_seed_is_predicted_and_evaluated_on_every_test_set() -> None:
    plan = parse_plan(plan_with(test_sets=TEST_SETS))
    assert plan.test_set_labels == ["internal", "ph2", "clinic-b"] and plan.internal_test
    g = build_graph(plan)
    split = g.of_kind("split")[0]
    (dataset,) = g.of_kind("dataset")
    sets = {s.test_set: s for s in g.of_kind("test_set")}
    assert list(sets) == ["ph2", "clinic-b"]
    assert all(s.deps == {"training": dataset} for s in sets.values())  # checked against the training data
    assert sets["ph2"].params == {"label": "ph2", "dataset": {"demo": {"count": 6, "seed": 7, "size": 96}}, "split": ""}
    assert sets["clinic-b"].params["dataset"]["import"]["size"] == "keep" and sets["clinic-b"].params["split"] == "test"
    assert sets["clinic-b"].params["dataset"]["fingerprint"]["images"] == {"missing": "b/images"}
    for kind in ("predict", "evaluate"):
        steps = g.of_kind(kind)
        assert len(steps) == len(plan.arms) * len(plan.seeds) * 3
        for arm in plan.arms:
            for seed in plan.seeds:
                mine = {s.test_set: s for s in steps if (s.arm, s.seed) == (arm.name, seed)}
                assert set(mine) == {"internal", "ph2", "clinic-b"}
                assert mine["internal"].deps["dataset"] is split and mine["internal"].params["split"] == "test"
                assert mine["ph2"].deps["dataset"] is sets["ph2"] and mine["ph2"].params["split"] == ""
                assert mine["clinic-b"].deps["dataset"] is sets["clinic-b"] and mine["clinic-b"].params["split"] == "test"
                # Labels name the test set (the internal one keeps the plain label).
                assert mine["internal"].label == f"{kind} arm={arm.name} seed={seed}"
                assert mine["ph2"].label == f"{kind} arm={arm.name} seed={seed} test_set=ph2"
                if kind == "evaluate":  # one bootstrap seed per training seed, on every test set
                    assert len({s.params["settings"].seed for s in mine.values()}) == 1
                    assert all(s.deps["predictions"].test_set == s.test_set for s in mine.values())
    report = g.of_kind("report")[0]
    assert len([r for r in report.deps if r.startswith("evaluation")]) == len(g.of_kind("evaluate"))
    keys = [s.key for s in g.steps]
    assert len(set(keys)) == len(keys)


def test_adding_a_test_set_recomputes_only_its_steps_and_the_report() -> None:
    before = {s.key: s.kind for s in build_graph(parse_plan(BASE)).steps}
    after = build_graph(parse_plan(plan_with(test_sets=TEST_SETS[:1])))
    new = [s for s in after.steps if s.key not in before]
    assert {s.kind for s in new} == {"test_set", "predict", "evaluate", "report"}
    assert all(s.test_set == "ph2" for s in new if s.kind != "report")
    assert set(before) - {s.key for s in after.steps} == {k for k, kind in before.items() if kind == "report"}


def test_without_an_internal_test_split_only_the_test_sets_are_evaluated() -> None:
    plan = parse_plan(plan_with(split={"train": 0.8, "val": 0.2, "test": 0}, test_sets=TEST_SETS[:1]))
    assert not plan.internal_test and plan.test_set_labels == ["ph2"]
    g = build_graph(plan)
    assert {s.test_set for s in g.of_kind("predict") + g.of_kind("evaluate")} == {"ph2"}
    existing = parse_plan(plan_with(split={"existing": True, "test": 0}, test_sets=TEST_SETS[:1]))
    assert not existing.internal_test


def test_test_set_import_paths_are_relative_to_the_plan(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan_with(test_sets=TEST_SETS)))
    plan = load_plan(tmp_path / "plan.yaml")
    imp = plan.test_sets[1].dataset.import_
    assert imp is not None and (imp.images, imp.masks) == (str(tmp_path / "b" / "images"), str(tmp_path / "b" / "masks"))


def test_dry_run_lists_the_test_set_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(plan_with(test_sets=TEST_SETS[:1], arms=[{"name": "real", "real": 10}])))
    assert main(["run", str(plan), "--dry-run", "--store", f"file://{tmp_path}/store"]) == 0
    out = capsys.readouterr().out
    assert "test set ph2" in out and "evaluate arm=real seed=2 test_set=ph2" in out and "test_set" in out


def test_the_out_of_domain_example_evaluates_on_isic_and_an_imported_folder() -> None:
    plan = load_plan(REPO / "examples" / "isic-ood.yaml")
    assert plan.dataset.name == "isic-train" and plan.test_set_labels == ["internal", "ph2"]
    imp = plan.test_sets[0].dataset.import_
    assert imp is not None and imp.size == "keep" and imp.images == str(REPO / "examples" / "data" / "ph2" / "images")
    g = build_graph(plan)
    assert len(g.of_kind("evaluate")) == len(plan.arms) * len(plan.seeds) * 2


# --- synthetic-data quality and filters ---------------------------------------------------------

#: BASE with a quality section that can run: its 10-image synthesis prefix scores every set at
#: 5 images, enough for k = 3 nearest neighbours (BASE's default k = 5 needs 6: skipped).
QUALITY = {"nearest_k": 3}


def test_the_quality_section_measures_every_pool_with_the_first_seeds_real_only_model() -> None:
    g = build_graph(parse_plan(plan_with(quality=QUALITY)))
    (features,), (quality,) = g.of_kind("features"), g.of_kind("quality")
    real_model = next(s for s in g.of_kind("segment_train") if (s.arm, s.seed) == ("real", 1))
    composite, gan = next(s for s in g.of_kind("compose") if s.params["role"] == "composite"), g.of_kind("gan_generate")[0]
    # Features: the synthesis prefix (what the synthetic data derive from), the internal test
    # split and every pool in full, in the real-only model's space.
    assert features.params["extractor"] == "segmenter_fpn" and features.params["weights"] == ""
    assert features.deps == {"model": real_model, "real_train": g.of_kind("subset")[0], "real_test": g.of_kind("split")[0],
                             "source:composite": composite, "source:gan": gan}
    assert [(s["label"], s["dep"], s["split"], s["count"]) for s in features.params["sets"]] == [
        ("real_train", "real_train", "train", 0), ("real_test", "real_test", "test", 0),
        ("composite", "source:composite", "", 0), ("gan", "source:gan", "", 0)]
    # Mask fidelity: the real-only model predicts every pool image, scored against the pool's masks.
    fidelity = {s.label: s for s in g.of_kind("fidelity_evaluate")}
    assert set(fidelity) == {"evaluate mask fidelity source=composite seed=1", "evaluate mask fidelity source=gan seed=1"}
    for label, pool in (("composite", composite), ("gan", gan)):
        ev = quality.deps[f"fidelity:{label}"]
        assert ev.kind == "fidelity_evaluate" and ev.deps["dataset"] is pool and ev.params["split"] == ""
        assert ev.deps["predictions"].kind == "fidelity_predict" and ev.deps["predictions"].deps == {"model": real_model, "dataset": pool}
        assert ev.deps["predictions"].params["settings"].export_threshold == 0.05
    assert quality.deps["features"] is features and quality.params["sources"] == ["composite", "gan"]
    assert quality.params["feature_space"] == "segmenter_fpn" and quality.params["seed"] == derive_seed(1, "quality")
    assert (quality.arm, quality.seed) == ("real", 1)
    # Not counted as the arms' predictions and evaluations.
    assert len(g.of_kind("predict")) == len(g.of_kind("evaluate")) == 8
    report = g.of_kind("report")[0]
    assert report.deps["quality:segmenter_fpn"] is quality and "quality:inception" not in report.deps
    # The arms of one pool name it; hybrids do not (their data are two pools).
    assert report.params["quality_sources"] == [["comp", 1, "composite"], ["comp", 2, "composite"], ["gan", 1, "gan"], ["gan", 2, "gan"]]


def test_inception_weights_add_a_feature_space_that_needs_no_model() -> None:
    g = build_graph(parse_plan(plan_with(quality={**QUALITY, "inception_weights": "file:inception_v3.pth", "max_samples": 500, "batch_size": 8})))
    features = {s.params["extractor"]: s for s in g.of_kind("features")}
    assert features["inception"].params["weights"] == "file:inception_v3.pth" and "model" not in features["inception"].deps
    assert features["inception"].seed is None and features["inception"].label == "features inception"
    assert features["inception"].params["settings"].batch_size == 8
    quality = {s.params["feature_space"]: s for s in g.of_kind("quality")}
    assert quality["inception"].params["settings"].max_samples == 500 == quality["segmenter_fpn"].params["settings"].max_samples
    # One mask fidelity per pool, shared by both feature spaces.
    assert len(g.of_kind("fidelity_evaluate")) == 2
    assert quality["inception"].deps["fidelity:gan"] is quality["segmenter_fpn"].deps["fidelity:gan"]
    assert {r for r in g.of_kind("report")[0].deps if r.startswith("quality:")} == {"quality:segmenter_fpn", "quality:inception"}


def test_a_gan_per_seed_is_a_source_per_seed() -> None:
    g = build_graph(parse_plan(plan_with(gan={"per_seed": True}, quality=QUALITY)))
    (quality,) = g.of_kind("quality")
    assert quality.params["sources"] == ["composite", "gan-s1", "gan-s2"]
    assert [s["label"] for s in g.of_kind("features")[0].params["sets"]][2:] == ["composite", "gan-s1", "gan-s2"]
    sources = g.of_kind("report")[0].params["quality_sources"]
    assert ["gan", 1, "gan-s1"] in sources and ["gan", 2, "gan-s2"] in sources


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"arms": [{"name": "comp", "real": 10, "composite": 5}]}, "the plan has no real-only arm"),
        ({"split": {"train": 0.8, "val": 0.2, "test": 0}, "test_sets": [{"label": "ph2", "dataset": {"demo": {"count": 6}}}]}, "no internal test split"),
        ({"quality": {"enabled": False}}, "quality.enabled is false"),
        ({"arms": [{"name": "r", "real": 10}]}, "no arm uses synthetic data"),
        ({}, "needs at least 6 images with nearest_k = 5, but half the synthesis prefix (10 real images) has 5"),
        ({"quality": QUALITY, "arms": [{"name": "r", "real": 10}, {"name": "c", "real": 10, "composite": 3}]},
         "needs at least 4 images with nearest_k = 3, but the composite pool has 3"),
    ],
)
def test_without_what_quality_needs_the_section_is_skipped_and_the_provenance_says_why(changes: dict, reason: str) -> None:
    from orchestrator.steps import quality_provenance

    g = build_graph(parse_plan(plan_with(**changes)))
    assert not {"features", "quality", "fidelity_predict", "fidelity_evaluate"} & set(g.kinds)
    assert g.of_kind("report")[0].params["quality_sources"] == []
    assert reason in quality_provenance(g)["skipped"]


def test_a_filtered_arm_trains_on_a_ranked_part_of_a_larger_pool() -> None:
    arms = [*BASE["arms"], {"name": "comp-fid", "real": 10, "composite": 30, "filter": {"by": "mask_fidelity", "keep": 0.7}},
            {"name": "gan-real", "real": 10, "gan": 20, "filter": {"by": "realism", "keep": 0.5}}]
    plan = parse_plan(plan_with(arms=arms, quality=QUALITY))
    assert (plan.composite_pool, plan.gan_pool) == (43, 40)  # ceil(30 / 0.7), ceil(20 / 0.5)
    g = build_graph(plan)
    composes = {s.params["role"]: s for s in g.of_kind("compose")}
    assert composes["composite"].params["count"] == 43 and composes["gan_masks"].params["count"] == 40
    assert g.of_kind("gan_generate")[0].params["settings"].count == 40
    trains = {(s.arm, s.seed): s for s in g.of_kind("segment_train")}
    filters = {(s.arm, s.seed): s for s in g.of_kind("filter")}
    assert set(filters) == {("comp-fid", 1), ("comp-fid", 2), ("gan-real", 1), ("gan-real", 2)}
    for seed in (1, 2):
        real_model = trains[("real", seed)]
        f = filters[("comp-fid", seed)]
        assert trains[("comp-fid", seed)].deps["composite"] is f and trains[("comp", seed)].deps["composite"] is composes["composite"]
        assert f.params == {"by": "mask_fidelity", "keep": 0.7, "count": 30, "candidates": 43, "order_seed": training_order_seed(plan), "source": "composite"}
        # Ranked with the real-only model of the same seed.
        assert f.deps["pool"] is composes["composite"] and f.deps["ranking"].kind == "fidelity_evaluate"
        assert f.deps["ranking"].deps["predictions"].deps["model"] is real_model
        r = filters[("gan-real", seed)]
        assert r.deps["ranking"].kind == "quality" and r.deps["ranking"].params["feature_space"] == "segmenter_fpn"
        assert r.deps["ranking"].deps["features"].deps["model"] is real_model and r.params["candidates"] == 40
        assert trains[("gan-real", seed)].deps["gan"] is r
    # The first seed's realism ranking is the report's quality step (one step, not two).
    report = g.of_kind("report")[0]
    assert filters[("gan-real", 1)].deps["ranking"] is report.deps["quality:segmenter_fpn"]
    assert len(g.of_kind("quality")) == 2 and len(g.of_kind("features")) == 2
    # Filtered arms are not one pool's data: no quality source (the figures describe the pool).
    assert not {name for name, _, _ in report.params["quality_sources"]} & {"comp-fid", "gan-real"}
    keys = [s.key for s in g.steps]
    assert len(set(keys)) == len(keys)
    seen: set[str] = set()
    for s in g.steps:  # topological, though filters pull the real-only model forward
        assert all(d.key in seen for d in s.deps.values()), s.label
        seen.add(s.key)


def test_pool_sizes_round_up_without_float_noise() -> None:
    from orchestrator.plan import pool_size

    assert [pool_size(7, 0.7), pool_size(30, 0.7), pool_size(20, 0.5), pool_size(3, 0.9)] == [10, 43, 40, 4]


def test_changing_a_quality_setting_recomputes_only_the_quality_and_the_report() -> None:
    before = {s.label: s.key for s in build_graph(parse_plan(plan_with(quality=QUALITY))).steps}
    after = {s.label: s.key for s in build_graph(parse_plan(plan_with(quality={**QUALITY, "kid_subsets": 50}))).steps}
    assert {label for label in before if before[label] != after[label]} == {"quality segmenter_fpn seed=1", "report"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arms": [{"name": "r", "real": 5, "filter": {"by": "realism", "keep": 0.5}}]}, "arms[0]: filter: this arm has no synthetic data to filter"),
        ({"arms": [{"name": "c", "real": 5, "composite": 5, "filter": {"by": "mask_fidelity", "keep": 0.5}}]},
         "arms[0] (c).filter ranks the synthetic images with the real-only arm's model, and the plan has no real-only arm"),
        ({"split": {"train": 0.8, "val": 0.2, "test": 0}, "test_sets": [{"label": "x", "dataset": {"demo": {"count": 4}}}],
          "arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"by": "realism", "keep": 0.5}}]},
         "arms[1] (c).filter by realism: realism comes from the quality job, which cannot run: the plan has no internal test split"),
        ({"arms": [{"name": "r", "real": 6}, {"name": "c", "real": 6, "composite": 5, "filter": {"by": "realism", "keep": 0.5}}]},
         "filter by realism: realism comes from the quality job, which cannot run: too few images for the quality figures: every set is scored "
         "at one sample size, which needs at least 6 images with nearest_k = 5, but half the synthesis prefix (6 real images) has 3"),
        ({"arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"by": "realism", "keep": 1}}]},
         "arms[1].filter.keep: Input should be less than 1"),
        ({"arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"by": "realism", "keep": 0}}]},
         "arms[1].filter.keep: Input should be greater than 0"),
        ({"arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"by": "fid", "keep": 0.5}}]},
         "arms[1].filter.by: Input should be 'mask_fidelity' or 'realism'"),
        ({"arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"keep": 0.5}}]}, "arms[1].filter.by: Field required"),
        ({"arms": [{"name": "r", "real": 5}, {"name": "c", "real": 5, "composite": 5, "filter": {"by": "realism", "keep": 0.5, "top": 3}}]},
         "arms[1].filter.top: Extra inputs are not permitted; known fields: by, keep"),
        ({"quality": {"enabled": True}, "arms": [{"name": "c", "real": 5, "composite": 5}]},
         "quality.enabled is true, but the plan has no real-only arm"),
        ({"quality": {"enabled": False, "inception_weights": "store:w/inception.pt"}}, "quality.inception_weights has no effect with quality.enabled: false"),
        ({"quality": {"inception_weights": "IMAGENET1K_V1"}}, "quality.inception_weights 'IMAGENET1K_V1': give file:NAME (a file inside SYNTHAUG_WEIGHTS_DIR) or store:KEY; none are ever downloaded"),
        ({"quality": {"inception_weights": "file:../w.pt"}}, "quality.inception_weights 'file:../w.pt': outside SYNTHAUG_WEIGHTS_DIR"),
        ({"quality": {"enabled": "yes"}}, "quality.enabled must be true or false"),
        ({"quality": {"max_samples": 2}}, "quality.max_samples must be in [4, 50000], got 2"),
        ({"quality": {"batch_size": 0}}, "quality.batch_size must be ≥ 1, got 0"),
        ({"quality": {"kid_subset": 10}}, "quality: unknown field(s) kid_subset; known fields: enabled, inception_weights, max_samples, kid_subset_size"),
    ],
)
def test_quality_and_filter_errors_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_plan(plan_with(**changes))
    assert message in str(info.value)
