"""`import masks`: binary and instance-id masks, resizing, grouped splits, errors, real data."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common import cli_data
from services.common.datasets import Dataset, list_datasets
from services.common.importers import ImportOptions, ImportProblems, MaskOptions, binary_components, import_masks
from services.common.imageio import resize_mask
from services.common.splits import SplitSpec
from services.common.store import FileStore, ObjectStore

ONE = ImportOptions(workers=1)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="synthaug")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def write_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def noise_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def nothing_registered(store: ObjectStore) -> bool:
    return store.list("datasets/") == [] and list_datasets(store) == {}


def two_blobs_and_a_speck(h: int = 64, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5:25, 5:25] = 255  # 400 px
    m[40:60, 30:60] = 255  # 600 px
    m[30, 2] = 255  # 1 px speck, nearest to the first blob
    return m


def test_binary_components_keep_every_pixel() -> None:
    fg = two_blobs_and_a_speck() > 0
    every, merged = binary_components(fg, 0)
    assert len(every) == 3 and merged == 0
    two, merged = binary_components(fg, 10)
    assert len(two) == 2 and merged == 1
    assert np.array_equal(two.any(axis=0), fg) and (two.sum(axis=0) <= 1).all()
    assert two[0][30, 2]  # the speck joined the nearest blob (the first one)
    only, _ = binary_components(fg, 10_000)  # nothing big enough: the largest still stands
    assert len(only) == 1 and np.array_equal(only[0], fg)


def test_binary_and_instance_masks(tmp_path: Path, store: ObjectStore) -> None:
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    write_rgb(img_dir / "a.jpg", noise_image(64, 64, 0))
    write_mask(mask_dir / "a_segmentation.png", two_blobs_and_a_speck())
    ids = np.zeros((64, 64), np.uint16)  # instance ids, uint16, with a gap in the numbering
    ids[0:10, 0:10], ids[20:30, 20:30], ids[50:64, 0:64] = 1, 2, 700
    ids[25, 40:45] = 2  # instance 2 in two pieces: still one instance
    write_rgb(img_dir / "b.png", noise_image(64, 64, 1))
    write_mask(mask_dir / "b_segmentation.png", ids)
    write_rgb(img_dir / "c.png", noise_image(64, 64, 2))
    write_mask(mask_dir / "c_segmentation.png", np.zeros((64, 64), np.uint8))  # background only

    summary = import_masks(
        store, img_dir, mask_dir, MaskOptions(pattern="{stem}_segmentation.png", min_area=10),
        ImportOptions(name="tiny", size=None, split=None, workers=1),
    )
    ds = Dataset.load(store, "tiny")
    assert summary.images == 3 and summary.instances == 5 and summary.images_without_instances == 1
    assert summary.notes == {"fragments_merged": 1} and ds.split_sizes() == {"": 3}
    recs = {r["file_name"]: r for r in ds.image_records()}
    a, b = ds.load_sample(recs["a.jpg"]), ds.load_sample(recs["b.png"])
    assert len(a.masks) == 2 and np.array_equal(a.masks.any(axis=0), two_blobs_and_a_speck() > 0)
    assert [int(m.sum()) for m in b.masks] == [100, 105, 14 * 64]
    for value, m in zip((1, 2, 700), b.masks):
        assert np.array_equal(m, ids == value)
    assert np.array_equal(b.image, noise_image(64, 64, 1))  # PNG in, lossless all the way
    assert list(b.labels) == [1, 1, 1] and ds.categories[0]["name"] == "lesion"
    # image_format auto: unresized PNG/JPEG sources are stored as their own bytes (no re-encoding)
    assert recs["a.jpg"]["key"].endswith(".jpg")
    assert store.get_bytes(recs["a.jpg"]["key"]) == (img_dir / "a.jpg").read_bytes()
    assert np.array_equal(a.image, cv2.cvtColor(cv2.imread(str(img_dir / "a.jpg")), cv2.COLOR_BGR2RGB))


def test_resize_is_nearest_for_masks(tmp_path: Path, file_store: FileStore) -> None:
    ids = np.zeros((90, 120), np.uint8)
    ids[10:50, 10:60], ids[60:85, 70:115] = 1, 2
    write_rgb(tmp_path / "i" / "x.png", noise_image(90, 120, 3))
    write_mask(tmp_path / "m" / "x.png", ids)
    import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(), ImportOptions(name="r", size=64, split=None, workers=1))
    s = Dataset.load(file_store, "r").load_sample(1)
    assert s.image.shape == (64, 64, 3) and s.masks.shape == (2, 64, 64)
    assert s.record["key"].endswith(".png")  # resized: re-encoded losslessly
    assert np.array_equal(s.masks, np.stack([resize_mask(ids == 1, 64), resize_mask(ids == 2, 64)]))
    kept = import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(), ImportOptions(name="k", size=None, split=None, workers=1))
    assert Dataset.load(file_store, kept.dataset_id).load_sample(1).image.shape == (90, 120, 3)


def test_grouped_split_from_metadata_csv(tmp_path: Path, file_store: FileStore) -> None:
    rows = ["lesion_id,image_id,dx"]
    groups = {}
    for i in range(30):
        stem = f"ISIC_{i:07d}"
        groups[stem] = f"HAM_{i // 3:07d}"  # three photos per lesion
        rows.append(f"{groups[stem]},{stem},nv")
        m = np.zeros((32, 32), np.uint8)
        m[8:24, 8:24] = 255
        write_rgb(tmp_path / "i" / f"{stem}.jpg", noise_image(32, 32, i))
        write_mask(tmp_path / "m" / f"{stem}_segmentation.png", m)
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    opts = ImportOptions(name="g", size=None, split=SplitSpec(0.6, 0.2, 0.2, seed=9, group_by="lesion_id"),
                         metadata=str(tmp_path / "meta.csv"), workers=1)
    import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(pattern="{stem}_segmentation.png"), opts)
    ds = Dataset.load(file_store, "g")
    split_of_group: dict[str, set[str]] = {}
    for r in ds.image_records():
        split_of_group.setdefault(groups[Path(r["file_name"]).stem], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_group.values())
    assert ds.split_sizes() == {"train": 18, "val": 6, "test": 6}  # groups of 3 fit the targets exactly
    assert ds.provenance["params"]["split"] == {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 9, "group_by": "lesion_id"}

    # an image the CSV does not know → exit 2 naming it, nothing new registered
    write_rgb(tmp_path / "i" / "ISIC_9999999.jpg", noise_image(32, 32, 99))
    write_mask(tmp_path / "m" / "ISIC_9999999_segmentation.png", np.full((32, 32), 255, np.uint8))
    before = file_store.list("datasets/")
    with pytest.raises(ImportProblems, match="ISIC_9999999"):
        import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(pattern="{stem}_segmentation.png"), opts)
    assert file_store.list("datasets/") == before


def test_bad_input_lists_every_offender_and_registers_nothing(tmp_path: Path, file_store: FileStore,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    for stem in ("ok1", "ok2", "nomask", "small", "broken"):
        write_rgb(img_dir / f"{stem}.png", noise_image(40, 40, 0))
    for stem in ("ok1", "ok2", "broken"):
        write_mask(mask_dir / f"{stem}.png", np.full((40, 40), 255, np.uint8))
    write_mask(mask_dir / "small.png", np.full((20, 40), 255, np.uint8))
    url = f"file://{file_store.root}"
    base = ["import", "masks", "--images", str(img_dir), "--masks", str(mask_dir), "--store", url, "--workers", "1"]
    # a missing mask is found before any decoding
    assert run_cli(base) == 2
    err = capsys.readouterr().err
    assert "nomask.png: no mask nomask.png" in err and "nothing was registered" in err
    (img_dir / "nomask.png").unlink()
    (img_dir / "broken.png").write_bytes(b"this is not a PNG")
    # decoding problems: every offender is listed, not just the first
    assert run_cli(base + ["--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "broken.png: not a readable image" in err
    assert "small.png: mask small.png is 40×20, image is 40×40" in err
    assert nothing_registered(file_store)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["import", "masks", "--images", str(empty), "--masks", str(mask_dir), "--store", url]) == 2
    assert "no images" in capsys.readouterr().err
    assert run_cli(["import", "masks", "--images", str(tmp_path / "absent"), "--masks", str(mask_dir), "--store", url]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(base + ["--pattern", "{id}.png"]) == 2
    assert "{stem}" in capsys.readouterr().err
    assert nothing_registered(file_store)


def test_worker_count_does_not_change_the_dataset(tmp_path: Path, file_store: FileStore) -> None:
    for i in range(12):
        m = np.zeros((48, 48), np.uint8)
        m[4 + i : 30 + i, 6:40] = 255
        write_rgb(tmp_path / "i" / f"im{i:02d}.jpg", noise_image(48, 48, i))
        write_mask(tmp_path / "m" / f"im{i:02d}.png", m)
    one = import_masks(file_store, tmp_path / "i", tmp_path / "m", options=ImportOptions(workers=1, size=32))
    two = import_masks(file_store, tmp_path / "i", tmp_path / "m", options=ImportOptions(workers=2, size=32))
    assert one.dataset_id == two.dataset_id and one.images == 12


def test_cli_against_s3(tmp_path: Path, s3_env: str, isic_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A small ISIC subset through the CLI into a real S3 server (moto)."""
    stems = sorted(p.stem for p in (isic_root / "train" / "images").glob("*.jpg"))[:6]
    for stem in stems:
        shutil.copy(isic_root / "train" / "images" / f"{stem}.jpg", tmp_path / f"{stem}.jpg")
        (tmp_path / "m").mkdir(exist_ok=True)
        shutil.copy(isic_root / "train" / "masks" / f"{stem}_segmentation.png", tmp_path / "m")
    argv = ["import", "masks", "--images", str(tmp_path), "--masks", str(tmp_path / "m"),
            "--pattern", "{stem}_segmentation.png", "--name", "isic-s3", "--store", s3_env, "--workers", "1", "--json"]
    assert run_cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 6 and summary["instances"] == 6
    from services.common.store import open_store

    ds = Dataset.load(open_store(s3_env), "isic-s3")
    assert len(ds) == 6 and ds.load_sample(1).masks.shape == (1, 256, 256)


@pytest.mark.realdata
def test_isic_train_real_data(isic_root: Path, file_store: FileStore, capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance command, through the real `synthaug` entry point."""
    from orchestrator.cli import main

    url = f"file://{file_store.root}"
    argv = ["import", "masks", "--images", str(isic_root / "train" / "images"), "--masks", str(isic_root / "train" / "masks"),
            "--pattern", "{stem}_segmentation.png", "--name", "isic-train", "--store", url, "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "images    1600" in out and "train 1280, val 160, test 160" in out and "time" in out
    ds = Dataset.load(file_store, "isic-train")
    assert len(ds) == 1600 and len(ds.manifest["annotations"]) == 1600
    assert all(len(ds.annotations_of(r["id"])) == 1 for r in ds.image_records())
    # the stored instance is exactly the expert mask (fragments included)
    rec = ds.image_records()[0]
    expert = cv2.imread(str(isic_root / "train" / "masks" / (Path(rec["file_name"]).stem + "_segmentation.png")), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(ds.load_masks(rec)[0][0], expert > 0)
