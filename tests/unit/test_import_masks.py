"""`import masks`: binary and instance-id masks, resizing, grouped splits, errors, real data."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ingest import cli_data
from ingest.importers import ImportOptions, ImportProblems, MaskOptions, binary_components, import_masks
from ingest.splits import SplitSpec
from services.common.datasets import Dataset, list_datasets
from services.common.imageio import resize_mask
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


# --- lossy masks are refused, never guessed at --------------------------------------------------


def jpeg_masks(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """Two images whose binary masks were saved as JPEG (quality 90), as some exports do."""
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    truth = two_blobs_and_a_speck()
    for i, stem in enumerate(("a", "b")):
        write_rgb(img_dir / f"{stem}.png", noise_image(64, 64, i))
        mask_dir.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(mask_dir / f"{stem}.jpg"), truth, [cv2.IMWRITE_JPEG_QUALITY, 90])
    lossy = cv2.imread(str(mask_dir / "a.jpg"), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(lossy)) > 10  # really lossy: grey levels all along the edges
    return img_dir, mask_dir, truth


@pytest.mark.parametrize("mask_type", ["auto", "binary", "instance"])
def test_jpeg_masks_are_refused_with_advice(tmp_path: Path, file_store: FileStore, mask_type: str) -> None:
    img_dir, mask_dir, _ = jpeg_masks(tmp_path)
    with pytest.raises(ImportProblems) as exc:
        import_masks(file_store, img_dir, mask_dir, MaskOptions(pattern="{stem}.jpg", mask_type=mask_type), ONE)
    assert len(exc.value.problems) == 2
    text = str(exc.value)
    assert "a.png: mask a.jpg is a JPEG file" in text and "b.png: mask b.jpg is a JPEG file" in text
    assert "--mask-type binary --mask-threshold 128" in text and "save them as PNG" in text
    assert nothing_registered(file_store)


def test_jpeg_disguised_as_png_is_still_a_jpeg(tmp_path: Path, file_store: FileStore) -> None:
    img_dir, mask_dir, _ = jpeg_masks(tmp_path)
    for stem in ("a", "b"):
        (mask_dir / f"{stem}.jpg").rename(mask_dir / f"{stem}.png")
    with pytest.raises(ImportProblems, match="mask a.png is a JPEG file"):
        import_masks(file_store, img_dir, mask_dir, MaskOptions(), ONE)


def test_explicit_threshold_imports_jpeg_masks(tmp_path: Path, file_store: FileStore) -> None:
    img_dir, mask_dir, truth = jpeg_masks(tmp_path)
    opts = MaskOptions(pattern="{stem}.jpg", mask_type="binary", mask_threshold=128, min_area=10)
    summary = import_masks(file_store, img_dir, mask_dir, opts, ImportOptions(name="jpeg", size=None, split=None, workers=1))
    ds = Dataset.load(file_store, "jpeg")
    assert summary.instances == 4 and ds.provenance["params"]["mask_threshold"] == 128
    lossy = cv2.imread(str(mask_dir / "a.jpg"), cv2.IMREAD_UNCHANGED)
    masks = ds.load_sample(1).masks
    assert np.array_equal(masks.any(axis=0), lossy >= 128)  # exactly the threshold asked for
    union, inter = (masks.any(axis=0) | (truth > 0)).sum(), (masks.any(axis=0) & (truth > 0)).sum()
    assert inter / union > 0.97  # and close to the lossless truth


def test_resampled_png_mask_is_refused_unless_told(tmp_path: Path, file_store: FileStore) -> None:
    """A binary mask resized with interpolation: grey levels along every edge, in a PNG."""
    big = np.zeros((64, 64), np.uint8)
    big[8:40, 10:50] = 255
    big[45:60, 20:30] = 255
    blurred = cv2.resize(cv2.resize(big, (27, 27), interpolation=cv2.INTER_AREA), (64, 64), interpolation=cv2.INTER_LINEAR)
    write_rgb(tmp_path / "i" / "x.png", noise_image(64, 64, 0))
    write_mask(tmp_path / "m" / "x.png", blurred)
    with pytest.raises(ImportProblems, match=r"x.png: mask x.png has \d+ distinct non-zero values, \d+ of them only along edges") as exc:
        import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(), ONE)
    assert "--mask-type binary --mask-threshold 128" in str(exc.value) and "--mask-type instance" in str(exc.value)
    with pytest.raises(ImportProblems, match="only along edges"):
        import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(mask_type="binary"), ONE)
    summary = import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(mask_type="binary", mask_threshold=128),
                           ImportOptions(size=None, split=None, workers=1))
    assert summary.instances == 2


def test_instance_masks_with_many_ids_are_not_taken_for_lossy(tmp_path: Path, file_store: FileStore) -> None:
    ids = np.zeros((60, 60), np.uint16)
    for k in range(36):  # 36 instances of 8×8 (each with an inside), 300 + k as ids
        r, c = divmod(k, 6)
        ids[r * 10 + 1 : r * 10 + 9, c * 10 + 1 : c * 10 + 9] = 300 + k
    ids[0, 0:20] = 999  # one thin line instance among them
    write_rgb(tmp_path / "i" / "x.png", noise_image(60, 60, 0))
    write_mask(tmp_path / "m" / "x.png", ids)
    summary = import_masks(file_store, tmp_path / "i", tmp_path / "m", MaskOptions(), ImportOptions(size=None, split=None, workers=1))
    assert summary.instances == 37


def test_threshold_needs_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from services.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--mask-threshold needs --mask-type binary"):
        MaskOptions(mask_threshold=128).validate()
    img_dir, mask_dir, _ = jpeg_masks(tmp_path)
    base = ["import", "masks", "--images", str(img_dir), "--masks", str(mask_dir), "--pattern", "{stem}.jpg",
            "--store", f"file://{tmp_path / 'store'}", "--workers", "1", "--split", "none"]
    assert run_cli(base + ["--mask-threshold", "128"]) == 2
    assert "--mask-threshold needs --mask-type binary" in capsys.readouterr().err
    assert run_cli(base) == 2
    assert "--mask-type binary --mask-threshold 128" in capsys.readouterr().err
    assert run_cli(base + ["--mask-type", "binary", "--mask-threshold", "128"]) == 0


# --- folders: symlinks stay inside, dangling ones are errors -------------------------------------


def test_symlinks_must_stay_inside_the_folders(tmp_path: Path, file_store: FileStore) -> None:
    img_dir, mask_dir, elsewhere = tmp_path / "images", tmp_path / "masks", tmp_path / "elsewhere"
    full = np.full((32, 32), 255, np.uint8)
    for stem in ("ok", "alias-target", "mask-out"):
        write_rgb(img_dir / f"{stem}.png", noise_image(32, 32, 0))
        write_mask(mask_dir / f"{stem}.png", full)
    write_rgb(elsewhere / "secret.png", noise_image(32, 32, 1))
    write_mask(elsewhere / "secret-mask.png", full)
    (img_dir / "outside.png").symlink_to(elsewhere / "secret.png")
    write_mask(mask_dir / "outside.png", full)
    (img_dir / "dangling.png").symlink_to(tmp_path / "gone.png")
    (img_dir / "alias.png").symlink_to(img_dir / "alias-target.png")  # inside the folder: fine
    write_mask(mask_dir / "alias.png", full)
    (mask_dir / "mask-out.png").unlink()
    (mask_dir / "mask-out.png").symlink_to(elsewhere / "secret-mask.png")
    write_rgb(img_dir / "mask-dangling.png", noise_image(32, 32, 2))
    (mask_dir / "mask-dangling.png").symlink_to(tmp_path / "gone-mask.png")
    with pytest.raises(ImportProblems) as exc:
        import_masks(file_store, img_dir, mask_dir, MaskOptions(), ONE)
    problems = sorted(exc.value.problems)
    assert len(problems) == 4, problems
    assert problems[0].startswith("dangling.png: dangling symlink (to ")
    assert problems[1].startswith("mask-dangling.png: mask mask-dangling.png: dangling symlink")
    assert problems[2].startswith("mask-out.png: mask mask-out.png: leads outside")
    assert problems[3].startswith("outside.png: leads outside") and "secret.png" in problems[3]
    assert nothing_registered(file_store)
    for name in ("outside.png", "dangling.png", "mask-dangling.png"):
        (img_dir / name).unlink()
    (mask_dir / "mask-out.png").unlink()
    write_mask(mask_dir / "mask-out.png", full)
    summary = import_masks(file_store, img_dir, mask_dir, MaskOptions(), ImportOptions(size=None, split=None, workers=1))
    assert summary.images == 4  # ok, alias-target, alias (a link inside the folder), mask-out


# --- names: an import never silently moves a name -----------------------------------------------


def folder_with(tmp_path: Path, tag: str, n: int) -> tuple[Path, Path]:
    img_dir, mask_dir = tmp_path / tag / "i", tmp_path / tag / "m"
    for k in range(n):
        write_rgb(img_dir / f"{tag}{k}.png", noise_image(24, 24, k))
        write_mask(mask_dir / f"{tag}{k}.png", np.full((24, 24), 255, np.uint8))
    return img_dir, mask_dir


def test_reimporting_a_name_needs_replace(tmp_path: Path, store: ObjectStore) -> None:
    first = import_masks(store, *folder_with(tmp_path, "a", 2), options=ImportOptions(name="ds", split=None, workers=1))
    again = import_masks(store, *folder_with(tmp_path, "a", 2), options=ImportOptions(name="ds", split=None, workers=1))
    assert again.dataset_id == first.dataset_id and again.replaced == ""  # the same content: nothing moves
    other = folder_with(tmp_path, "b", 3)
    from services.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as exc:
        import_masks(store, *other, options=ImportOptions(name="ds", split=None, workers=1))
    text = str(exc.value)
    assert f"the name 'ds' already names dataset {first.dataset_id}" in text and "nothing was registered" in text
    assert "--replace" in text and f"the old one stays addressable by its id {first.dataset_id}" in text
    assert list_datasets(store) == {"ds": first.dataset_id} and len(store.list("datasets/")) == 1
    moved = import_masks(store, *other, options=ImportOptions(name="ds", split=None, workers=1, replace=True))
    assert moved.replaced == first.dataset_id and moved.images == 3
    assert list_datasets(store) == {"ds": moved.dataset_id}
    assert len(Dataset.load(store, first.dataset_id)) == 2  # the old dataset, by id
    assert any(f"pointed at {first.dataset_id}, which stays addressable" in line for line in moved.lines())


def test_cli_reimport_needs_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"file://{tmp_path / 'store'}"

    def argv(tag: str, n: int) -> list[str]:
        img_dir, mask_dir = folder_with(tmp_path, tag, n)
        return ["import", "masks", "--images", str(img_dir), "--masks", str(mask_dir), "--store", url,
                "--name", "ds", "--workers", "1", "--split", "none"]

    assert run_cli(argv("a", 2)) == 0
    capsys.readouterr()
    assert run_cli(argv("b", 3)) == 2
    err = capsys.readouterr().err
    assert "the name 'ds' already names dataset" in err and "Give --replace" in err
    assert run_cli(argv("b", 3) + ["--replace"]) == 0
    assert "which stays addressable by that id" in capsys.readouterr().out
