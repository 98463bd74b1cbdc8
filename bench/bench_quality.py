"""Synthetic-data quality benchmark: the time of the quality metrics (FD, KID, precision /
recall / density / coverage, memorisation, realism) on CPU for a source of 1000 images, at the
widths the feature extractors give: 256 (a ResNet-50 FPN level pooled: the segmenter's
task-aware features; the light resnet18 FPN gives 128) and 2048 (Inception-v3 pool).

    PYTHONPATH=. python bench/bench_quality.py [--images 1000] [--dims 256 2048] [--threads 1] [--extract-images 200]

Sets: real training images 2 × images (so that half of them, the floor's and the train
reference's, is `images` wide), real test images and one synthetic source of `images` each;
every set is then scored at n = images. Features are random (non-negative, correlated, like
pooled activations): the cost does not depend on the values.

Then the feature extraction (`--extract-images`, default 200: images/s is a per-image cost, and
1000 images through three networks take ~10 minutes on 2 cores): each feature space's extractor
as the segmenter's Features job calls it, on ISIC images (noise when absent), untrained weights.
"""
from __future__ import annotations

import os
import sys


def _threads(argv: list[str]) -> str:
    """--threads N, read before numpy is imported (BLAS reads its thread count once)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads(sys.argv[1:]))

import argparse
import platform
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from figures import DEFAULT_ISIC

from services.common.seeding import rng
from services.evaluator.config import QualityConfig
from services.evaluator.core.features import Features, FeatureSet
from services.evaluator.core.quality import SourceInput, assess_quality
from services.evaluator.core.quality_metrics import (
    frechet_distance,
    kernel_inception_distance,
    knn_radii,
    nearest,
    prdc,
    realism_scores,
)
from services.segmenter.config import FeaturesConfig


def features(n: int, dim: int, shift: float, seed: int) -> np.ndarray:
    """n pooled-activation-like vectors: ReLU of a correlated Gaussian (one rank-dim/4 basis
    for every set, plus noise); `shift` moves a set away from the others."""
    basis = rng(0, "bench-quality/basis", dim).normal(size=(dim // 4, dim)) / np.sqrt(dim // 4)
    g = rng(seed, "bench-quality", dim)
    x = g.normal(size=(n, dim // 4)) @ basis + 0.3 * g.normal(size=(n, dim)) + shift
    return np.maximum(x, 0.0).astype(np.float32)


REPEATS = 2
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Best of REPEATS runs (the machine may be shared) and the result."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def line(what: str, seconds: float, detail: str = "") -> None:
    print(f"  {what:<46} {seconds:7.2f} s   {detail}".rstrip())


def bench(n: int, dim: int, config: QualityConfig) -> None:
    train = features(2 * n, dim, 0.0, 1)
    test = features(n, dim, 0.0, 2)
    sources = [features(n, dim, 0.05, 3), features(n, dim, 0.05, 4)]
    a, b, tr = sources[0].astype(np.float64), test.astype(np.float64), train.astype(np.float64)
    print(f"\nD = {dim}: real_train {2 * n}, real_test {n}, sources of {n} images; every set scored at n = {n}")
    t, fd = timed(lambda: frechet_distance(a, b))
    line(f"FD ({'sample space, N ≤ D' if n <= dim else 'D × D eigen'})", t, f"(FD {fd:.3f})")
    m = min(config.kid_subset_size, n // 2)
    t, kid = timed(lambda: kernel_inception_distance(a, b, m, config.kid_subsets, rng(0, "bench-kid")))
    line(f"KID ({config.kid_subsets} subsets of {m})", t, f"(KID {kid.mean:.5f} ± {kid.std:.5f})")
    t, p = timed(lambda: prdc(b, a, config.nearest_k))
    line(f"precision/recall/density/coverage (k = {config.nearest_k})", t,
         f"(P {p.precision:.3f} R {p.recall:.3f} D {p.density:.3f} C {p.coverage:.3f})")
    t, _ = timed(lambda: (nearest(a, tr), nearest(a, b)))
    line(f"memorisation NN search ({n} × {3 * n})", t)
    t, _ = timed(lambda: realism_scores(a, tr, config.nearest_k, knn_radii(tr, config.nearest_k)))
    line(f"realism scores (against {2 * n} training images)", t)
    sets = {"real_train": FeatureSet("real_train", train, np.arange(2 * n)),
            "real_test": FeatureSet("real_test", test, np.arange(n))}
    sets.update({f"gan-s{i}": FeatureSet(f"gan-s{i}", x, np.arange(n)) for i, x in enumerate(sources)})
    t1, _ = timed(lambda: assess_quality(Features("segmenter_fpn", dim, sets), [SourceInput("gan-s0")], config, seed=0))
    line("assess_quality: floor + 1 source", t1, f"→ {n / t1:.0f} synthetic images/s")
    t2, _ = timed(lambda: assess_quality(Features("segmenter_fpn", dim, sets),
                                         [SourceInput("gan-s0"), SourceInput("gan-s1")], config, seed=0))
    line("assess_quality: floor + 2 sources", t2, f"→ each further source {t2 - t1:.2f} s ({n / max(t2 - t1, 1e-9):.0f} images/s)")


def extraction_images(n: int, isic: Path) -> tuple[list[np.ndarray], str]:
    """`n` RGB images at 256 px: ISIC 2018 training images when present, else seeded noise
    (the forward pass costs the same)."""
    import cv2

    paths = sorted((isic / "train" / "images").glob("*.jpg"))[:n]
    if len(paths) == n:
        images = []
        for path in paths:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise OSError(f"cannot read image {path}")
            images.append(cv2.cvtColor(cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
        return images, f"{n} ISIC 2018 training images at 256 px"
    generator = rng(0, "bench/quality-images")
    return [generator.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)], f"{n} noise images at 256 px (ISIC absent)"


def bench_extraction(n: int, torch_threads: int, batch_size: int, isic: Path) -> None:
    """Images/s of each feature space's extractor (the segmenter's Features job minus the
    store reads), with untrained weights: the cost of a forward pass does not depend on them."""
    import torch
    from torchvision.models import inception_v3

    from services.segmenter.core.data import CategoryMap
    from services.segmenter.core.feature_extraction import Extractor, InceptionExtractor, SegmenterExtractor
    from services.segmenter.core.models import ModelSpec, build_model
    from services.segmenter.core.predictor import LoadedModel

    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    images, what = extraction_images(n, isic)
    print(f"\nFeature extraction: {what}, batch {batch_size}, CPU, {torch_threads} torch thread(s), untrained weights")
    device = torch.device("cpu")
    categories = CategoryMap([{"id": 1, "name": "lesion"}])
    extractors: list[tuple[str, Extractor]] = []
    for architecture in ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn"):
        spec = ModelSpec(architecture=architecture, num_classes=2, min_size=256, max_size=256)
        extractors.append((f"segmenter_fpn ({architecture})", SegmenterExtractor(LoadedModel(build_model(spec), spec, categories), device, "model")))
    state = inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict()
    extractors.append(("inception (Inception-v3, 299 px)", InceptionExtractor(state, "random weights", device)))
    for name, extractor in extractors:
        extractor(images[:2])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            rows = extractor(images[start:start + batch_size])
        seconds = time.perf_counter() - t0
        line(name, seconds, f"→ {n / seconds:.1f} images/s (D = {rows.shape[1]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--dims", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--threads", type=str, default="1", help="BLAS/OpenMP threads (read before numpy loads)")
    p.add_argument("--extract-images", type=int, default=200, help="images per feature space for the extraction timing (0: skip)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1, help="torch threads for the extraction (default: all cores)")
    p.add_argument("--isic", type=Path, default=DEFAULT_ISIC, help="ISIC 2018 at 256 px (noise images when absent)")
    args = p.parse_args()
    config = QualityConfig(max_samples=args.images)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; BLAS/OpenMP threads: "
          f"{os.environ['OMP_NUM_THREADS']}; numpy {np.__version__}; Python {platform.python_version()}")
    print(f"settings: {config}; times: best of {REPEATS} runs")
    for dim in args.dims:
        bench(args.images, dim, config)
    if args.extract_images:
        bench_extraction(args.extract_images, args.torch_threads, FeaturesConfig().batch_size, args.isic)


if __name__ == "__main__":
    main()
