"""Speed of procedural demo data and of imports; prints figures (never asserted in tests).

    .venv/bin/python bench/bench_import.py [--isic ../shared/data/isic2018-256] [--count 500] [--workers 2] [--json PATH]

Figures: demo images/s in one process and through the parallel folder writer; demo dataset
registration; ISIC train (1600 image/mask pairs) import into a file:// store with 1 and N
workers. Every configuration writes into its own fresh store or folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import DEFAULT_ISIC, Results, load_note

from ingest.demo_data import DemoConfig, generate_sample, register_demo, write_demo_folder
from ingest.importers import ImportOptions, MaskOptions, import_masks
from services.common.store import FileStore


def bench_demo(res: Results, count: int, workers: int, size: int) -> None:
    config = DemoConfig(size=size)
    generate_sample(0, 0, config)  # warm-up
    t = time.perf_counter()
    for i in range(count):
        generate_sample(0, i, config)
    dt = time.perf_counter() - t
    res.add(f"demo data, generate only, {size} px", count / dt, "images/s", f"{count} images, 1 process; {load_note()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_demo_folder(Path(tmp) / "demo", count, 0, config, workers=workers)
        dt = time.perf_counter() - t
        res.add(f"demo data → folder, {size} px", count / dt, "images/s",
                f"{count} images, {workers} workers incl. pool start: generate + 2 PNGs + COCO json; {load_note()}")
        store = FileStore(Path(tmp) / "store")
        t = time.perf_counter()
        register_demo(store, count, 0, config, ImportOptions(workers=workers))
        dt = time.perf_counter() - t
        res.add(f"demo data → file:// store, {size} px", count / dt, "images/s",
                f"{count} images, {workers} workers, fresh store: generate + PNG + RLE + blobs + manifest; {load_note()}")


def bench_isic(res: Results, root: Path, workers: int) -> None:
    images, masks = root / "train" / "images", root / "train" / "masks"
    if not images.is_dir():
        res.note(f"ISIC import skipped: {images} absent")
        return
    for w in sorted({1, workers}):
        with tempfile.TemporaryDirectory() as tmp:
            store = FileStore(Path(tmp) / "store")
            summary = import_masks(store, images, masks, MaskOptions(pattern="{stem}_segmentation.png"),
                                   ImportOptions(name="isic-train", workers=w))
            res.add(f"ISIC train import, {w} worker(s)", summary.images / summary.seconds, "images/s",
                    f"{summary.images} images / {summary.instances} instances in {summary.seconds:.2f} s, "
                    f"fresh file:// store; {load_note()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    res = Results("import")
    print(f"== import ({load_note()}, workers {args.workers})", flush=True)
    bench_demo(res, args.count, args.workers, args.size)
    bench_isic(res, args.isic, args.workers)
    res.finish(args.json)


if __name__ == "__main__":
    main()
