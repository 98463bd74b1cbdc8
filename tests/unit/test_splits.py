"""Seeded, exact, leak-free splits."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from ingest.splits import SplitSpec, assign_splits, groups_for, read_groups, split_sizes
from services.common.errors import InvalidArgument


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (1600, (0.8, 0.1, 0.1), {"train": 1280, "val": 160, "test": 160}),
        (7, (0.8, 0.1, 0.1), {"train": 5, "val": 1, "test": 1}),  # 0.7 rounds up to 1
        (10, (0.7, 0.15, 0.15), {"train": 6, "val": 2, "test": 2}),  # 1.5 rounds half up
        (3, (1.0, 0.0, 0.0), {"train": 3, "val": 0, "test": 0}),
        (5, (0.0, 0.5, 0.5), {"train": 0, "val": 3, "test": 2}),  # rounding never exceeds n
    ],
)
def test_exact_counts_without_groups(n: int, fractions: tuple[float, float, float], expected: dict[str, int]) -> None:
    spec = SplitSpec(*fractions, seed=3)
    assert split_sizes(n, spec) == expected
    keys = [f"img_{i:04d}" for i in range(n)]
    got = Counter(assign_splits(keys, spec))
    assert {k: got.get(k, 0) for k in expected} == expected


def test_seeded_and_independent_of_listing_order() -> None:
    keys = [f"ISIC_{i:07d}" for i in range(200)]
    spec = SplitSpec(seed=11)
    first = dict(zip(keys, assign_splits(keys, spec)))
    shuffled = keys[:]
    random.Random(5).shuffle(shuffled)
    second = dict(zip(shuffled, assign_splits(shuffled, spec)))
    assert first == second
    other_seed = dict(zip(keys, assign_splits(keys, SplitSpec(seed=12))))
    assert other_seed != first
    assert Counter(other_seed.values()) == Counter(first.values())  # same exact sizes


def test_groups_never_cross_splits_and_sizes_stay_close() -> None:
    rng = random.Random(0)
    keys, groups = [], []
    for g in range(150):  # HAM10000-like: 1–6 photos per lesion
        for j in range(rng.randint(1, 6)):
            keys.append(f"img_{g}_{j}")
            groups.append(f"HAM_{g:07d}")
    spec = SplitSpec(0.7, 0.15, 0.15, seed=4, group_by="lesion_id")
    out = assign_splits(keys, spec, groups)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, out):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    target = split_sizes(len(keys), spec)
    got = Counter(out)
    for split in ("val", "test"):  # within one (largest) group of the exact target
        assert abs(got[split] - target[split]) <= 6
    assert sum(got.values()) == len(keys)


def test_grouped_assignment_by_hand() -> None:
    # 4 groups of 2 images; 50/25/25 → targets test 2, val 2, train 4: each group's run of
    # images falls exactly into one range, so the grouped split is exact as well.
    keys = [f"k{i}" for i in range(8)]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    out = assign_splits(keys, SplitSpec(0.5, 0.25, 0.25, seed=0, group_by="g"), groups)
    assert Counter(out) == {"train": 4, "val": 2, "test": 2}
    assert out[0] == out[1] and out[2] == out[3] and out[4] == out[5] and out[6] == out[7]


def test_spec_validation_and_parse() -> None:
    with pytest.raises(InvalidArgument, match="sum to 1"):
        SplitSpec(0.8, 0.1, 0.2)
    with pytest.raises(InvalidArgument, match=r"fraction val must be in \[0, 1\], got -0.1"):
        SplitSpec(1.0, -0.1, 0.1)
    assert SplitSpec.parse("none") is None
    assert SplitSpec.parse("0.6, 0.2, 0.2", seed=2) == SplitSpec(0.6, 0.2, 0.2, seed=2)
    with pytest.raises(InvalidArgument, match="TRAIN,VAL,TEST"):
        SplitSpec.parse("0.8,0.2")
    with pytest.raises(InvalidArgument, match="unique"):
        assign_splits(["a", "a"], SplitSpec())
    assert SplitSpec(seed=5, group_by="lesion_id").params() == {
        "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 5, "group_by": "lesion_id"}


def test_read_groups_from_csv(tmp_path) -> None:
    csv_path = tmp_path / "HAM10000_metadata.csv"
    csv_path.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_1,ISIC_2,nv\nHAM_2,ISIC_3,mel\n")
    mapping = read_groups(csv_path, "image_id", "lesion_id")
    assert mapping == {"ISIC_1": "HAM_1", "ISIC_2": "HAM_1", "ISIC_3": "HAM_2"}
    assert groups_for(["ISIC_3", "ISIC_1"], mapping, "m") == ["HAM_2", "HAM_1"]
    with pytest.raises(InvalidArgument, match="ISIC_9, ISIC_8"):
        groups_for(["ISIC_1", "ISIC_9", "ISIC_8"], mapping, "m")
    with pytest.raises(InvalidArgument, match="no column 'patient'"):
        read_groups(csv_path, "image_id", "patient")
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_groups(tmp_path / "absent.csv", "image_id", "lesion_id")
