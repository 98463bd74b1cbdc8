"""The step graph of a plan, with content keys.

Every step's key hashes its kind, its parameters (service settings fully resolved, every
default spelled out: the key names what actually runs), the keys of the steps it depends on
and the digest of the code that computes its kind (orchestrator/steps.py `code_digests`: the
service's source files, or for local steps the modules the executor imports, plus the
orchestrator function that builds the step's request). Keys are known before anything runs,
so a re-run finds every finished step in the store (`steps/<key>.pb`) and computes nothing,
and `--dry-run` can show which steps are cached. Changing one setting, or the code of one
step kind, changes the keys of exactly the steps downstream of it.

Seeds (services/common/seeding.py derive_seed, the one derivation):

===============================================  ==========================================
parts                                            stream
===============================================  ==========================================
(data_seed, "training-order")                    order seed of every arm's training sources
                                                 (the nested order: one per plan, so every
                                                 seed of every arm has the same real prefix,
                                                 and the synthesis prefix is part of it)
(data_seed, "backgrounds")                       background harvesting
(data_seed, "composite") / (data_seed,           the composites / the GAN's input masks
 "gan-masks")
(data_seed or training seed, "gan")              GAN training (shared, or per seed)
(GAN seed, "generate")                           GAN generation
(training seed, "bootstrap")                     the evaluation's bootstrap (the same on
                                                 every test set of that seed, and on the
                                                 mask-fidelity evaluations of that seed)
(training seed, "quality")                       the quality job's subsamples, train halves
                                                 and KID subsets (every feature space of that
                                                 seed's real-only model alike)
===============================================  ==========================================

Test sets: every arm × seed is predicted and evaluated on the internal test split (the
split step's "test", unless `split.test` is 0) and on each of the plan's `test_sets`, each
loaded (or imported) and checked against the training dataset by a local `test_set` step.
The steps per test set carry its label (`Step.test_set`, in their labels for external ones).

Synthetic-data quality (`quality`, QualityPlan) and filters (`arms[].filter`), measured with
the first real-only arm's model:

* **sources**: the synthetic pools, labelled "composite" and "gan" (one GAN), or "gan-s<seed>"
  (a GAN per seed);
* **mask fidelity** per source and seed: `fidelity_predict` (the real-only model of that seed
  predicts every pool image) and `fidelity_evaluate` (scored against the pool's own masks);
* **features** (segmenter job): sets "real_train" = the synthesis prefix (the real images the
  synthetic data derive from: a generator that copies copies these, so memorisation and the
  "vs train" figures are measured against exactly them, and realism ranks against training
  images every synthetic arm has), "real_test" = the internal test split, and every pool in
  full; in the real-only model's FPN space (per seed) and, with `inception_weights`, in
  Inception-v3's (one for the plan: it depends on no model);
* **quality** (evaluator job) per feature space, with every source's fidelity evaluation;
* the **report** gets the quality of the first seed's real-only model (one result per feature
  space), and each arm × seed the label of the one source it trained on ("" for real-only,
  hybrid and filtered arms, whose data are not one pool);
* a **filter** (local step, per filtered arm, source and seed) takes the first
  ceil(count / keep) images of its pool's nested order (the prefix an unfiltered arm of the
  same count draws from; pools grow to hold it), ranks them by the fidelity evaluation's
  per-image IoU or by the quality's per-image realism (computed from training images only),
  both with the real-only model of the same seed, and keeps the top `count` as a subset
  dataset the arm trains on.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from orchestrator.plan import INCEPTION, INTERNAL_TEST_SET, SEGMENTER_FPN, ArmPlan, DatasetSpec, Plan, pool_size
from services.common.config import config_to_mapping, replace_config
from services.common.errors import InvalidArgument
from services.common.seeding import derive_seed
from services.common.store import canonical_json

#: Which service runs each step kind ("local": the orchestrator itself).
STEP_SERVICE = {
    "dataset": "local",
    "split": "local",
    "subset": "local",
    "test_set": "local",
    "foregrounds": "compositor",
    "backgrounds": "compositor",
    "compose": "compositor",
    "gan_train": "gan",
    "gan_generate": "gan",
    "segment_train": "segmenter",
    "predict": "segmenter",
    "evaluate": "evaluator",
    "fidelity_predict": "segmenter",
    "fidelity_evaluate": "evaluator",
    "features": "segmenter",
    "quality": "evaluator",
    "filter": "local",
    "report": "evaluator",
}
#: Source labels of the synthetic pools in quality results and filters.
COMPOSITE_SOURCE = "composite"
#: The feature sets of the real images (services/evaluator/core/features.py REAL_SETS).
REAL_TRAIN, REAL_TEST = "real_train", "real_test"


def gan_source(seed: int | None) -> str:
    """The label of a GAN's pool: "gan" (one GAN), "gan-s<seed>" (a GAN per seed)."""
    return "gan" if seed is None else f"gan-s{seed}"


