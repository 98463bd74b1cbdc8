"""Shared pieces of the end-to-end tests: a tiny plan that trains in seconds."""
from __future__ import annotations

import copy
from typing import Any

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
