"""Segmenter throughput: ours against the thesis configuration, and inference of a trained model.

    .venv/bin/python bench/bench_segmenter.py [--quick] [--iters 2] [--device cpu|cuda] [--amp bf16]
        [--threads N] [--batch 8] [--thesis-max-batch 8] [--thesis-iters 1] [--train-size 128] [--train-iters 60]
        [--json PATH]

1. A trained light model (maskrcnn_resnet18_fpn) — trained here, briefly, through the
   service's Trainer on procedural demo images — predicts with the predictor's settings
   (PredictConfig: export threshold 0.05 and at most 100 detections per image, i.e.
   torchvision's box_score_thresh and detections_per_img). Inference is reported as the
   network forward (resize, backbone, RPN, box and mask heads) and the post-processing
   (mask pasting at the image's size, binarising, RLE) separately, with the detections per
   image it produced. An untrained model would return 100 junk detections per image and
   the figure would time mask pasting.
2. ResNet-50-FPN Mask R-CNN, ours against the thesis', training and inference images/s:
     ours    SegmenterConfig defaults: from scratch (trainable BatchNorm, all 5 backbone
             stages trainable), float32 (AMP bf16 on CUDA with --amp), resize = the images'
             256 px, batch --batch;
     thesis  torchvision's COCO fine-tuning structure (maskrcnn_resnet50_fpn as built with
             pretrained weights: FrozenBatchNorm2d, 3 trainable backbone stages, new 2-class
             heads), with random weights instead of a download (BatchNorm statistics
             calibrated on images so activations are normalised as in a trained network),
             float64, torchvision's default resize 800/1333 px, batch as large as memory
             allows up to the thesis' 8 (measured here from a batch-1 step's peak memory).
   Both run SGD (momentum 0.9) on the sum of all five losses on 256-px demo images. Each
   configuration runs in its own process (memory is measured per configuration), one
   untimed warm-up step at batch 1, then --iters (ours) / --thesis-iters timed steps; the
   thesis configuration costs 20-30 s per image on one 2-core machine, so one step of its
   batch is the default (and on a CPU its inference batch is 2). Inference of both is timed
   with the same
   number of detections per image: the trained light model's mean count from (1) (score
   cut 0 and that cap), forward and post-processing separately.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import Results, load_note

LIGHT = "maskrcnn_resnet18_fpn"
THESIS_BATCH = 8  # the thesis' batch size


# --- data -----------------------------------------------------------------------------------

def demo_examples(size: int, start: int, count: int) -> list[Any]:
    from ingest.demo_data import DemoConfig, generate_sample
    from services.segmenter.core.data import Example

    cfg = DemoConfig(size=size)
    out = []
    for i in range(start, start + count):
        s = generate_sample(0, i, cfg)
        out.append(Example(i + 1, s.image, s.masks, s.labels))
    return out


def tensors(examples: list[Any], dtype: Any, device: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """Images in [0, 1] and torchvision targets (boxes from the masks)."""
    import torch

    images, targets = [], []
    for ex in examples:
        images.append(torch.from_numpy(ex.image).permute(2, 0, 1).to(device, dtype).div_(255.0))
        boxes = []
        for m in ex.masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        targets.append({"boxes": torch.tensor(boxes, dtype=dtype, device=device),
                        "labels": torch.ones(len(boxes), dtype=torch.int64, device=device),
                        "masks": torch.from_numpy(ex.masks.astype(np.uint8)).to(device)})
    return images, targets


# --- models ---------------------------------------------------------------------------------

def calibrate_batchnorm(body: Any, size: int, device: Any) -> None:
    """Running statistics of every BatchNorm from two demo images (cumulative average), so a
    randomly initialised network normalises its activations as a trained one does."""
    import torch

    images, _ = tensors(demo_examples(size, 10_000, 2), torch.float32, device)
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    body.train()
    with torch.no_grad():
        body(torch.stack(images))
    body.eval()


def thesis_model(device: Any) -> Any:
    """torchvision's maskrcnn_resnet50_fpn as `weights=...COCO_V1` builds it (FrozenBatchNorm2d
    with eps 0, 3 trainable backbone stages) with 2-class heads, without downloading."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None).to(device)
    calibrate_batchnorm(body, 256, device)

    def freeze(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=0.0).to(device)
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
                setattr(module, name, frozen)
            else:
                freeze(child)

    freeze(body)
    return MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=2)  # resize 800/1333 by default


