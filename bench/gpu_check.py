"""GPU readiness check: every CUDA path of synthaug, measured, in one command (≤ 9 minutes on one GPU).

    python3 bench/gpu_check.py --prepare      # here, once: ISIC data + wheels into .gpu-check/ (git-ignored)
    python3 bench/gpu_check.py                # on the GPU machine (`make gpu-check`); $OUT or --out: where to write

It runs on the GPU machine's own Python (torch, torchvision, grpcio, opencv, scipy, matplotlib,
pyyaml and no package index): the project's other dependencies travel as wheels in
.gpu-check/wheels (scripts/gpu_wheels.sh) and are installed into a private folder first; the
ISIC data travels in .gpu-check/data. Sections, each timed and independent (a failing section
is reported and the next one runs), with progress printed as they go:

  environment     versions, GPU, memory
  segmenter       Mask R-CNN R50-FPN training images/s at 256 px: bf16 AMP over batch 8/16/32/64
                  (stopping at OOM), then at the best batch fp32 vs bf16 and channels_last on/off;
                  peak memory, GPU utilisation; inference images/s
  data_path       the training data path alone (decode once, gather + batched augmentation on
                  the device, the trainer's settings) images/s
  gan             pix2pix 256 (ngf 64) training pairs/s, fp32 vs bf16 AMP, batch 1 and the best
                  batch; generation images/s
  ddp             a Train job through torchrun (1 process per GPU; 2 gloo processes on CPU)
  isic            a real from-scratch run: ISIC 2018 train 1600 / val 400, 256 px, R50-FPN, bf16,
                  as many epochs as fit in ~4 minutes, val IoU per epoch
  demo            the demo plan through the embedded services, end to end

Writes $OUT/gpu-check.json and $OUT/gpu-check.md. Without CUDA it runs what can run on CPU at
tiny size (segmenter, data path, GAN, DDP) and says which sections it skipped and why.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WORK = REPO / ".gpu-check"
WHEELS = WORK / "wheels"
DATA = WORK / "data" / "isic2018-256"
SHARED_ISIC = REPO.parent / "shared" / "data" / "isic2018-256"
SITE = Path(tempfile.gettempdir()) / "synthaug-gpu-check-site"
#: The Python the wheels are for (the GPU machine's; scripts/gpu_wheels.sh).
WHEELS_PYTHON = (3, 12)
#: Modules the check needs beyond the machine's own Python (see scripts/gpu_wheels.sh).
NEEDED = ("pycocotools", "minio", "pydantic", "grpc_health", "grpc_reflection", "google.protobuf")


class Skipped(Exception):
    """A section that does not apply here; the message says why."""


@dataclass
class Section:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Check:
    """What the sections share: the mode, the clock, the output, prepared data."""

    cuda: bool
    tiny: bool
    deadline: float
    out: Path
    isic: Path | None
    sections: list[Section] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- preparing (here) and installing (there) ------------------------------------------------

def prepare() -> int:
    """Copy the ISIC data into .gpu-check/data and fetch the wheels (scripts/gpu_wheels.sh)."""
    if not SHARED_ISIC.is_dir():
        print(f"no ISIC data at {SHARED_ISIC}: the isic section will be skipped there", file=sys.stderr)
    else:
        for split in ("train", "val"):
            if not (DATA / split).is_dir():
                shutil.copytree(SHARED_ISIC / split, DATA / split)
        print(f"ISIC data in {DATA} ({sum(f.stat().st_size for f in DATA.rglob('*') if f.is_file()) / 2**20:.0f} MB)")
    subprocess.run(["bash", str(REPO / "scripts" / "gpu_wheels.sh")], check=True)
    print("carry: .gpu-check   (e.g. run(command='python3 bench/gpu_check.py', carry=['.gpu-check']))")
    return 0


def _missing() -> list[str]:
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def install_wheels() -> str:
    """Install the carried wheels this Python lacks (a distribution at another version counts
    as lacking) into a private folder, put first on sys.path and PYTHONPATH (for the
    subprocesses). Returns what was done."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if sys.version_info[:2] != WHEELS_PYTHON:
        wheels = []  # (built for the GPU machine's Python: here the installed packages serve)
    chosen = []
    for wheel in wheels:
        dist, version = wheel.name.split("-")[:2]
        try:
            if importlib.metadata.version(dist.replace("_", "-")) == version:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        chosen.append(wheel)
    if chosen:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, chosen)], check=True)
    if SITE.is_dir():
        sys.path.insert(0, str(SITE))
    paths = [str(SITE)] if SITE.is_dir() else []
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    missing = _missing()
    if missing:
        raise SystemExit(f"missing modules {missing} and no wheels for them in {WHEELS}: run "
                         "`python3 bench/gpu_check.py --prepare` (or scripts/gpu_wheels.sh) where pip can download")
    return f"installed {len(chosen)} of {len(wheels)} carried wheels" if wheels else "nothing to install"


