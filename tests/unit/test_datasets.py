"""Datasets: exact RLE round trips, content-addressed ids, provenance, errors, both stores."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from services.common import datasets as datasets_module
from services.common.datasets import Dataset, DatasetWriter, list_datasets, manifest_key, masks_to_rle, rle_to_masks
from services.common.errors import InvalidArgument, NotFound
from services.common.store import FileStore, ObjectStore

CATS = [{"id": 1, "name": "lesion"}, {"id": 2, "name": "hair"}]


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = rng.random((n, h, w)) < 0.3
    masks[:, 0, 0] = True  # never empty
    return masks


def test_rle_round_trip_exact() -> None:
    rng = np.random.default_rng(1)
    masks = random_masks(rng, 5, 31, 47)
    rles = masks_to_rle(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [31, 47] for r in rles)
    assert np.array_equal(rle_to_masks(rles, 31, 47), masks)
    assert rle_to_masks([], 4, 5).shape == (0, 4, 5)


def test_uncompressed_rle_decodes_like_compressed() -> None:
    m = np.zeros((6, 5), np.uint8)
    m[1:4, 2:4] = 1
    # column-major run lengths: 0s then 1s alternating
    flat = m.flatten(order="F")
    counts, run, cur = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    compressed = mask_utils.frPyObjects({"size": [6, 5], "counts": counts}, 6, 5)
    assert np.array_equal(rle_to_masks([compressed], 6, 5)[0], m.astype(bool))


def build(store: ObjectStore, name: str = "toy", n: int = 3, seed: int = 0) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(store, "real", CATS, name=name, params={"source": "test"}, seed=seed)
    images, masks = [], []
    for i in range(n):
        img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        m = random_masks(rng, i + 1, 20, 30)
        writer.add(img, m, [1 + (k % 2) for k in range(i + 1)], f"img{i}.png", split=("train", "val", "test")[i % 3])
        images.append(img)
        masks.append(m)
    return writer.finish().id, images, masks


def test_write_and_read_back(store: ObjectStore) -> None:
    dataset_id, images, masks = build(store)
    ds = Dataset.load(store, "toy")
    assert ds.id == dataset_id and len(ds) == 3 and ds.kind == "real"
    assert ds.provenance["params"] == {"source": "test"} and ds.provenance["seed"] == 0
    assert [r["split"] for r in ds.image_records()] == ["train", "val", "test"]
    assert [r["file_name"] for r in ds.image_records("val")] == ["img1.png"]
    for i, rec in enumerate(ds.image_records()):
        s = ds.load_sample(rec)
        assert np.array_equal(s.image, images[i])
        assert s.masks.shape == (i + 1, 20, 30) and np.array_equal(s.masks, masks[i])
        assert list(s.labels) == [1 + (k % 2) for k in range(i + 1)]
    anns = ds.manifest["annotations"]
    assert [a["id"] for a in anns] == list(range(1, 7))  # one annotation per instance, never merged
    assert anns[0]["area"] == int(masks[0][0].sum())
    assert ds.split_sizes() == {"train": 1, "val": 1, "test": 1}
    ref = ds.ref()
    assert ref.num_images == 3 and ref.num_instances == 6 and ref.manifest.key == manifest_key(dataset_id)
    assert Dataset.load(store, ref).id == dataset_id
    assert list_datasets(store) == {"toy": dataset_id}


def test_same_content_same_id(store: ObjectStore) -> None:
    a, _, _ = build(store, seed=3)
    b, _, _ = build(store, seed=3)
    c, _, _ = build(store, seed=4)
    assert a == b != c


def test_with_splits_derives_a_child(store: ObjectStore) -> None:
    dataset_id, _, _ = build(store, n=4)
    ds = Dataset.load(store, dataset_id)
    child = Dataset.load(store, ds.with_splits({1: "train", 2: "train", 3: "val", 4: "test"}, {"seed": 5}))
    assert child.id != ds.id and child.provenance["parents"] == [ds.id]
    assert child.provenance["params"]["split"] == {"seed": 5}
    assert child.split_sizes() == {"train": 2, "val": 1, "test": 1}
    assert [r["key"] for r in child.image_records()] == [r["key"] for r in ds.image_records()]  # no image copied
    with pytest.raises(InvalidArgument, match=r"misses image ids \[4\]"):
        ds.with_splits({1: "train", 2: "train", 3: "val"}, {})
    with pytest.raises(InvalidArgument, match="unknown split names"):
        ds.with_splits({1: "train", 2: "train", 3: "val", 4: "holdout"}, {})


def test_errors_name_the_item(file_store: ObjectStore) -> None:
    w = DatasetWriter(file_store, "real", CATS)
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidArgument, match=r"a.png: instance\(s\) \[1\] have an empty mask"):
        w.add(img, np.stack([np.ones((8, 8), bool), np.zeros((8, 8), bool)]), [1, 1], "a.png")
    with pytest.raises(InvalidArgument, match="b.png: mask size 4×4 differs from image size 8×8"):
        w.add(img, np.ones((1, 4, 4), bool), [1], "b.png")
    with pytest.raises(InvalidArgument, match=r"c.png: category ids \[7\]"):
        w.add(img, np.ones((1, 8, 8), bool), [7], "c.png")
    with pytest.raises(InvalidArgument, match="would be empty"):
        w.finish()
    with pytest.raises(InvalidArgument, match="kind"):
        DatasetWriter(file_store, "fake", CATS)
    with pytest.raises(InvalidArgument, match="id must be a positive integer"):
        DatasetWriter(file_store, "real", [{"id": 0, "name": "bg"}])
    with pytest.raises(InvalidArgument, match="invalid dataset name"):
        DatasetWriter(file_store, "real", CATS, name="../evil")
    with pytest.raises(NotFound, match="no dataset named 'ghost'"):
        Dataset.load(file_store, "ghost")
    with pytest.raises(NotFound, match="not found"):
        Dataset.load(file_store, "0" * 32)
    with pytest.raises(InvalidArgument, match="unknown split"):
        Dataset.load(file_store, build(file_store)[0]).image_records("holdout")


def test_nothing_registered_until_finish(file_store: ObjectStore) -> None:
    w = DatasetWriter(file_store, "real", CATS, name="partial")
    w.add(np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool), [1], "a.png")
    assert file_store.list("datasets/") == [] and file_store.list("names/") == []


def test_no_manifest_before_the_images_are_durable(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """finish() writes the manifest only after the store's flush has returned (they run side
    by side with the manifest's encoding); a failing flush leaves no manifest and no name."""
    events: list[str] = []
    flush, put_bytes = file_store.flush, file_store.put_bytes

    def slow_flush() -> None:
        time.sleep(0.2)  # the encoding finishes first: the put must still wait
        flush()
        events.append("flush")

    def recording_put(key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        events.append(f"put {key.split('/')[0]}")
        return put_bytes(key, data, content_type)

    monkeypatch.setattr(file_store, "flush", slow_flush)
    monkeypatch.setattr(file_store, "put_bytes", recording_put)
    w = DatasetWriter(file_store, "real", CATS, name="ordered")
    w.add(np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool), [1], "a.png")
    ref = w.finish()
    assert events == ["flush", "put datasets", "put names"] and Dataset.load(file_store, "ordered").id == ref.id

    def broken_flush() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(file_store, "flush", broken_flush)
    w = DatasetWriter(file_store, "real", CATS, name="unflushed")
    w.add(np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool), [1], "b.png")
    with pytest.raises(OSError, match="Input/output error"):
        w.finish()
    assert file_store.list("datasets/") == [manifest_key(ref.id)] and file_store.list("names/") == ["names/datasets/ordered.json"]


def test_no_flush_thread_for_a_store_without_flush(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose writes are durable at once (S3: ObjectStore.flush does nothing) gets its
    manifest written without a thread for the flush."""
    class NoFlush(FileStore):
        flush = ObjectStore.flush

    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread was started for a flush that does nothing")

    store = NoFlush(tmp_path / "s")
    assert not store.needs_flush and FileStore(tmp_path / "f").needs_flush
    monkeypatch.setattr(datasets_module, "ThreadPoolExecutor", no_threads)
    w = DatasetWriter(store, "real", CATS, name="durable")
    w.add(np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8), bool), [1], "a.png")
    ref = w.finish()
    assert Dataset.load(store, "durable").id == ref.id


def test_image_without_instances(file_store: ObjectStore) -> None:
    """A background-only image (no lesion) is a valid sample with zero annotations."""
    w = DatasetWriter(file_store, "real", CATS)
    image_id = w.add(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8), bool), [], "empty.png")
    ds = Dataset.load(file_store, w.finish())
    sample = ds.load_sample(image_id)
    assert sample.masks.shape == (0, 8, 8) and sample.labels.shape == (0,)
    assert ds.manifest["annotations"] == []
