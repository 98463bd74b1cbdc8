"""The nested training order (services/common/sampling.py) that the segmenter's training
sets and the orchestrator's real prefix for synthetic sources share."""
from __future__ import annotations

import pytest

from services.common.sampling import nested_order


def test_nested_order_is_the_seeded_order_of_the_set_of_ids() -> None:
    ids = [5, 3, 11, 8, 1, 20, 13]
    order = nested_order(4, "ds1", "train", ids)
    assert sorted(order) == sorted(ids)
    assert nested_order(4, "ds1", "train", sorted(ids)) == order  # the set, not the order given
    assert nested_order(4, "ds1", "train", reversed(ids)) == order  # type: ignore[arg-type]
    others = {tuple(nested_order(*key, ids)) for key in [(5, "ds1", "train"), (4, "ds2", "train"), (4, "ds1", "val")]}
    assert tuple(order) not in others and len(others) == 3


def test_a_smaller_count_is_a_prefix_of_a_larger_one() -> None:
    ids = list(range(1, 41))
    order = nested_order(9, "real", "train", ids)
    small, large = order[:20], order[:30]
    assert set(small) < set(large) and large[:20] == small
    assert len(set(order)) == 40


def test_repeated_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="dataset ds1 split train"):
        nested_order(4, "ds1", "train", [1, 2, 2])
    assert nested_order(4, "ds1", "", []) == []
