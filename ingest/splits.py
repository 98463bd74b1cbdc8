"""Seeded, leak-free train/val/test splits.

Why hash ordering instead of shuffling a list: the order of groups depends only on
`(seed, group key)`, not on the order in which files were listed (which differs between file
systems and exports), so re-importing the same data gives the same split on any machine.

Grouping (e.g. HAM10000's `lesion_id`: several photos of one lesion) keeps every member of a
group in one split, so no lesion is seen in training and in evaluation. Without grouping every
item is its own group and the split sizes are exact: `round(n·val)`, `round(n·test)`, rest train.
With groups, the sizes are as close as whole groups allow (each group goes to the split in whose
range the middle of its run of images falls).
"""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from services.common.errors import InvalidArgument

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of images per split, the seed of the assignment and the optional group column."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    group_by: str = ""

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"split fraction {name} must be in [0, 1], got {value!r}")
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise InvalidArgument(
                f"split fractions must sum to 1, got train={self.train} val={self.val} test={self.test} (sum {total:g})"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgument(f"split seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def parse(cls, text: str, seed: int = 0, group_by: str = "") -> SplitSpec | None:
        """`"0.8,0.1,0.1"` (train,val,test) or `"none"` → None (leave images unsplit)."""
        if text.strip().lower() in ("none", "", "0"):
            return None
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise InvalidArgument(f"--split must be 'TRAIN,VAL,TEST' fractions or 'none', got {text!r}")
        try:
            train, val, test = (float(p) for p in parts)
        except ValueError:
            raise InvalidArgument(f"--split must be three numbers 'TRAIN,VAL,TEST', got {text!r}") from None
        return cls(train=train, val=val, test=test, seed=seed, group_by=group_by)

    def params(self) -> dict:
        """What the manifest records in `synthaug.params["split"]`."""
        d = asdict(self)
        return {"fractions": {k: d[k] for k in SPLITS}, "seed": self.seed, "group_by": self.group_by}


def split_sizes(n: int, spec: SplitSpec) -> dict[str, int]:
    """Exact target sizes: val and test rounded (half up), train takes the rest."""
    n_val = int(n * spec.val + 0.5)
    n_test = int(n * spec.test + 0.5)
    if n_val + n_test > n:  # only possible through rounding with train = 0
        n_test = n - n_val
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _rank(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{group}".encode()).digest()


def assign_splits(keys: Sequence[str], spec: SplitSpec, groups: Sequence[str] | None = None) -> list[str]:
    """The split ("train"/"val"/"test") of each item, in the order of `keys`.

    `keys` identify items (unique, e.g. file stems); `groups[i]` is item i's group (items with
    the same group always share a split). Without `groups` each key is its own group.
    """
    if len(set(keys)) != len(keys):
        dupes = sorted(k for k, c in Counter(keys).items() if c > 1)
        raise InvalidArgument(f"split keys must be unique; duplicated: {', '.join(dupes[:10])}")
    if groups is None:
        groups = list(keys)
    if len(groups) != len(keys):
        raise InvalidArgument(f"split needs one group per item: {len(groups)} groups for {len(keys)} items")
    sizes = split_sizes(len(keys), spec)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    order = sorted(members, key=lambda g: (_rank(spec.seed, g), g))
    # cumulative boundaries in the order test | val | train: small splits are filled first so
    # that rounding slack from large groups lands in train, the split that can absorb it
    bounds = [("test", sizes["test"]), ("val", sizes["test"] + sizes["val"]), ("train", len(keys))]
    out = [""] * len(keys)
    position = 0
    for g in order:
        idx = members[g]
        middle = position + len(idx) / 2.0
        split = next(name for name, end in bounds if middle < end or name == "train")
        for i in idx:
            out[i] = split
        position += len(idx)
    return out


def read_groups(csv_path: str | Path, id_column: str, group_column: str) -> dict[str, str]:
    """`{id: group}` from a metadata CSV (e.g. HAM10000: image_id → lesion_id)."""
    path = Path(csv_path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            for column in (id_column, group_column):
                if column not in fields:
                    raise InvalidArgument(
                        f"metadata {path}: no column {column!r} (columns: {', '.join(fields) or 'none'})"
                    )
            mapping: dict[str, str] = {}
            conflicts: list[str] = []
            for row in reader:
                key, group = (row[id_column] or "").strip(), (row[group_column] or "").strip()
                if not key:
                    continue
                if key in mapping and mapping[key] != group:
                    conflicts.append(key)
                mapping[key] = group
    except OSError as exc:
        raise InvalidArgument(f"metadata {path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgument(f"metadata {path}: not a readable CSV ({exc})") from None
    if conflicts:
        raise InvalidArgument(f"metadata {path}: ids with two different {group_column!r}: {', '.join(conflicts[:10])}")
    return mapping


def groups_for(keys: Sequence[str], mapping: Mapping[str, str], source: str) -> list[str]:
    """The group of each key; InvalidArgument listing the keys the metadata lacks or leaves empty."""
    missing = [k for k in keys if not mapping.get(k)]
    if missing:
        more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
        raise InvalidArgument(
            f"{source}: no group for {len(missing)} image(s): {', '.join(missing[:20])}{more}"
        )
    return [mapping[k] for k in keys]
