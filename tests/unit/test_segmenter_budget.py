"""The training budget: a fixed number of optimiser steps drawn from the training stream,
validation every eval_every iterations, and a record of what was actually trained — so
arms of different sizes can be given (and shown to have had) the same budget."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from services.segmenter.architectures import Architecture
from services.segmenter.config import SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.trainer import Trainer
from tests.unit.segmenter_shapes import TOY, make_source, toy_architecture


@pytest.fixture(autouse=True)
def toy() -> Iterator[Architecture]:
    with toy_architecture() as architecture:
        yield architecture


def _cfg(**kw: Any) -> SegmenterConfig:
    base: dict[str, Any] = dict(architecture=TOY, batch_size=4, lr=0.5, warmup_iters=0, num_workers=0, seed=3)
    base.update(kw)
    return SegmenterConfig(**base)


REAL = make_source("real", 4, size=16, seed=1)
COMPOSITE = make_source("composite", 8, size=16, seed=2, first_id=100, kind="composite")
VAL = make_source("val", 2, size=16, seed=3, first_id=500)


def train(tmp_path: Any, cfg: SegmenterConfig, sources: list, **kw: Any) -> dict[str, Any]:
    folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    return Trainer(cfg, sources, VAL, ck.DirectoryCheckpointIO(folder), **kw).run().record


def test_epochs_mode_validates_once_per_epoch_as_before(tmp_path) -> None:
    record = train(tmp_path, _cfg(epochs=2), [(REAL, 4), (COMPOSITE, 2)])  # 6 images: 2 iterations an epoch
    assert [(e["epoch"], e["iteration"], e["iterations"], e["images_seen"]) for e in record["epochs"]] == \
        [(0, 2, 2, 8), (1, 4, 2, 16)]
    assert record["budget"] == {"mode": "epochs", "iterations": 4, "iterations_run": 4, "images_seen": 16,
                                "batch_size": 4, "world_size": 1, "eval_every": 2, "real_fraction": None,
                                "images_seen_by_source": record["budget"]["images_seen_by_source"]}
    assert sum(record["budget"]["images_seen_by_source"]) == 16
    assert [s["iteration"] for s in record["steps"]] == [1, 2, 3, 4]


def test_arms_of_different_sizes_train_for_the_same_iterations(tmp_path) -> None:
    cfg = _cfg(iterations=6, eval_every=4)
    small = train(tmp_path, cfg, [(REAL, 4)])
    large = train(tmp_path, cfg, [(REAL, 4), (COMPOSITE, 8)])
    for record in (small, large):
        assert [e["iteration"] for e in record["epochs"]] == [4, 6]  # every 4 iterations, and at the end
        assert {k: record["budget"][k] for k in ("mode", "iterations", "iterations_run", "images_seen", "eval_every")} == \
            {"mode": "iterations", "iterations": 6, "iterations_run": 6, "images_seen": 24, "eval_every": 4}
    assert small["budget"]["images_seen_by_source"] == [24]
    # Unset real_fraction: the mixed set sampled uniformly; 24 draws = two passes over 12 images.
    assert large["budget"]["images_seen_by_source"] == [8, 16]
    assert [s["kind"] for s in large["training_set"]["sources"]] == ["real", "composite"]
    # An explicit share of real images per batch: two of every four.
    mixed = train(tmp_path, _cfg(iterations=6, eval_every=4, real_fraction=0.5), [(REAL, 4), (COMPOSITE, 8)])
    assert mixed["budget"]["images_seen_by_source"] == [12, 12] and mixed["budget"]["real_fraction"] == 0.5


def test_early_stopping_counts_evaluations_and_the_record_says_what_ran(tmp_path) -> None:
    # A learning rate too small to change any prediction: no evaluation improves on the first.
    record = train(tmp_path, _cfg(iterations=20, eval_every=2, patience=2, lr=1e-12), [(REAL, 4)])
    assert record["stopped_early"] and record["best_epoch"] == 0
    assert [e["iteration"] for e in record["epochs"]] == [2, 4, 6]
    assert (record["budget"]["iterations"], record["budget"]["iterations_run"], record["budget"]["images_seen"]) == (20, 6, 24)


def test_order_seeds_choose_each_sources_images_and_are_recorded(tmp_path) -> None:
    cfg = _cfg(iterations=1)
    a = train(tmp_path, cfg, [(REAL, 2), (COMPOSITE, 3)], order_seeds=[17, None])
    b = train(tmp_path, _cfg(iterations=1, seed=17), [(REAL, 2), (COMPOSITE, 3)])
    real_a = [m for m in a["training_set"]["members"] if m[0] == 0]
    assert real_a == [m for m in b["training_set"]["members"] if m[0] == 0]  # seed 17's order either way
    assert [s["order_seed"] for s in a["training_set"]["sources"]] == [17, 3]
    assert [(s["dataset"], s["split"], s["count"]) for s in a["training_set"]["sources"]] == [("real", "", 2), ("composite", "", 3)]


def test_the_run_does_not_depend_on_the_number_of_decoding_threads(tmp_path) -> None:
    cfg = dict(iterations=4, eval_every=2, augment=True, real_fraction=0.25)
    inline = train(tmp_path, _cfg(num_workers=0, **cfg), [(REAL, 4), (COMPOSITE, 8)])
    threaded = train(tmp_path, _cfg(num_workers=3, **cfg), [(REAL, 4), (COMPOSITE, 8)])
    assert threaded["steps"] == inline["steps"] and threaded["budget"] == inline["budget"]
    assert [e["draws"] for e in threaded["epochs"]] == [e["draws"] for e in inline["epochs"]]
