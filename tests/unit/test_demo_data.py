"""Procedural demo data: determinism per (seed, index), exact masks, folder and store output."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ingest import cli_data
from ingest.demo_data import DemoConfig, generate, generate_sample, register_demo, write_demo_folder
from ingest.importers import ImportOptions
from ingest.splits import SplitSpec
from services.common.datasets import Dataset, rle_to_masks
from services.common.errors import InvalidArgument


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="synthaug")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_sample_is_a_pure_function_of_seed_and_index() -> None:
    a = generate_sample(7, 3)
    b = generate_sample(7, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    # a subset generated in another order gives the same images as the full run
    full = list(generate(7, 6))
    assert np.array_equal(full[3].image, a.image)
    assert not np.array_equal(generate_sample(8, 3).image, a.image)
    assert not np.array_equal(generate_sample(7, 4).image, a.image)


def test_masks_are_disjoint_non_empty_instances_on_darker_lesions() -> None:
    counts = []
    for sample in generate(0, 40):
        img, masks = sample.image, sample.masks
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[1:] == (256, 256)
        assert 1 <= len(masks) <= 3 and len(sample.labels) == len(masks)
        assert (masks.sum(axis=0) <= 1).all(), "instances overlap"
        assert (masks.reshape(len(masks), -1).sum(axis=1) >= 30).all()
        grey = img.astype(np.float32).mean(axis=2)
        for m in masks:  # pigmented: darker than a ring of skin around the lesion
            ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~masks.any(axis=0)
            assert grey[m].mean() < grey[ring].mean() - 10
        counts.append(len(masks))
    assert set(counts) == {1, 2, 3}  # the whole range of lesion counts occurs


def test_config_validation() -> None:
    with pytest.raises(InvalidArgument, match="min_lesions"):
        DemoConfig(min_lesions=3, max_lesions=2).validate()
    with pytest.raises(InvalidArgument, match="size"):
        DemoConfig(size=8).validate()
    with pytest.raises(InvalidArgument, match="seed"):
        generate_sample(-1, 0)
    small = generate_sample(1, 0, DemoConfig(size=64, hair_probability=1.0, vignette_probability=1.0))
    assert small.image.shape == (64, 64, 3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_output_is_byte_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    write_demo_folder(tmp_path / "a", 12, seed=5, workers=1)
    write_demo_folder(tmp_path / "b", 12, seed=5, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 12 * 2 + 1 and a == b
    coco = json.loads(a["annotations.json"])
    assert [im["file_name"] for im in coco["images"]] == [f"demo_{i:06d}.png" for i in range(12)]
    assert coco["categories"] == [{"id": 1, "name": "lesion", "supercategory": "skin"}]
    # the instance-id PNG, the COCO RLEs and the generator agree exactly
    for im in coco["images"][:4]:
        ids = cv2.imread(str(tmp_path / "a" / "masks" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        anns = [x for x in coco["annotations"] if x["image_id"] == im["id"]]
        masks = rle_to_masks([x["segmentation"] for x in anns], 256, 256)
        sample = generate_sample(5, im["id"] - 1)
        assert np.array_equal(masks, sample.masks)
        assert np.array_equal(ids, sample.instance_map())
        assert [x["area"] for x in anns] == [int(m.sum()) for m in sample.masks]
        rgb = cv2.cvtColor(cv2.imread(str(tmp_path / "a" / "images" / im["file_name"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb, sample.image)


def test_register_demo_dataset(store) -> None:
    summary = register_demo(store, 10, seed=3, options=ImportOptions(name="demo", split=SplitSpec(0.6, 0.2, 0.2, seed=1)))
    ds = Dataset.load(store, "demo")
    assert ds.id == summary.dataset_id and ds.kind == "real" and len(ds) == 10
    assert ds.split_sizes() == {"train": 6, "val": 2, "test": 2}
    params = ds.provenance["params"]
    assert params["demo"]["seed"] == 3 and params["demo"]["count"] == 10
    assert params["demo"]["max_lesions"] == 3 and params["demo"]["generator"].startswith("synthaug.demo_data/")
    assert params["split"]["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    sample = ds.load_sample(4)
    expected = generate_sample(3, 3)
    assert np.array_equal(sample.image, expected.image) and np.array_equal(sample.masks, expected.masks)
    # same request, same content, same id
    assert register_demo(store, 10, seed=3, options=ImportOptions(name="demo", split=SplitSpec(0.6, 0.2, 0.2, seed=1))).dataset_id == ds.id


def test_cli_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["dataset", "demo", "--count", "3", "--seed", "2", "--out", str(tmp_path / "d"), "--workers", "1"]) == 0
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 3
    assert "wrote 3 images" in capsys.readouterr().out
    assert run_cli(["dataset", "demo", "--count", "2", "--out", str(tmp_path / "d")]) == 2  # never mixes runs
    assert "not an empty folder" in capsys.readouterr().err
    url = f"file://{tmp_path / 'store'}"
    assert run_cli(["dataset", "demo", "--count", "10", "--store", url, "--name", "d4", "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 10 and summary["split_sizes"] == {"train": 8, "val": 1, "test": 1}
    assert run_cli(["dataset", "show", "d4", "--store", url]) == 0
    assert "generator" in capsys.readouterr().out
    assert run_cli(["dataset", "list", "--store", url]) == 0
    assert "d4" in capsys.readouterr().out
    assert run_cli(["dataset", "show", "nope", "--store", url]) == 2
    assert "no dataset named 'nope'" in capsys.readouterr().err
    assert run_cli(["dataset", "demo", "--count", "2", "--min-lesions", "3", "--max-lesions", "2", "--store", url]) == 2
    with pytest.raises(SystemExit) as exc:
        run_cli(["dataset", "demo", "--count", "0"])
    assert exc.value.code == 2