# -- helpers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def utilisation(cuda: bool) -> Iterator[list[float]]:
    """GPU utilisation (%) sampled every 0.2 s while the block runs (torch.cuda.utilization,
    else nvidia-smi); empty on CPU or when neither works."""
    samples: list[float] = []
    stop = threading.Event()

    def read() -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())
        except Exception:  # no pynvml: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                return float(out.split()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return None

    def loop() -> None:
        while not stop.wait(0.2):
            value = read()
            if value is None:
                return
            samples.append(value)

    thread = threading.Thread(target=loop, daemon=True)
    if cuda:
        thread.start()
    try:
        yield samples
    finally:
        stop.set()
        if cuda:
            thread.join(timeout=10)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def shapes_source(n: int, size: int) -> Any:
    from tests.unit.segmenter_shapes import make_source

    return make_source("shapes", n, size=size, seed=0, max_objects=3)


def isic_datasets(check: Check) -> tuple[Any, Any]:
    """ISIC train and val, imported once (as `synthaug import masks` would) into a file store."""
    if "isic" not in check.cache:
        if check.isic is None:
            raise Skipped("no ISIC data (.gpu-check/data/isic2018-256: run --prepare where ../shared/data exists)")
        from figures import import_isic

        from services.common.store import FileStore

        store = FileStore(Path(tempfile.mkdtemp(prefix="gpu-check-isic-")))
        workers = min(8, os.cpu_count() or 1)
        t0 = time.perf_counter()
        check.cache["isic"] = (import_isic(store, check.isic / "train", workers=workers),
                               import_isic(store, check.isic / "val", workers=workers))
        check.cache["isic_import_s"] = round(time.perf_counter() - t0, 1)
    return check.cache["isic"]


# -- sections ---------------------------------------------------------------------------------

