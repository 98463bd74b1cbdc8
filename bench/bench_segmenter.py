"""Segmenter throughput: training and inference images/s, ours vs the thesis configuration.

    PYTHONPATH=. python bench/bench_segmenter.py [--iters 3] [--device cpu|cuda] [--batch 8]
        [--amp bf16] [--threads N] [--isic PATH --epochs E]

Configurations (ResNet-50-FPN Mask R-CNN, 256-px images, 1-3 lesions each):
  ours    float32 (AMP on CUDA when --amp), resize = image size (256 px), batch --batch
  thesis  float64, torchvision's default resize (800/1333 px), batch 8
Each is timed for --iters training iterations (after one untimed warm-up) and --iters
inference batches; the ratio ours/thesis is printed. With --isic a real from-scratch training
run on ISIC-2018 256 px (train/val folders) prints val IoU per epoch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.segmenter.core.data import CategoryMap, InMemorySource, TrainingDataset, collate  # noqa: E402
from services.segmenter.core.models import ModelSpec, build_model  # noqa: E402
from services.segmenter.core.predictor import autocast  # noqa: E402
from tests.unit.segmenter_shapes import make_source  # noqa: E402


def batches(size: int, n: int, batch: int) -> list:
    src = make_source("bench", n, size=size, seed=0, max_objects=3)
    ds = TrainingDataset([src], [(0, i) for i in src.image_ids()], CategoryMap(src.categories), None, seed=0)
    return [collate([ds[((k * batch + j) % n, 0)] for j in range(batch)]) for k in range(4)]


def time_config(name: str, spec: ModelSpec, dtype: torch.dtype, batch: int, iters: int, device: torch.device,
                amp: str, warmup: bool = True) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(spec).to(device=device, dtype=dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == "fp16")
    data = batches(256, 16, batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(k: int) -> None:
        images, targets = data[k % len(data)]
        images = [im.to(device, dtype) for im in images]
        targets = [{key: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for key, v in t.items()}
                   for t in targets]
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    model.train()
    if warmup:
        step(0)
    sync()
    t0 = time.perf_counter()
    for k in range(iters):
        step(k + 1)
    sync()
    train_ips = iters * batch / (time.perf_counter() - t0)

    model.eval()
    with torch.inference_mode():
        images = [im.to(device, dtype) for im in data[0][0]]
        if warmup:
            with autocast(device, amp):
                model(images)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            with autocast(device, amp):
                model(images)
        sync()
    infer_ips = iters * batch / (time.perf_counter() - t0)
    print(f"{name:8s} dtype={str(dtype).split('.')[-1]:8s} resize={spec.min_size}/{spec.max_size} batch={batch} "
          f"amp={amp if device.type == 'cuda' else 'none'}: train {train_ips:8.2f} img/s   inference {infer_ips:8.2f} img/s",
          flush=True)
    return train_ips, infer_ips


def isic_run(root: Path, epochs: int, batch: int, amp: str, workers: int) -> None:
    from services.common.imageio import read_image, read_mask
    from services.segmenter.config import SegmenterConfig
    from services.segmenter.core.checkpoints import DirectoryCheckpointIO
    from services.segmenter.core.data import Example
    from services.segmenter.core.trainer import Trainer

    def load(split: str) -> InMemorySource:
        examples = []
        for i, img in enumerate(sorted((root / split / "images").glob("*.jpg"))):
            mask = read_mask(root / split / "masks" / f"{img.stem}_segmentation.png") > 0
            examples.append(Example(i + 1, read_image(img), mask[None], np.array([1])))
        return InMemorySource(f"isic {split}", [{"id": 1, "name": "lesion"}], examples)

    train, val = load("train"), load("val")
    cfg = SegmenterConfig(epochs=epochs, batch_size=batch, amp=amp, num_workers=workers, warmup_iters=200,
                          grad_clip=10.0)
    result = Trainer(cfg, [(train, len(train.examples))], val, DirectoryCheckpointIO(tempfile.mkdtemp()),
                     progress=lambda f, m, x: print(m, {k: round(v, 4) for k, v in (x or {}).items()
                                                         if k.startswith("val/") or k == "images_per_s"}, flush=True)
                     if m.endswith("done") else None).run()
    for e in result.record["epochs"]:
        print(f"epoch {e['epoch'] + 1}: val IoU {e['val']['iou']:.4f} F1 {e['val']['f1']:.4f} "
              f"train {e['images_per_s']:.1f} img/s")
    print(f"best epoch {result.record['best_epoch'] + 1}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="bf16")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-thesis", action="store_true")
    p.add_argument("--thesis-batch", type=int, default=8, help="8 as in the thesis; smaller on slow CPUs")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up step (slow CPUs)")
    p.add_argument("--isic", default="")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}", flush=True)
    if args.isic:
        isic_run(Path(args.isic), args.epochs, args.batch, args.amp, args.workers)
        return 0
    ours = time_config("ours", ModelSpec("maskrcnn_resnet50_fpn", 2, 256, 256), torch.float32, args.batch,
                       args.iters, device, args.amp, not args.no_warmup)
    if not args.skip_thesis:
        thesis = time_config("thesis", ModelSpec("maskrcnn_resnet50_fpn", 2, 800, 1333), torch.float64,
                             args.thesis_batch, args.iters, device, "none", not args.no_warmup)
        print(f"ratio ours/thesis: training {ours[0] / thesis[0]:.1f}x, inference {ours[1] / thesis[1]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