def ours_model(device: Any) -> Any:
    from services.segmenter.core.models import ModelSpec, build_model

    model = build_model(ModelSpec("maskrcnn_resnet50_fpn", 2, 256, 256)).to(device)
    calibrate_batchnorm(model.get_submodule("backbone.body"), 256, device)
    return model


# --- inference split into forward and post-processing ---------------------------------------

def timed_inference(model: Any, images: list[Any], mask_threshold: float = 0.5) -> tuple[float, float, int]:
    """(forward seconds, post-processing seconds, detections) of one batch: the network up
    to the box and mask heads' outputs, then torchvision's postprocess (boxes to image
    size, masks pasted into the image) and the predictor's binarising + RLE."""
    import torch

    from services.segmenter.core.predictor import encode_rle

    sizes = [tuple(im.shape[-2:]) for im in images]
    with torch.inference_mode():
        t0 = time.perf_counter()
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        sync(images[0].device)
        t1 = time.perf_counter()
        detections = model.transform.postprocess(detections, batch.image_sizes, sizes)
        n = 0
        for det in detections:
            masks = (det["masks"][:, 0] >= mask_threshold).cpu().numpy()
            for m in masks:
                encode_rle(m)
            n += len(masks)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, n


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# --- one configuration, in its own process ---------------------------------------------------

