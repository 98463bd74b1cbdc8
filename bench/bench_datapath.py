"""The segmenter's training data path alone: images/s at 256 px, before and after.

    PYTHONPATH=. python bench/bench_datapath.py [--images 256] [--batch 32] [--steps 8]
        [--threads 1,2] [--device cpu|cuda] [--isic DIR] [--before REV] [--default-allocator]

*Before*: the per-image path of the trainer up to commit REV (default 7fdd466, loaded from
git history, so it is measured as it was): every draw decodes its image and masks from the
store, augments them with OpenCV/numpy, converts them to tensors and builds the target, in
the trainer's DataLoader (no worker processes on CPU, its default there).

*After*: the current path (services/segmenter/core/data.py TrainingDataset): the training
set decoded once into a uint8 tensor cache, then each step's batch gathered from the cache
and augmented on the training device (core/augment.py; on CPU image by image with OpenCV:
resize on the uint8 pixels, crop or pad, flips and turns, the colour matrix within the
conversion to float; the masks by two integer gathers).

Both serve the same draws of the same training stream, with augmentation, in one process
whose allocator keeps freed memory as the trainer's does (services/common/allocator.py;
``--default-allocator`` leaves glibc's defaults, to measure what that policy is worth).
Figures are images/s, and per core at 1 thread; the machine's other load is printed with
them, as the figures on a shared machine are noisy. Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import cv2
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from figures import import_isic

from services.common.allocator import retain_freed_memory
from services.common.datasets import Dataset, DatasetWriter
from services.common.store import FileStore
from services.segmenter.core.augment import AugmentConfig
from services.segmenter.core.data import CategoryMap, ExampleSource, TrainingDataset
from services.segmenter.core.sources import DatasetSplitSource
from services.segmenter.core.stream import TrainingStream
from services.segmenter.core.trainer import decode_threads

DEFAULT_ISIC = REPO.parent / "shared" / "data" / "isic2018-256" / "train"
BEFORE_REV = "7fdd466"


def store_dataset(root: Path, n: int, isic: Path | None) -> ExampleSource:
    """``n`` training images in a file store, as the trainer reads them: ISIC JPEGs with their
    lesion masks when ``isic`` is given, else synthetic 256-px shapes (PNG)."""
    from tests.unit.segmenter_shapes import make_example

    store = FileStore(root)
    if isic is not None:
        return DatasetSplitSource(import_isic(store, isic, n, workers=min(4, os.cpu_count() or 1)), "")
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name="bench", seed=0)
    for i in range(n):
        ex = make_example(i + 1, 256, seed=0, max_objects=3)
        writer.add(ex.image, ex.masks, ex.category_ids.tolist(), f"img{i:04d}.png")
    return DatasetSplitSource(Dataset.load(store, writer.finish().id), "")


def load_before(rev: str) -> ModuleType | None:
    """services/segmenter/core/data.py as of ``rev`` (None without git or that revision)."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:services/segmenter/core/data.py"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("synthaug_bench_data_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:services/segmenter/core/data.py", "exec"), module.__dict__)
    return module


def steps(stream: TrainingStream, n: int) -> list[list[tuple[int, int]]]:
    return [stream.draws(t) for t in range(n)]


def measure_before(before: ModuleType, source: ExampleSource, batch: int, n_steps: int, threads: int) -> float:
    """Images/s of the per-image path, in the DataLoader the trainer used (0 workers);
    ``threads`` torch threads and OpenCV threads."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    items = [(0, i) for i in source.image_ids()]
    dataset = before.TrainingDataset([source], items, CategoryMap(source.categories), before.AugmentConfig(), 0)
    draws = steps(TrainingStream([True] * len(items), 0, batch), n_steps + 1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=draws, collate_fn=before.collate, num_workers=0)
    iterator = iter(loader)
    next(iterator)  # warm-up
    t0 = time.perf_counter()
    count = sum(len(images) for images, _targets in iterator)
    return count / (time.perf_counter() - t0)


def build_cache(source: ExampleSource, device: torch.device, threads: int, augment: bool = True) -> tuple[TrainingDataset, float]:
    """The decoded cache and its build rate (images/s)."""
    items = [(0, i) for i in source.image_ids()]
    t0 = time.perf_counter()
    data = TrainingDataset([source], items, CategoryMap(source.categories), AugmentConfig() if augment else None, 0,
                           device=device, threads=threads)
    return data, len(items) / (time.perf_counter() - t0)


def measure_after(data: TrainingDataset, batch: int, n_steps: int, threads: int) -> float:
    """Images/s of batches served from the cache (core/augment.py), on the dataset's device;
    ``threads`` torch threads and OpenCV threads on CPU."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    draws = steps(TrainingStream([True] * len(data), 0, batch), n_steps + 1)
    data.batch(draws[0])  # warm-up
    sync = torch.cuda.synchronize if data.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    count = 0
    for d in draws[1:]:
        images, _targets = data.batch(d)
        count += len(images)
    sync()
    return count / (time.perf_counter() - t0)


def conditions(args: argparse.Namespace, source_kind: str, retained: bool) -> list[str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [f"CPU {cpu}, {os.cpu_count()} cores visible, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            "(a shared machine: figures are noisy)",
            f"torch {torch.__version__}, device {args.device}, {args.images} images of {source_kind} at 256 px, "
            f"batch {args.batch}, {args.steps} timed steps after one warm-up, augmentation on",
            "allocator: " + ("freed memory kept for reuse, as in the trainer (before and after alike)" if retained
                             else "glibc's defaults" if args.default_allocator else "defaults (no glibc: policy n/a)")]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", default="1,2", help="torch threads to measure with, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--isic", type=Path, default=DEFAULT_ISIC if DEFAULT_ISIC.is_dir() else None,
                   help="ISIC-style folder (images/, masks/); default ../shared/data/isic2018-256/train when present")
    p.add_argument("--before", default=BEFORE_REV, help="git revision of the per-image path (default %(default)s)")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's allocator defaults (the trainer keeps freed memory for reuse)")
    args = p.parse_args(argv)
    retained = False if args.default_allocator else retain_freed_memory()
    thread_counts = [int(t) for t in args.threads.split(",")]
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        source = store_dataset(Path(tmp), args.images, args.isic)
        kind = "ISIC JPEGs with masks" if args.isic is not None else "synthetic shapes (PNG)"
        for line in conditions(args, kind, retained):
            print(line)
        results: dict[str, Any] = {}
        before = load_before(args.before)
        if before is None:
            print(f"before: skipped (git revision {args.before} unavailable)")
        else:
            for t in thread_counts:
                results[f"before, {t} thread(s)"] = measure_before(before, source, args.batch, args.steps, t)
        data, decode_rate = build_cache(source, device, decode_threads(-1))
        print(f"cache: decoded {len(data)} images once at {decode_rate:.0f} images/s with {decode_threads(-1)} threads "
              f"({data.nbytes / 2**20:.0f} MB on {data.cache_device})")
        for t in thread_counts:
            results[f"after, {t} thread(s)"] = measure_after(data, args.batch, args.steps, t)
        print(f"\n{'path':28s} {'images/s':>10s} {'per core':>10s}")
        for name, rate in results.items():
            threads = int(name.split(", ")[1].split()[0])
            print(f"{name:28s} {rate:10.0f} {rate / threads if device.type == 'cpu' else float('nan'):10.0f}")
        after_1 = results.get("after, 1 thread(s)")
        before_1 = results.get("before, 1 thread(s)")
        if after_1 and before_1:
            print(f"\nspeed-up at 1 thread: {after_1 / before_1:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
