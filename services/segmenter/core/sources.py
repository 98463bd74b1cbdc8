"""ExampleSource over a synthaug dataset split (services.common.datasets)."""
from __future__ import annotations

from typing import Any

from services.common.datasets import Dataset
from services.segmenter.core.data import Example


class DatasetSplitSource:
    """The images of one split of a synthaug dataset ('' = all images).

    Picklable as long as the store is (file stores are; DataLoader workers fork on Linux)."""

    def __init__(self, dataset: Dataset, split: str = ""):
        self.dataset = dataset
        self.split = split
        self._records = {int(r["id"]): r for r in dataset.image_records(split)}

    @property
    def name(self) -> str:
        # For people reading messages and records: the id names the content, the registered
        # name (when there is one) is what they typed. Nothing is keyed by it.
        label = self.dataset.id + (f" ({self.dataset.name})" if self.dataset.name else "")
        return f"dataset {label} split {self.split or '(all)'}"

    @property
    def dataset_id(self) -> str:
        return self.dataset.id

    @property
    def kind(self) -> str:
        return self.dataset.kind

    @property
    def categories(self) -> list[dict[str, Any]]:
        return self.dataset.categories

    def image_ids(self) -> list[int]:
        return sorted(self._records)

    def num_annotations(self) -> int:
        return sum(len(self.dataset.annotations_of(i)) for i in self._records)

    def image_size(self, image_id: int) -> tuple[int, int]:
        r = self._records[image_id]
        return int(r["height"]), int(r["width"])

    def load(self, image_id: int) -> Example:
        s = self.dataset.load_sample(self._records[image_id])
        return Example(s.image_id, s.image, s.masks, s.labels, s.iscrowd)