def quality_source(plan: Plan, arm: ArmPlan, seed: int) -> str:
    """The one synthetic source `arm` × `seed` trained on, for the report's gain-against-
    distance figure: "" for real-only and hybrid arms, and for filtered arms (they train on a
    chosen part of the pool, not on the pool the figures describe)."""
    if arm.filter is not None or not arm.synthetic or (arm.composite and arm.gan):
        return ""
    return COMPOSITE_SOURCE if arm.composite else gan_source(seed if plan.gan.per_seed else None)


@dataclass
class Step:
    kind: str
    label: str
    #: What the step computes with: plain values and service settings dataclasses (hashed as
    #: their resolved mappings).
    params: dict[str, Any]
    deps: dict[str, Step] = field(default_factory=dict)  # role → step
    arm: str = ""
    seed: int | None = None
    #: The test set a predict / evaluate step is of ("internal" or an external label), and
    #: the label of a test_set step; "" for steps of no test set.
    test_set: str = ""
    key: str = ""
    #: Digest of the code that computes this kind (part of the key).
    code_digest: str = ""

    @property
    def service(self) -> str:
        return STEP_SERVICE[self.kind]

    def compute_key(self, code_digest: str) -> str:
        self.code_digest = code_digest
        payload = {
            "kind": self.kind,
            "params": config_to_mapping(self.params),
            "deps": {role: dep.key for role, dep in sorted(self.deps.items())},
            "code": code_digest,
        }
        self.key = hashlib.sha256(canonical_json(payload)).hexdigest()[:32]
        return self.key


@dataclass
class Graph:
    plan: Plan
    steps: list[Step]  # topological order

    def of_kind(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.kind == kind]

    @property
    def kinds(self) -> list[str]:
        """The step kinds of this graph, in order of first appearance."""
        return list(dict.fromkeys(s.kind for s in self.steps))

    def downstream(self, kinds: Iterable[str]) -> set[str]:
        """Keys of the steps of `kinds` and of every step that depends on them (InvalidArgument
        for a kind this graph does not have)."""
        wanted = set(kinds)
        missing = sorted(wanted - set(self.kinds))
        if missing:
            known = ", ".join(self.kinds)
            raise InvalidArgument(f"--recompute {','.join(missing)}: this plan has no such step kind (its kinds: {known})")
        out: set[str] = set()
        for step in self.steps:  # topological: dependencies come first
            if step.kind in wanted or any(d.key in out for d in step.deps.values()):
                out.add(step.key)
        return out


def training_order_seed(plan: Plan) -> int:
    """The order seed of every training source of the plan, and of the synthesis prefix."""
    return derive_seed(plan.data_seed, "training-order")