@dataclass
class ConfigJob:
    name: str
    device: str
    threads: int
    batch: int  # training batch; for "thesis" the cap of the memory-derived batch
    iters: int
    detections: int  # per image at inference (score cut 0)
    amp: str = "none"
    infer_batch: int = 4


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def run_config(job: ConfigJob) -> dict[str, Any]:
    """Training and inference images/s of one configuration (called in a fresh process)."""
    import torch

    from services.segmenter.core.predictor import autocast

    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    device = torch.device(job.device)
    thesis = job.name == "thesis"
    dtype = torch.float64 if thesis else torch.float32
    amp = "none" if thesis else job.amp
    model = (thesis_model(device) if thesis else ours_model(device)).to(dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    data = demo_examples(256, 0, 64)

    def step(batch: int, k: int) -> None:
        examples = [data[(k * batch + j) % len(data)] for j in range(batch)]
        images, targets = tensors(examples, dtype, device)
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    out: dict[str, Any] = {"trainable_params": sum(p.numel() for p in params),
                           "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_bytes()
    t0 = time.perf_counter()
    step(1, 0)  # warm-up at batch 1; its peak memory sizes the thesis batch
    sync(device)
    out["warmup_seconds"] = time.perf_counter() - t0
    if device.type == "cuda":
        per_image = torch.cuda.max_memory_allocated(device)
    else:
        per_image = max(1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    out["batch1_peak_gib"] = per_image / 2**30
    batch = job.batch
    if thesis:  # as large as memory allows, up to the thesis' batch
        out["available_gib"] = available_bytes(device) / 2**30
        batch = max(1, min(job.batch, int(0.8 * available_bytes(device) // per_image)))
    out["batch"] = batch
    t0 = time.perf_counter()
    for k in range(job.iters):
        step(batch, k + 1)
    sync(device)
    out["train_images_per_s"] = job.iters * batch / (time.perf_counter() - t0)

    # Inference with a fixed number of detections per image (score cut 0, that cap).
    model.eval()
    model.roi_heads.score_thresh = 0.0
    model.roi_heads.detections_per_img = job.detections
    infer_batch = min(batch, job.infer_batch)
    images, _ = tensors(data[:infer_batch], dtype, device)
    with autocast(device, amp):
        timed_inference(model, images[:1])  # warm-up
        fwd = post = 0.0
        dets = 0
        for _ in range(job.iters):
            f, p, n = timed_inference(model, images)
            fwd, post, dets = fwd + f, post + p, dets + n
    n_images = job.iters * infer_batch
    out.update(infer_batch=infer_batch, forward_ms=1e3 * fwd / n_images, post_ms=1e3 * post / n_images,
               infer_images_per_s=n_images / (fwd + post), detections_per_image=dets / n_images)
    return out


def in_own_process(job: ConfigJob) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_config, (job,))


# --- the trained light model -----------------------------------------------------------------

def light_model(args: argparse.Namespace, res: Results, device: Any, threads: int) -> float:
    """Train the light model briefly (the service's Trainer), time its inference; returns its
    mean detections per image at the predictor's export threshold and cap."""
    import torch

    from services.segmenter.config import PredictConfig, SegmenterConfig
    from services.segmenter.core.checkpoints import DirectoryCheckpointIO
    from services.segmenter.core.data import InMemorySource
    from services.segmenter.core.models import SegmentationModel
    from services.segmenter.core.predictor import load_model_file
    from services.segmenter.core.trainer import Trainer

    cats = [{"id": 1, "name": "lesion"}]
    size = args.train_size
    train = InMemorySource("demo-train", cats, demo_examples(size, 0, args.train_images))
    val = InMemorySource("demo-val", cats, demo_examples(size, 5000, 16))
    cfg = SegmenterConfig(architecture=LIGHT, iterations=args.train_iters, eval_every=args.train_iters, batch_size=4,
                          lr=0.02, warmup_iters=min(10, args.train_iters), grad_clip=10.0, num_workers=0, seed=1,
                          device=str(device), amp=args.amp if device.type == "cuda" else "none")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-segmenter-") as tmp:
        result = Trainer(cfg, [(train, len(train.examples))], val, DirectoryCheckpointIO(tmp)).run()
    seconds = time.perf_counter() - t0
    iou = result.record["epochs"][-1]["val"]["iou"]
    res.add(f"light model training ({LIGHT}, {size} px)", args.train_iters * 4 / seconds, "images/s",
            f"{args.train_iters} iterations × batch 4 on {args.train_images} demo images, float32, {device}, "
            f"{threads} threads; val pixel IoU after: {iou:.2f}; {load_note()}")
    predict = PredictConfig()
    loaded = load_model_file(result.model_file, "trained light model", device)
    model = cast(SegmentationModel, loaded.model)  # a SegmentationModel, as build_model documents
    model.score_threshold, model.detections_per_image = predict.export_threshold, predict.detections_per_image
    images = [torch.from_numpy(ex.image).permute(2, 0, 1).to(device, torch.float32).div_(255.0) for ex in val.examples]
    batch = 8
    timed_inference(model, images[:batch])  # warm-up
    fwd = post = 0.0
    dets = 0
    for k in range(0, len(images), batch):
        f, p, n = timed_inference(model, images[k:k + batch], predict.mask_threshold)
        fwd, post, dets = fwd + f, post + p, dets + n
    n = len(images)
    per_image = dets / n
    truth = sum(len(ex.masks) for ex in val.examples) / n
    cond = (f"{n} demo val images at {size} px, batch {batch}, float32, {device}, {threads} threads; "
            f"score ≥ {predict.export_threshold}, ≤ {predict.detections_per_image} detections/image "
            f"(torchvision's box_score_thresh / detections_per_img): {per_image:.1f} detections/image "
            f"(truth {truth:.1f} lesions/image)")
    res.add("light model inference, network forward", 1e3 * fwd / n, "ms/image", cond)
    res.add("light model inference, post-processing (paste masks, RLE)", 1e3 * post / n, "ms/image", cond)
    res.add("light model inference, total", n / (fwd + post), "images/s", cond)
    return per_image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one timed step each and a thesis batch of 1 (a smoke run)")
    p.add_argument("--iters", type=int, default=0, help="timed training steps / inference batches of ours (default 2; quick 1)")
    p.add_argument("--thesis-iters", type=int, default=1, help="timed training steps / inference batches of the thesis'")
    p.add_argument("--batch", type=int, default=8, help="our training batch")
    p.add_argument("--thesis-max-batch", type=int, default=0,
                   help=f"cap of the thesis batch (default {THESIS_BATCH}, the thesis'; quick 1)")
    p.add_argument("--device", default="")
    p.add_argument("--amp", default="bf16", help="ours on CUDA: bf16, fp16 or none")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU cores)")
    p.add_argument("--train-size", type=int, default=128, help="demo image size the light model trains on")
    p.add_argument("--train-iters", type=int, default=60,
                   help="light model training iterations (fewer leave it untrained: ~20 junk detections per image)")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--skip-thesis", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    args.iters = args.iters or (1 if args.quick else 2)
    thesis_cap = args.thesis_max_batch or (1 if args.quick else THESIS_BATCH)
    res = Results("segmenter")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads")
    print(f"== segmenter ({where}, torch {torch.__version__}, {load_note()})", flush=True)

    dets = light_model(args, res, device, threads)
    k = max(1, math.ceil(dets))
    configs = [ConfigJob("ours", str(device), threads, args.batch, args.iters, k, args.amp)]
    if not args.skip_thesis:
        configs.append(ConfigJob("thesis", str(device), threads, thesis_cap, args.thesis_iters, k,
                                 infer_batch=2 if device.type == "cpu" else 4))
    out = {}
    for job in configs:
        r = out[job.name] = in_own_process(job)
        if job.name == "ours":
            what = (f"R50-FPN from scratch (trainable BN, 5 stages), "
                    f"{'float32' if device.type == 'cpu' or args.amp == 'none' else args.amp + ' AMP'}, 256 px, batch {r['batch']}")
        else:
            fits = int(0.8 * r["available_gib"] // r["batch1_peak_gib"])
            what = (f"R50-FPN COCO fine-tuning structure (FrozenBN, 3 trainable stages, random weights), float64, "
                    f"800/1333 px, batch {r['batch']} (memory allows {fits}: {r['available_gib']:.0f} GiB free, "
                    f"{r['batch1_peak_gib']:.1f} GiB/image measured; capped at {job.batch}; the thesis used {THESIS_BATCH})")
        cond = f"{what}; {device}, {threads} threads; {job.iters} timed step(s) after a batch-1 warm-up; {load_note()}"
        res.add(f"Mask R-CNN training, {job.name}", r["train_images_per_s"], "images/s", cond)
        icond = (f"{what.split(', batch')[0]}, batch {r['infer_batch']}, {r['detections_per_image']:.0f} detections/image "
                 f"(score cut 0, cap {k}: the trained light model's count); {device}, {threads} threads")
        res.add(f"Mask R-CNN inference, {job.name}, network forward", r["forward_ms"], "ms/image", icond)
        res.add(f"Mask R-CNN inference, {job.name}, post-processing", r["post_ms"], "ms/image", icond)
        res.add(f"Mask R-CNN inference, {job.name}, total", r["infer_images_per_s"], "images/s", icond)
    if "thesis" in out:
        o, t = out["ours"], out["thesis"]
        res.add("training ratio ours / thesis", o["train_images_per_s"] / t["train_images_per_s"], "×",
                "images/s of the two configurations above, same machine, same run")
        res.add("inference ratio ours / thesis", o["infer_images_per_s"] / t["infer_images_per_s"], "×",
                f"images/s (forward + post-processing) at {k} detections/image, same run")
    res.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