def environment(check: Check) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cpus": os.cpu_count(), "wheels": check.cache.get("wheels", "")}
    import torchvision

    info["torchvision"] = torchvision.__version__
    if check.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpus=torch.cuda.device_count(), memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def _train_rate(arch: str, size: int, batch: int, amp: str, channels_last: bool, iters: int, cuda: bool) -> dict[str, Any]:
    """Training images/s of ``arch`` on synthetic shapes through the trainer's data path and
    autocast (one warm-up step)."""
    import torch

    from services.segmenter.core.augment import AugmentConfig
    from services.segmenter.core.data import CategoryMap, TrainingDataset
    from services.segmenter.core.models import ModelSpec, build_model
    from services.segmenter.core.predictor import autocast
    from services.segmenter.core.stream import TrainingStream

    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    source = shapes_source(max(64, batch), size)
    items = [(0, i) for i in source.image_ids()]
    data = TrainingDataset([source], items, CategoryMap(source.categories), AugmentConfig(), 0, device=device)
    stream = TrainingStream([True] * len(items), 0, batch)
    model = build_model(ModelSpec(arch, 2, size, size)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(t: int) -> None:
        images, targets = data.batch(stream.draws(t))
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(0)
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with utilisation(cuda) as samples:
        t0 = time.perf_counter()
        for t in range(1, iters + 1):
            step(t)
        _sync(cuda)
        seconds = time.perf_counter() - t0
    return {"images_per_s": round(iters * batch / seconds, 1),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "gpu_util_pct": _mean(samples)}


def segmenter(check: Check) -> dict[str, Any]:
    import torch

    if check.tiny:
        arch, size, batches, iters = "maskrcnn_resnet18_fpn", 32, [2], 1
    else:
        arch, size, batches, iters = "maskrcnn_resnet50_fpn", 256, [8, 16, 32, 64], 10
    results: dict[str, Any] = {"architecture": arch, "size": size, "iterations": iters, "runs": []}
    runs = results["runs"]

    def run(batch: int, amp: str, channels_last: bool) -> dict[str, Any] | None:
        label = f"batch {batch}, {amp if amp != 'none' else 'fp32'}, channels_last {'on' if channels_last else 'off'}"
        figures = None
        try:
            figures = _train_rate(arch, size, batch, amp, channels_last, iters, check.cuda)
        except torch.OutOfMemoryError:
            pass
        if check.cuda:
            torch.cuda.empty_cache()  # the run's model and data are gone with its frame
        if figures is None:
            runs.append({"config": label, "batch": batch, "amp": amp, "channels_last": channels_last, "oom": True})
            check.say(f"  segmenter {label}: out of memory")
            return None
        runs.append({"config": label, "batch": batch, "amp": amp, "channels_last": channels_last, **figures})
        check.say(f"  segmenter {label}: {figures['images_per_s']} images/s, peak {figures['peak_memory_gb']} GB, "
                  f"GPU {figures['gpu_util_pct']}%")
        return figures

    amp = "bf16" if check.cuda else "none"
    best, best_rate = batches[0], -1.0
    for batch in batches:
        figures = run(batch, amp, check.cuda)
        if figures is None:
            break
        if figures["images_per_s"] > best_rate:
            best, best_rate = batch, figures["images_per_s"]
    results["best_batch"] = best
    check.cache["best_batch"] = best
    check.cache["train_images_per_s"] = best_rate
    if check.cuda:
        for amp_mode, channels_last in (("none", True), ("bf16", False), ("none", False)):
            run(best, amp_mode, channels_last)
    else:
        results["skipped"] = "bf16 AMP and channels_last: CUDA only"

    # Inference: the predictor's autocast, model forward only, at the best batch.
    from services.segmenter.core.models import ModelSpec, build_model
    from services.segmenter.core.predictor import autocast

    device = torch.device("cuda" if check.cuda else "cpu")
    model = build_model(ModelSpec(arch, 2, size, size)).to(device).eval()
    if check.cuda:
        model = model.to(memory_format=torch.channels_last)
    images = [torch.rand(3, size, size, device=device) for _ in range(best)]
    inference: dict[str, Any] = {}
    for amp_mode in (("none", "bf16") if check.cuda else ("none",)):
        with torch.inference_mode(), autocast(device, amp_mode):
            model(images)
            _sync(check.cuda)
            with utilisation(check.cuda) as samples:
                t0 = time.perf_counter()
                for _ in range(iters):
                    model(images)
                _sync(check.cuda)
                rate = iters * best / (time.perf_counter() - t0)
        inference["fp32" if amp_mode == "none" else amp_mode] = {"images_per_s": round(rate, 1), "gpu_util_pct": _mean(samples)}
        check.say(f"  inference batch {best} {amp_mode}: {rate:.1f} images/s")
    results["inference"] = inference
    del model
    if check.cuda:
        torch.cuda.empty_cache()
    return results


def data_path(check: Check) -> dict[str, Any]:
    """The trainer's data path alone: cache decode rate, then batches on the training device."""
    import torch
    from bench_datapath import build_cache, measure_after

    from services.segmenter.core.sources import DatasetSplitSource
    from services.segmenter.core.trainer import cache_device, decode_threads

    device = torch.device("cuda" if check.cuda else "cpu")
    if check.tiny:
        source, kind = shapes_source(16, 64), "synthetic shapes, 64 px"
    else:
        train, _val = isic_datasets(check)
        source, kind = DatasetSplitSource(train, ""), "ISIC train (JPEG), 256 px"
    threads = decode_threads(-1)
    data, decode_rate = build_cache(source, device, threads)
    place = cache_device(device, data.nbytes)
    results: dict[str, Any] = {"images": len(data), "source": kind, "decode_threads": threads,
                               "decode_images_per_s": round(decode_rate, 1), "cache_mb": round(data.nbytes / 2**20, 1),
                               "cache_device": str(place), "batches": {}}
    for batch in sorted({8, 32, check.cache.get("best_batch", 32)} if not check.tiny else {2}):
        rate = measure_after(data, batch, 3 if check.tiny else 20, torch.get_num_threads())
        results["batches"][str(batch)] = round(rate, 1)
        check.say(f"  data path batch {batch} on {device}: {rate:.0f} images/s")
    train_rate = check.cache.get("train_images_per_s")
    if train_rate:
        results["headroom_over_training"] = round(max(results["batches"].values()) / train_rate, 1)
    return results


def gan(check: Check) -> dict[str, Any]:
    import numpy as np
    import torch

    from services.gan.config import GanConfig, GenerateConfig
    from services.gan.generator import generate_batch, load_generator
    from services.gan.model import build_model
    from services.gan.rendering import RenderSpec
    from services.gan.trainer import TrainingRun

    device = "cuda" if check.cuda else "cpu"
    size, ngf, depth = (64, 8, 6) if check.tiny else (256, 64, 8)
    iters = 2 if check.tiny else 10
    spec = RenderSpec((1,), ("lesion",))

    def rate(batch: int, amp: str) -> float:
        cfg = GanConfig(image_size=size, ngf=ngf, ndf=ngf, depth=depth, batch_size=batch, amp=amp)
        model = build_model(cfg, spec, device, seed=0)
        a = torch.rand(batch, spec.num_channels, size, size) * 2 - 1
        b = torch.rand(batch, 3, size, size) * 2 - 1
        model.train_step(a, b)
        _sync(check.cuda)
        t0 = time.perf_counter()
        for _ in range(iters):
            model.train_step(a, b)
        _sync(check.cuda)
        return iters * batch / (time.perf_counter() - t0)

    results: dict[str, Any] = {"size": size, "ngf": ngf, "train_pairs_per_s": {}}
    amps = ("none", "bf16") if check.cuda else ("none",)
    best, best_rate = 1, -1.0
    for batch in ([1] if check.tiny else [1, 8, 32, 64]):
        try:
            r = rate(batch, amps[-1])
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        results["train_pairs_per_s"][f"batch {batch}, {amps[-1] if amps[-1] != 'none' else 'fp32'}"] = round(r, 1)
        check.say(f"  GAN batch {batch} {amps[-1]}: {r:.1f} pairs/s")
        if r > best_rate:
            best, best_rate = batch, r
    if check.cuda:
        for batch in sorted({1, best}):
            r = rate(batch, "none")
            results["train_pairs_per_s"][f"batch {batch}, fp32"] = round(r, 1)
            check.say(f"  GAN batch {batch} fp32: {r:.1f} pairs/s")
    else:
        results["skipped"] = "bf16 AMP: CUDA only"
    results["best_batch"] = best
    cfg = GanConfig(image_size=size, ngf=ngf, ndf=ngf, depth=depth)
    state = TrainingRun(build_model(cfg, spec, device, seed=0), cfg, spec).checkpoint(with_optimizers=False)
    generator = load_generator(state, device)
    gen_batch = 2 if check.tiny else 32
    conds = np.random.default_rng(0).choice([-1.0, 1.0], size=(gen_batch, spec.num_channels, size, size)).astype(np.float32)
    generate_batch(generator, conds, 0, 0, GenerateConfig())
    t0 = time.perf_counter()
    for i in range(iters):
        generate_batch(generator, conds, 0, i, GenerateConfig())
    results["generate_images_per_s"] = round(iters * gen_batch / (time.perf_counter() - t0), 1)
    check.say(f"  GAN generation batch {gen_batch}: {results['generate_images_per_s']} images/s")
    return results


def ddp(check: Check) -> dict[str, Any]:
    """A Train job through torchrun (services/segmenter/torchrun_train.py) on a file store."""
    import torch
    from google.protobuf import json_format

    from services.common.datasets import DatasetWriter
    from services.common.jobs import result_key
    from services.common.refs import output
    from services.common.store import FileStore
    from synthaug.v1 import common_pb2
    from synthaug.v1 import segmenter_pb2 as pb
    from tests.unit.segmenter_shapes import make_example

    nproc = min(2, torch.cuda.device_count()) if check.cuda else 2
    size, n = (32, 10) if check.tiny or not check.cuda else (256, 128)
    arch = "maskrcnn_resnet18_fpn" if check.tiny or not check.cuda else "maskrcnn_resnet50_fpn"
    root = Path(tempfile.mkdtemp(prefix="gpu-check-ddp-"))
    store = FileStore(root / "store")
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name="shapes", seed=0)
    n_val = 2 if check.tiny or not check.cuda else 16
    for i in range(n):
        ex = make_example(i + 1, size, seed=3)
        writer.add(ex.image, ex.masks, ex.category_ids.tolist(), f"img{i:03d}.png", split="val" if i < n_val else "train")
    ref = writer.finish()
    batch = 2 if check.tiny or not check.cuda else 16
    config = pb.SegmenterConfig(architecture=arch, iterations=4 if check.tiny or not check.cuda else 20,
                                eval_every=2 if check.tiny or not check.cuda else 10, batch_size=batch, lr=0.01,
                                warmup_iters=0, grad_clip=10.0, amp="bf16" if check.cuda else "none")
    request = pb.SegmenterTrainRequest(sources=[pb.TrainingSource(dataset=ref, split="train", count=n - n_val)],
                                       val_dataset=ref, val_split="val", config=config, seed=0)
    (root / "request.json").write_text(json_format.MessageToJson(request))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "services.segmenter.torchrun_train", "--store", f"file://{root / 'store'}",
               "--request", str(root / "request.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1" if not check.cuda else os.environ.get("OMP_NUM_THREADS", "4"))
    t0 = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=max(30.0, min(300.0, check.remaining() - 60)))
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"torchrun exited {run.returncode}: {(run.stdout + run.stderr)[-2000:]}")
    job_id = next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("job "))
    result = common_pb2.JobResult()
    result.ParseFromString(store.get_record(result_key(job_id)))
    record = json.loads(store.get_bytes(output(result, "training_record").key))
    note = "" if nproc > 1 else "1 process: the torchrun launch and job path (DistributedDataParallel needs ≥ 2)"
    return {"processes": nproc, "backend": "nccl" if check.cuda else "gloo", "architecture": arch, "size": size,
            "seconds": round(seconds, 1), "world_size": record["world_size"], "device": record["device"],
            "images_per_s": [round(e["images_per_s"], 1) for e in record["epochs"]],
            "draws_per_rank": [[d["images"] for d in e["draws"]] for e in record["epochs"]],
            "val_iou": [round(e["val"]["iou"], 3) for e in record["epochs"]], "note": note}


