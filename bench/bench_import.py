"""Speed of procedural demo data and of imports; prints figures (never asserted in tests).

    PYTHONPATH=. python bench/bench_import.py [--isic ../shared/data/isic2018-256] [--count 500] [--workers 2]

Figures: demo images/s in one process and through the parallel folder writer; demo dataset
registration; ISIC train (1600 image/mask pairs) import into a file:// store with 1 and N workers.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from services.common.demo_data import DemoConfig, generate_sample, register_demo, write_demo_folder
from services.common.importers import ImportOptions, MaskOptions, import_masks
from services.common.store import FileStore

REPO = Path(__file__).resolve().parent.parent


def bench_demo(count: int, workers: int, size: int) -> None:
    config = DemoConfig(size=size)
    generate_sample(0, 0, config)  # warm-up
    t = time.perf_counter()
    for i in range(count):
        generate_sample(0, i, config)
    dt = time.perf_counter() - t
    print(f"demo generate   {size}px  1 process   {count / dt:8.0f} images/s  ({dt * 1000 / count:.2f} ms/image)")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_demo_folder(Path(tmp) / "demo", count, 0, config, workers=workers)
        dt = time.perf_counter() - t
        print(f"demo --out      {size}px  {workers} workers   {count / dt:8.0f} images/s  (generate + 2 PNGs + COCO json, incl. pool start)")
        store = FileStore(Path(tmp) / "store")
        t = time.perf_counter()
        register_demo(store, count, 0, config, ImportOptions(workers=workers))
        dt = time.perf_counter() - t
        print(f"demo --store    {size}px  {workers} workers   {count / dt:8.0f} images/s  (generate + PNG + RLE + blobs + manifest)")


def bench_isic(root: Path, workers: int) -> None:
    images, masks = root / "train" / "images", root / "train" / "masks"
    if not images.is_dir():
        print(f"isic: {images} absent, skipped")
        return
    for w in sorted({1, workers}):
        with tempfile.TemporaryDirectory() as tmp:
            store = FileStore(Path(tmp) / "store")
            summary = import_masks(store, images, masks, MaskOptions(pattern="{stem}_segmentation.png"),
                                   ImportOptions(name="isic-train", workers=w))
            print(f"isic import     {summary.images} images, {summary.instances} instances, {w} worker(s): "
                  f"{summary.seconds:6.2f} s  ({summary.images / summary.seconds:.0f} images/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isic", type=Path, default=Path(os.environ.get("SYNTHAUG_ISIC", REPO.parent / "shared" / "data" / "isic2018-256")))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, workers: {args.workers}")
    bench_demo(args.count, args.workers, args.size)
    bench_isic(args.isic, args.workers)


if __name__ == "__main__":
    main()
