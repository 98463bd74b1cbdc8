"""The nested training order of a dataset split: which images a count of N means.

Arms take "the first N real images" and the synthetic sources derive only from the real
images the arms have, so the segmenter (which draws each arm's training set) and the
orchestrator (which builds the real prefix the compositor and the GAN may read) must agree
on one order. This module is that order; both import it.
"""
from __future__ import annotations

from typing import Sequence

from services.common.seeding import rng


def nested_order(seed: int, dataset_id: str, split: str, image_ids: Sequence[int]) -> list[int]:
    """``image_ids`` in the seeded order of (seed, dataset id, split).

    Any count N takes the first N, so a smaller count is a prefix of a larger one (arms are
    nested: real[:20] ⊂ real[:45]). The order depends on the set of ids, not on the order
    they are given in, and never on the dataset's registered name (``dataset_id`` is its
    content id). Raises ValueError when an id repeats."""
    ids = sorted(int(i) for i in image_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"image ids of dataset {dataset_id} split {split or '(all)'} repeat")
    permutation = rng(seed, "nested-order", dataset_id, split).permutation(len(ids))
    return [ids[k] for k in permutation.tolist()]
