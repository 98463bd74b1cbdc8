"""The step graph of a plan, with content keys.

Every step's key hashes its kind, its parameters (service settings fully resolved, every
default spelled out: the key names what actually runs), the keys of the steps it depends on
and the code version. Keys are known before anything runs, so a re-run finds every finished
step in the store (`steps/<key>.pb`) and computes nothing, and `--dry-run` can show which
steps are cached. Changing one setting changes the keys of exactly the steps downstream of it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.plan import Plan
from services.common.config import config_to_mapping, replace_config
from services.common.store import canonical_json
from synthaug import CODE_VERSION

#: Which service runs each step kind ("local": the orchestrator itself).
STEP_SERVICE = {
    "dataset": "local",
    "split": "local",
    "foregrounds": "compositor",
    "backgrounds": "compositor",
    "compose": "compositor",
    "gan_train": "gan",
    "gan_generate": "gan",
    "segment_train": "segmenter",
    "predict": "segmenter",
    "evaluate": "evaluator",
    "report": "evaluator",
}


@dataclass
class Step:
    kind: str
    label: str
    #: What the step computes with: plain values and service settings dataclasses (hashed as
    #: their resolved mappings).
    params: dict[str, Any]
    deps: dict[str, "Step"] = field(default_factory=dict)  # role → step
    arm: str = ""
    seed: int | None = None
    key: str = ""

    @property
    def service(self) -> str:
        return STEP_SERVICE[self.kind]

    def compute_key(self) -> str:
        payload = {
            "kind": self.kind,
            "params": config_to_mapping(self.params),
            "deps": {role: dep.key for role, dep in sorted(self.deps.items())},
            "code_version": CODE_VERSION,
        }
        self.key = hashlib.sha256(canonical_json(payload)).hexdigest()[:32]
        return self.key


@dataclass
class Graph:
    plan: Plan
    steps: list[Step]  # topological order

    def of_kind(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.kind == kind]


def derive_seed(base: int, *parts: str | int) -> int:
    """A 63-bit seed from a base seed and a purpose: independent streams per step."""
    h = hashlib.sha256(canonical_json([base, *parts])).digest()
    return int.from_bytes(h[:8], "big") >> 1


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


def dataset_params(plan: Plan) -> dict[str, Any]:
    ds = plan.dataset
    if ds.name is not None:
        return {"name": ds.name}
    if ds.demo is not None:
        return {"demo": ds.demo.model_dump()}
    imp = ds.import_
    assert imp is not None
    return {
        "import": imp.model_dump(),
        "image_size": plan.image_size,
        "fingerprint": {
            "images": _folder_fingerprint(imp.images),
            "masks": _folder_fingerprint(imp.masks),
            "annotations": _folder_fingerprint(imp.annotations),
        },
    }


def build_graph(plan: Plan) -> Graph:
    steps: list[Step] = []

    def add(step: Step) -> Step:
        step.compute_key()
        steps.append(step)
        return step

    dataset = add(Step("dataset", "dataset", dataset_params(plan)))
    split_params = plan.split.model_dump()
    if plan.split.group_csv:
        split_params["group_csv_fingerprint"] = _folder_fingerprint(plan.split.group_csv)
    split = add(Step("split", "split", split_params, {"dataset": dataset}))

    compose = gan_masks = None
    if plan.max_composite > 0 or plan.max_gan > 0:
        c = plan.compositor
        fg = add(Step("foregrounds", "foregrounds", {"settings": c.foregrounds}, {"dataset": split}))
        # Backgrounds come from the split dataset: an unset method means the dataset's default.
        backgrounds = replace_config(c.backgrounds, method=c.backgrounds.method_for(from_dataset=True))
        bg = add(Step("backgrounds", "backgrounds", {"settings": backgrounds, "seed": derive_seed(plan.data_seed, "backgrounds")}, {"dataset": split}))
        layers = {"foregrounds": fg, "backgrounds": bg}
        if plan.max_composite > 0:
            compose = add(
                Step("compose", "compose composites", {"count": plan.max_composite, "seed": derive_seed(plan.data_seed, "composite"), "params": c.params, "role": "composite"}, layers)
            )
        if plan.max_gan > 0:
            # GAN images come from their own composite masks, so a hybrid arm never sees one layout twice.
            gan_masks = add(
                Step("compose", "compose GAN masks", {"count": plan.max_gan, "seed": derive_seed(plan.data_seed, "gan-masks"), "params": c.params, "role": "gan_masks"}, layers)
            )

    gan_by_seed: dict[int | None, Step] = {}
    if plan.max_gan > 0:
        assert gan_masks is not None
        train_seeds: list[int | None] = list(plan.seeds) if plan.gan.per_seed else [None]
        generate = replace_config(plan.gan.generate, count=plan.max_gan)
        for seed in train_seeds:
            gseed = derive_seed(plan.data_seed if seed is None else seed, "gan")
            tag = "" if seed is None else f" seed={seed}"
            gt = add(Step("gan_train", "train GAN" + tag, {"config": plan.gan.config, "seed": gseed}, {"dataset": split}, seed=seed))
            gg = add(Step("gan_generate", "generate GAN images" + tag, {"settings": generate, "seed": derive_seed(gseed, "generate")}, {"generator": gt, "masks": gan_masks}, seed=seed))
            gan_by_seed[seed] = gg

    # Masks are read at the threshold they were cut at (Plan checks an explicit one agrees).
    predict_settings = plan.segmenter.predict
    evaluate_settings = replace_config(plan.evaluation.evaluate, mask_threshold=predict_settings.mask_threshold)
    evaluations = []
    for arm in plan.arms:
        for seed in plan.seeds:
            deps: dict[str, Step] = {"real": split}
            if arm.composite:
                assert compose is not None
                deps["composite"] = compose
            if arm.gan:
                deps["gan"] = gan_by_seed[seed if plan.gan.per_seed else None]
            tag = f"arm={arm.name} seed={seed}"
            train = add(
                Step(
                    "segment_train",
                    f"train {tag}",
                    {"real": arm.real, "composite": arm.composite, "gan": arm.gan, "config": plan.segmenter.config, "seed": seed},
                    deps,
                    arm=arm.name,
                    seed=seed,
                )
            )
            predict = add(Step("predict", f"predict {tag}", {"settings": predict_settings}, {"model": train, "dataset": split}, arm=arm.name, seed=seed))
            evaluate = replace_config(evaluate_settings, seed=derive_seed(seed, "bootstrap"))
            evaluations.append(add(Step("evaluate", f"evaluate {tag}", {"settings": evaluate}, {"predictions": predict, "dataset": split}, arm=arm.name, seed=seed)))
    report_deps: dict[str, Step] = {"dataset": split}
    for i, e in enumerate(evaluations):
        report_deps[f"evaluation{i:04d}"] = e
    report = {"title": plan.description or plan.name, "settings": plan.evaluation.report, "arms": [a.model_dump() for a in plan.arms]}
    add(Step("report", "report", report, report_deps))
    return Graph(plan, steps)
