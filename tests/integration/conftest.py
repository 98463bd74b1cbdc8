"""Shared pieces of the end-to-end tests: a tiny plan that trains in seconds."""
from __future__ import annotations

import argparse
import copy
from typing import Any

from orchestrator import model_commands
from orchestrator.runner import step_cache_key
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2

TINY_PLAN: dict[str, Any] = {
    "name": "tiny",
    "seeds": [0],
    "dataset": {"demo": {"count": 24, "seed": 3, "size": 64}},
    "image_size": 64,
    "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0},
    "compositor": {
        "foregrounds": {"min_area": 16},
        "backgrounds": {"dilate_px": 3},
        "params": {"min_objects": 1, "max_objects": 2},
        "workers": 1,
    },
    "gan": {"config": {"ngf": 8, "ndf": 8, "depth": 6, "n_epochs": 1, "n_epochs_decay": 0, "batch_size": 4}},
    "segmenter": {"config": {"architecture": "maskrcnn_resnet18_fpn", "epochs": 1, "batch_size": 4, "lr": 0.01}},
    "evaluation": {"n_bootstrap": 100, "overlay_images": 2},
    "arms": [
        {"name": "real", "real": 8},
        {"name": "comp", "real": 8, "composite": 8},
    ],
}


def tiny_plan(**changes: Any) -> dict[str, Any]:
    plan = copy.deepcopy(TINY_PLAN)
    plan.update(changes)
    return plan


def step_result(store: ObjectStore, key: str) -> common_pb2.JobResult:
    """The cached result of the step with content key `key`, as the runner stored it."""
    result = common_pb2.JobResult()
    result.ParseFromString(store.get_record(step_cache_key(key)))
    return result


def model_cli(*argv: str) -> int:
    """`synthaug model …` / `synthaug predict …` as the CLI runs them (orchestrator/cli.py
    registers the same module), without the other commands' imports."""
    parser = argparse.ArgumentParser(prog="synthaug")
    model_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))