def isic(check: Check, budget_s: float) -> dict[str, Any]:
    """From scratch on ISIC 2018 (train 1600 / val 400, 256 px), R50-FPN, bf16: as many epochs
    as fit in the budget (a cosine schedule over them), val IoU per epoch."""
    if not check.cuda:
        raise Skipped("CUDA only: minutes per epoch on CPU")
    import math

    from services.segmenter.config import SegmenterConfig
    from services.segmenter.core import checkpoints as ck
    from services.segmenter.core.sources import DatasetSplitSource
    from services.segmenter.core.trainer import Interrupted, Trainer

    train, val = isic_datasets(check)
    budget_s = min(budget_s, check.remaining() - 20)
    if budget_s < 60:
        raise Skipped(f"only {budget_s:.0f} s of the check's time left")
    batch = min(32, int(check.cache.get("best_batch", 32)))  # lr scales with the batch: keep from-scratch SGD tame
    rate = float(check.cache.get("train_images_per_s") or 100.0)
    epoch_s = len(train) / rate + len(val) / (3 * rate) + 2.0  # training, validation, checkpoint
    epochs = max(1, int(0.85 * budget_s / epoch_s))
    cfg = SegmenterConfig(architecture="maskrcnn_resnet50_fpn", epochs=epochs, batch_size=batch, amp="bf16",
                          grad_clip=10.0, warmup_iters=min(100, max(1, len(train) // batch)), seed=0)
    entries: list[dict[str, Any]] = []
    started = time.monotonic()

    def on_evaluation(evaluation: int, entry: dict[str, Any]) -> None:
        entries.append(entry)
        check.say(f"  ISIC epoch {evaluation + 1}/{epochs}: loss {entry['losses']['loss']:.3f}, "
                  f"val IoU {entry.get('val', {}).get('iou', float('nan')):.3f}, {entry['images_per_s']:.0f} images/s")
        if time.monotonic() - started > budget_s:
            raise Interrupted("time budget spent")

    trainer = Trainer(cfg, [(DatasetSplitSource(train, ""), len(train))], DatasetSplitSource(val, ""),
                      ck.DirectoryCheckpointIO(tempfile.mkdtemp(prefix="gpu-check-isic-ck-")), on_evaluation=on_evaluation)
    stopped = ""
    try:
        trainer.run()
    except Interrupted as exc:
        stopped = str(exc)
    ious = [round(e.get("val", {}).get("iou", math.nan), 4) for e in entries]
    return {"train": len(train), "val": len(val), "batch": batch, "epochs_planned": epochs, "epochs_run": len(entries),
            "stopped": stopped, "import_s": check.cache.get("isic_import_s"), "seconds": round(time.monotonic() - started, 1),
            "val_iou": ious, "best_val_iou": max((i for i in ious if not math.isnan(i)), default=None),
            "images_per_s": [round(e["images_per_s"], 1) for e in entries],
            "val_seconds": [round(e.get("val_seconds", 0.0), 1) for e in entries]}


def demo(check: Check) -> dict[str, Any]:
    """`synthaug demo` (python -m orchestrator.cli demo) with a store in a temp folder."""
    if not check.cuda:
        raise Skipped("minutes on CPU; `make demo` runs it")
    root = Path(tempfile.mkdtemp(prefix="gpu-check-demo-"))
    timeout = check.remaining() - 10
    if timeout < 60:
        raise Skipped(f"only {check.remaining():.0f} s of the check's time left")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "demo", "--store", f"file://{root / 'store'}",
                          "--out", str(root / "report")], cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                         timeout=timeout)
    seconds = time.perf_counter() - t0
    tail = [line for line in run.stdout.splitlines() if line.startswith("| ") or "finished" in line or "steps" in line]
    if run.returncode != 0:
        raise RuntimeError(f"demo exited {run.returncode}: {(run.stdout + run.stderr)[-2000:]}")
    return {"seconds": round(seconds, 1), "report": (root / "report" / "index.html").is_file(), "summary": tail[-20:]}


# -- running and reporting --------------------------------------------------------------------

def run_section(check: Check, name: str, fn: Callable[[], dict[str, Any]]) -> None:
    section = Section(name)
    check.sections.append(section)
    check.say(f"== {name}")
    t0 = time.perf_counter()
    try:
        section.results = fn()
        section.status = "ok"
    except Skipped as exc:
        section.status, section.note = "skipped", str(exc)
    except Exception as exc:  # one section's failure must not stop the others
        section.status = "failed"
        section.note = f"{type(exc).__name__}: {exc}"
        section.results = {"traceback": traceback.format_exc()[-3000:]}
    section.seconds = round(time.perf_counter() - t0, 1)
    check.say(f"== {name}: {section.status} in {section.seconds} s" + (f" ({section.note})" if section.note else ""))
    write(check)


def _md_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def markdown(check: Check) -> str:
    lines = [f"# synthaug GPU check ({'CUDA' if check.cuda else 'CPU only, tiny sizes'})", ""]
    lines += ["| section | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.note} |" for s in check.sections]
    for s in check.sections:
        if s.status != "ok":
            continue
        lines += ["", f"## {s.name}", ""]
        runs = s.results.get("runs")
        if runs:
            lines += ["| config | images/s | peak GB | GPU % |", "|---|---|---|---|"]
            lines += [f"| {r['config']} | {'OOM' if r.get('oom') else r['images_per_s']} | {r.get('peak_memory_gb')} | "
                      f"{r.get('gpu_util_pct')} |" for r in runs]
            lines.append("")
        for key, value in s.results.items():
            if key != "runs":
                lines.append(f"- **{key}**: {_md_value(value)}")
    return "\n".join(lines) + "\n"


def write(check: Check) -> None:
    check.out.mkdir(parents=True, exist_ok=True)
    doc = {"mode": "cuda" if check.cuda else "cpu", "tiny": check.tiny,
           "sections": {s.name: {"status": s.status, "seconds": s.seconds, "note": s.note, "results": s.results}
                        for s in check.sections}}
    (check.out / "gpu-check.json").write_text(json.dumps(doc, indent=2, default=str))
    (check.out / "gpu-check.md").write_text(markdown(check))


SECTIONS = ("environment", "segmenter", "data_path", "gan", "ddp", "isic", "demo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="here: copy the ISIC data and fetch the wheels into .gpu-check/")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"),
                   help="output folder (default $OUT, else ./gpu-check-out)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds the whole check may take (default 540)")
    p.add_argument("--isic-seconds", type=float, default=240.0, help="the ISIC run's share (default 240)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--cpu", action="store_true", help="ignore CUDA: the CPU mode at tiny size")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare()
    start = time.monotonic()
    wheels = install_wheels()
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    isic_dir = next((d for d in (DATA, SHARED_ISIC) if (d / "train" / "images").is_dir()), None)
    check = Check(cuda=cuda, tiny=not cuda, deadline=start + args.budget, out=args.out, isic=isic_dir)
    check.cache["wheels"] = wheels
    if not cuda:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    check.say(f"GPU check: {'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA: CPU mode at tiny size'}; "
              f"{wheels}; output {args.out}")
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}")
    demo_reserve = 180.0  # the demo comes last; the ISIC run leaves it this much
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "environment": lambda: environment(check),
        "segmenter": lambda: segmenter(check),
        "data_path": lambda: data_path(check),
        "gan": lambda: gan(check),
        "ddp": lambda: ddp(check),
        "isic": lambda: isic(check, min(args.isic_seconds, check.remaining() - (demo_reserve if "demo" in chosen else 0))),
        "demo": lambda: demo(check),
    }
    for name in SECTIONS:
        if name in chosen:
            run_section(check, name, runners[name])
    write(check)
    skipped = [f"{s.name} ({s.note})" for s in check.sections if s.status == "skipped"]
    failed = [s.name for s in check.sections if s.status == "failed"]
    check.say(f"done in {time.monotonic() - start:.0f} s; skipped: {', '.join(skipped) or 'none'}; "
              f"failed: {', '.join(failed) or 'none'}; wrote {args.out}/gpu-check.json and gpu-check.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