def _folder_fingerprint(path: str | None) -> dict[str, Any] | None:
    """Names, sizes and modification times of a folder's files: a changed file → a new key."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return {"file": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not p.is_dir():
        return {"missing": str(p)}
    h = hashlib.sha256()
    count = 0
    for dirpath, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            full = Path(dirpath, name)
            st = full.stat()
            h.update(f"{full.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
    return {"files": count, "digest": h.hexdigest()}


def dataset_params(ds: DatasetSpec) -> dict[str, Any]:
    """What a dataset step loads or makes (the plan's dataset, or a test set's): its spec, and
    for an import the fingerprint of its files."""
    if ds.name is not None:
        return {"name": ds.name}
    if ds.demo is not None:
        return {"demo": ds.demo.model_dump()}
    imp = ds.import_
    assert imp is not None
    return {
        "import": imp.model_dump(),
        "fingerprint": {
            "images": _folder_fingerprint(imp.images),
            "masks": _folder_fingerprint(imp.masks),
            "annotations": _folder_fingerprint(imp.annotations),
        },
    }


def check_counts(plan: Plan, train_size: int, where: str) -> None:
    """InvalidArgument naming the first arm (or the synthesis) that asks for more real
    training images than the train split of `where` has."""
    for i, arm in enumerate(plan.arms):
        if arm.real > train_size:
            raise InvalidArgument(f"arms[{i}] ({arm.name}) asks for {arm.real} real images; the train split of {where} has {train_size}")
    n = plan.synthesis_real
    if n is not None and n > train_size:
        raise InvalidArgument(f"synthesis.real ({n}) is more than the {train_size} images of the train split of {where}")


def build_graph(plan: Plan, code_digests: Mapping[str, str] | None = None) -> Graph:
    """The steps of `plan`, keyed with `code_digests` (kind → digest; default: the code this
    process runs, orchestrator.steps.code_digests)."""
    if code_digests is None:
        # steps.py imports this module (Step), so its digests are looked up at call time.
        from orchestrator.steps import code_digests as current

        code_digests = {kind: d.digest for kind, d in current().items()}
    digests = code_digests
    steps: list[Step] = []
    by_key: dict[str, Step] = {}

    def add(step: Step) -> Step:
        """Key `step` and append it; a step with the same key is the same step (returned)."""
        key = step.compute_key(digests[step.kind])
        if key in by_key:
            return by_key[key]
        by_key[key] = step
        steps.append(step)
        return step

    dataset = add(Step("dataset", "dataset", dataset_params(plan.dataset)))
    split_params = plan.split.model_dump()
    if plan.split.group_csv:
        split_params["group_csv_fingerprint"] = _folder_fingerprint(plan.split.group_csv)
    split = add(Step("split", "split", split_params, {"dataset": dataset}))
    # Where each test set's images come from: (the step producing its dataset, its split).
    test_sources: dict[str, tuple[Step, str]] = {}
    if plan.internal_test:
        test_sources[INTERNAL_TEST_SET] = (split, "test")
    for t in plan.test_sets:
        params: dict[str, Any] = {"label": t.label, "dataset": dataset_params(t.dataset), "split": t.split}
        test_sources[t.label] = (add(Step("test_set", f"test set {t.label}", params, {"training": dataset}, test_set=t.label)), t.split)
    order_seed = training_order_seed(plan)

    compose = gan_masks = synthesis = None
    composite_pool, gan_pool = plan.composite_pool, plan.gan_pool
    if composite_pool > 0 or gan_pool > 0:
        n = plan.synthesis_real
        assert n is not None
        # The only real images synthesis may read: the first N of the arms' training order.
        synthesis = add(Step("subset", f"real prefix {n} for synthesis", {"split": "train", "count": n, "order_seed": order_seed}, {"dataset": split}))
        c = plan.compositor
        fg = add(Step("foregrounds", "foregrounds", {"settings": c.foregrounds}, {"dataset": synthesis}))
        # Backgrounds come from a dataset: an unset method means the dataset's default.
        backgrounds = replace_config(c.backgrounds, method=c.backgrounds.method_for(from_dataset=True))
        bg = add(Step("backgrounds", "backgrounds", {"settings": backgrounds, "seed": derive_seed(plan.data_seed, "backgrounds")}, {"dataset": synthesis}))
        layers = {"foregrounds": fg, "backgrounds": bg}
        if composite_pool > 0:
            params = {"count": composite_pool, "seed": derive_seed(plan.data_seed, "composite"), "params": c.params, "role": "composite"}
            compose = add(Step("compose", "compose composites", params, layers))
        if gan_pool > 0:
            # GAN images come from their own composite masks, so a hybrid arm never sees one layout twice.
            params = {"count": gan_pool, "seed": derive_seed(plan.data_seed, "gan-masks"), "params": c.params, "role": "gan_masks"}
            gan_masks = add(Step("compose", "compose GAN masks", params, layers))

    gan_by_seed: dict[int | None, Step] = {}
    if gan_pool > 0:
        assert gan_masks is not None and synthesis is not None
        train_seeds: list[int | None] = list(plan.seeds) if plan.gan.per_seed else [None]
        generate = replace_config(plan.gan.generate, count=gan_pool)
        for seed in train_seeds:
            gseed = derive_seed(plan.data_seed if seed is None else seed, "gan")
            tag = "" if seed is None else f" seed={seed}"
            gt = add(Step("gan_train", "train GAN" + tag, {"config": plan.gan.config, "seed": gseed}, {"dataset": synthesis}, seed=seed))
            gg = add(Step("gan_generate", "generate GAN images" + tag, {"settings": generate, "seed": derive_seed(gseed, "generate")},
                          {"generator": gt, "masks": gan_masks}, seed=seed))
            gan_by_seed[seed] = gg
    # The synthetic pools, by source label (quality results and filters name them so).
    pools: dict[str, Step] = {}
    if compose is not None:
        pools[COMPOSITE_SOURCE] = compose
    for gan_seed, gan_images in gan_by_seed.items():
        pools[gan_source(gan_seed)] = gan_images

    # Predictions keep every detection above the export threshold; masks are read at the
    # threshold they were cut at (Plan checks an explicit one agrees).
    predict_settings = replace_config(plan.segmenter.predict, export_threshold=plan.evaluation.export_threshold)
    evaluate_settings = replace_config(plan.evaluation.evaluate, mask_threshold=predict_settings.mask_threshold)
    real_arm = plan.real_only_arm

    def train_step(arm: ArmPlan, seed: int) -> Step:
        deps: dict[str, Step] = {"real": split}
        if arm.composite:
            assert compose is not None
            deps["composite"] = filtered(arm, COMPOSITE_SOURCE, arm.composite, seed) if arm.filter else compose
        if arm.gan:
            label = gan_source(seed if plan.gan.per_seed else None)
            deps["gan"] = filtered(arm, label, arm.gan, seed) if arm.filter else pools[label]
        return add(
            Step(
                "segment_train",
                f"train arm={arm.name} seed={seed}",
                {"real": arm.real, "composite": arm.composite, "gan": arm.gan, "config": plan.arm_segmenter(arm), "seed": seed, "order_seed": order_seed},
                deps,
                arm=arm.name,
                seed=seed,
            )
        )

    def real_model(seed: int) -> Step:
        assert real_arm is not None
        return train_step(real_arm, seed)

    def fidelity(label: str, seed: int) -> Step:
        """The real-only model's (of `seed`) evaluation on every image of pool `label`."""
        assert real_arm is not None
        pool, tag = pools[label], f"source={label} seed={seed}"
        predict_params = {"settings": predict_settings, "split": ""}
        model = real_model(seed)
        predict = add(Step("fidelity_predict", f"predict mask fidelity {tag}", predict_params, {"model": model, "dataset": pool}, real_arm.name, seed))
        evaluate_params = {"settings": replace_config(evaluate_settings, seed=derive_seed(seed, "bootstrap")), "split": ""}
        return add(Step("fidelity_evaluate", f"evaluate mask fidelity {tag}", evaluate_params, {"predictions": predict, "dataset": pool}, real_arm.name, seed))

    def features(space: str, seed: int) -> Step:
        """Features of the real prefix, the internal test split and every pool in `space`."""
        assert real_arm is not None and synthesis is not None
        sets = [{"label": REAL_TRAIN, "dep": REAL_TRAIN, "split": "train", "count": 0}, {"label": REAL_TEST, "dep": REAL_TEST, "split": "test", "count": 0}]
        sets += [{"label": label, "dep": f"source:{label}", "split": "", "count": 0} for label in pools]
        deps = {REAL_TRAIN: synthesis, REAL_TEST: split, **{f"source:{label}": pool for label, pool in pools.items()}}
        params = {"extractor": space, "weights": plan.quality.inception_weights or "" if space == INCEPTION else "", "sets": sets,
                  "settings": plan.quality.features, "order_seed": order_seed}
        if space == SEGMENTER_FPN:  # the real-only model's own space
            return add(Step("features", f"features {space} seed={seed}", params, {**deps, "model": real_model(seed)}, real_arm.name, seed))
        return add(Step("features", f"features {space}", params, deps))

    def quality(space: str, seed: int) -> Step:
        """Every pool's quality in `space`, with its mask fidelity (the real-only model of `seed`)."""
        assert real_arm is not None
        deps = {"features": features(space, seed), **{f"fidelity:{label}": fidelity(label, seed) for label in pools}}
        params = {"feature_space": space, "sources": list(pools), "settings": plan.quality.settings, "seed": derive_seed(seed, "quality")}
        return add(Step("quality", f"quality {space} seed={seed}", params, deps, real_arm.name, seed))

    def filtered(arm: ArmPlan, label: str, count: int, seed: int) -> Step:
        """The best `count` images of pool `label` by the arm's filter, ranked with the
        real-only model of `seed`."""
        f = arm.filter
        assert f is not None
        ranking = fidelity(label, seed) if f.by == "mask_fidelity" else quality(SEGMENTER_FPN, seed)
        # The candidates: the first ceil(count / keep) of the pool's nested order — the prefix
        # an unfiltered arm draws its `count` from — so filtering is the only difference.
        params = {"by": f.by, "keep": f.keep, "count": count, "candidates": pool_size(count, f.keep), "order_seed": order_seed, "source": label}
        deps = {"pool": pools[label], "ranking": ranking}
        return add(Step("filter", f"filter {label} by {f.by} keep={f.keep:g} count={count} seed={seed}", params, deps, arm.name, seed))

    evaluations = []
    for arm in plan.arms:
        for seed in plan.seeds:
            train = train_step(arm, seed)
            tag = f"arm={arm.name} seed={seed}"
            evaluate = replace_config(evaluate_settings, seed=derive_seed(seed, "bootstrap"))
            for label, (source, test_split) in test_sources.items():
                on = "" if label == INTERNAL_TEST_SET else f" test_set={label}"
                predict_params = {"settings": predict_settings, "split": test_split}
                predict = add(Step("predict", f"predict {tag}{on}", predict_params, {"model": train, "dataset": source}, arm.name, seed, test_set=label))
                evaluate_params = {"settings": evaluate, "split": test_split}
                evaluations.append(
                    add(Step("evaluate", f"evaluate {tag}{on}", evaluate_params, {"predictions": predict, "dataset": source}, arm.name, seed, test_set=label))
                )
    report_deps: dict[str, Step] = {"dataset": split}
    for i, e in enumerate(evaluations):
        report_deps[f"evaluation{i:04d}"] = e
    quality_sources: list[list[Any]] = []
    if plan.quality_runs:
        # The report's quality: the first seed's real-only model, one result per feature space.
        for space in plan.quality.feature_spaces:
            report_deps[f"quality:{space}"] = quality(space, plan.seeds[0])
        quality_sources = [[a.name, s, quality_source(plan, a, s)] for a in plan.arms for s in plan.seeds if quality_source(plan, a, s)]
    report = {
        "title": plan.description or plan.name,
        "settings": plan.evaluation.report,
        "arms": [a.model_dump() for a in plan.arms],
        "synthesis_real": plan.synthesis_real,
        "budget": plan.budget.describe(),
        "quality_sources": quality_sources,
    }
    add(Step("report", "report", report, report_deps))
    return Graph(plan, steps)
