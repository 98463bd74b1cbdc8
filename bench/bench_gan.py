"""GAN service benchmark: prints figures, asserts nothing.

  python bench/bench_gan.py [--threads N] [--iters K] [--skip-isic] [--isic DIR] [--pairs P] [--size S]
      [--epochs E] [--out DIR] [--json PATH]

1. pix2pix training iterations/s at 256 px (U-Net-256, ngf 64, 70×70 PatchGAN), batch 1 and 8,
   on CPU; on CUDA also fp32 vs AMP (bf16) at batch 1, the reference configuration. Every
   configuration: one untimed warm-up iteration, then --iters (≥ 5) timed iterations.
2. Generation images/s at 256 px (batch 1 and 8), --iters timed batches each.
3. A short real-data run on ISIC 2018 (train split) at reduced size: plain pix2pix and the
   colour-hint remedy, each trained the same way; a sample grid PNG (mask | real | plain |
   remedy) and the diversity figures of real val images, plain output and remedy output.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import DEFAULT_ISIC, Results, load_note

from services.common.imageio import read_image, read_mask, resize_image, resize_mask, write_png
from services.gan.config import GanConfig, GenerateConfig
from services.gan.diversity import diversity
from services.gan.generator import MaskItem, generate_batch, generate_images, load_generator
from services.gan.grid import make_grid, visualize_condition
from services.gan.model import build_model
from services.gan.rendering import RenderSpec, render_condition
from services.gan.trainer import EpochReport, TrainHooks, TrainingRun, TrainPair, train

MIN_ITERS = 5


def bench_train_step(device: str, batch: int, iters: int, amp: str = "none") -> float:
    cfg = GanConfig(batch_size=batch, amp=amp)
    model = build_model(cfg, RenderSpec((1,), ("lesion",)), device)
    a = torch.rand(batch, 1, 256, 256) * 2 - 1
    b = torch.rand(batch, 3, 256, 256) * 2 - 1
    model.train_step(a, b)  # warm-up (allocations, cudnn autotune)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        model.train_step(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - t0)


def bench_generate(device: str, batch: int, iters: int) -> float:
    cfg, spec = GanConfig(), RenderSpec((1,), ("lesion",))
    state = TrainingRun(build_model(cfg, spec, device), cfg, spec).checkpoint(with_optimizers=False)
    gen = load_generator(state, device)
    conds = np.random.default_rng(0).choice([-1.0, 1.0], size=(batch, 1, 256, 256)).astype(np.float32)
    generate_batch(gen, conds, 0, 0, GenerateConfig())
    t0 = time.perf_counter()
    for i in range(iters):
        generate_batch(gen, conds, 0, i, GenerateConfig())
    return iters * batch / (time.perf_counter() - t0)


def load_isic(root: Path, n: int, size: int) -> list[TrainPair]:
    images = sorted((root / "images").glob("*.jpg"))[:n]
    pairs = []
    for p in images:
        mask = read_mask(root / "masks" / f"{p.stem}_segmentation.png") > 0
        pairs.append(TrainPair(resize_image(read_image(p), size), resize_mask(mask[None], size), np.array([1])))
    return pairs


def isic_run(args: argparse.Namespace, out: Path) -> None:
    train_pairs = load_isic(args.isic / "train", args.pairs, args.size)
    val_pairs = load_isic(args.isic / "val", args.val, args.size)
    print(f"\n== ISIC 2018 at {args.size} px: {len(train_pairs)} train pairs, {len(val_pairs)} val masks, {args.epochs} epochs (half constant, half decay) ==")
    depth = int(np.log2(args.size))
    outputs: dict[str, list[np.ndarray]] = {}
    specs: dict[str, RenderSpec] = {}
    for remedy in ("none", "color_hint"):
        cfg = GanConfig(image_size=args.size, ngf=args.ngf, ndf=args.ngf, depth=depth, n_epochs=args.epochs // 2,
                        n_epochs_decay=args.epochs - args.epochs // 2, batch_size=args.batch, diversity=remedy, color_hint_size=8)
        spec = RenderSpec((1,), ("lesion",), color_hint=remedy == "color_hint", hint_size=8)
        reports: list[EpochReport] = []
        t0 = time.perf_counter()
        run = train(train_pairs, cfg, spec, seed=0, hooks=TrainHooks(on_epoch=reports.append))
        dt = time.perf_counter() - t0
        first, last = reports[0].losses, reports[-1].losses
        print(f"[{remedy}] {dt:.0f} s, {np.mean([r.pairs_per_s for r in reports]):.1f} pairs/s; "
              f"G_L1 {first['G_L1']:.1f} → {last['G_L1']:.1f}, G_GAN {last['G_GAN']:.2f}, D_real {last['D_real']:.2f}, D_fake {last['D_fake']:.2f}")
        grid = reports[-1].grid
        if grid is None:  # train() draws one for every report it hands to on_epoch
            raise RuntimeError("the last epoch report has no sample grid")
        write_png(out / f"isic_train_grid_{remedy}.png", grid)
        gen = load_generator(run.checkpoint(with_optimizers=False), "cpu")
        items = [MaskItem(p.masks, p.labels, p.image) for p in val_pairs]  # the val image plays the composite's background
        outputs[remedy] = list(generate_images(gen, items, 1, GenerateConfig(batch_size=8)))
        specs[remedy] = spec
    fgs = [cast(np.ndarray, p.masks.any(axis=0)) for p in val_pairs]  # H×W: the stubs can't tell the result is an array
    print("\ndiversity on val masks (spread = sqrt(trace cov) of per-image mean Lab; higher = more varied):")
    print(f"{'':12s} {'image':>8s} {'lesion':>8s} {'skin':>8s} {'L std':>8s}")
    for label, imgs in (("real", [p.image for p in val_pairs]), ("pix2pix", outputs["none"]), ("colour hint", outputs["color_hint"])):
        d = diversity(imgs, fgs)
        print(f"{label:12s} {d['image_lab_spread']:8.2f} {d['lesion_lab_spread']:8.2f} {d['background_lab_spread']:8.2f} {d['image_L_std']:8.2f}")
    rows = []
    for i in range(min(8, len(val_pairs))):
        p = val_pairs[i]
        cond = render_condition(p.masks, p.labels, specs["color_hint"], p.image)
        rows.append([visualize_condition(cond, specs["color_hint"]), p.image, outputs["none"][i], outputs["color_hint"][i]])
    write_png(out / "isic_val_grid.png", make_grid(rows))
    print(f"\ngrids: {out}/isic_val_grid.png (hint | real | pix2pix | colour hint), {out}/isic_train_grid_*.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=MIN_ITERS, help=f"timed iterations per configuration (≥ {MIN_ITERS})")
    p.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("/tmp/synthaug-bench-gan"))
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-isic", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.iters < MIN_ITERS:
        p.error(f"--iters must be ≥ {MIN_ITERS}: fewer timed iterations measure noise")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res = Results("gan")
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    print(f"== gan (torch {torch.__version__}, {args.threads} CPU threads, CUDA {cuda or 'no'}, {load_note()})")
    net = "U-Net-256 ngf 64 + 70×70 PatchGAN ndf 64, 256 px, fp32"
    if not args.skip_speed:
        for batch in (1, 8):
            r = bench_train_step("cpu", batch, args.iters)
            res.add(f"pix2pix training, CPU, batch {batch}", r * batch, "pairs/s",
                    f"{net}; {r:.3f} it/s; {args.iters} timed iterations after 1 warm-up; {args.threads} threads; "
                    f"{load_note()}")
        if cuda:
            torch.backends.cudnn.benchmark = True
            for amp in ("none", "bf16", "fp16"):
                r = bench_train_step("cuda", 1, max(50, args.iters), amp)
                res.add(f"pix2pix training, CUDA, batch 1, amp {amp}", r, "it/s",
                        f"{net.replace(', fp32', '')}; {max(50, args.iters)} timed iterations; {cuda}")
            r = bench_train_step("cuda", 8, max(20, args.iters), "bf16")
            res.add("pix2pix training, CUDA, batch 8, bf16", r * 8, "pairs/s",
                    f"{net.replace(', fp32', '')}; {max(20, args.iters)} timed iterations; {cuda}")
        for batch in (1, 8):
            r = bench_generate("cpu", batch, args.iters)
            res.add(f"generation, CPU, batch {batch}", r, "images/s",
                    f"U-Net-256 ngf 64, 256 px; {args.iters} timed batches after 1 warm-up; {args.threads} threads; "
                    f"{load_note()}")
        if cuda:
            res.add("generation, CUDA, batch 8", bench_generate("cuda", 8, max(50, args.iters)), "images/s",
                    f"U-Net-256 ngf 64, 256 px; {max(50, args.iters)} timed batches; {cuda}")
    if not args.skip_isic:
        if not (args.isic / "train").is_dir():
            res.note(f"ISIC data not found at {args.isic}: the real-data run was skipped")
        else:
            isic_run(args, args.out)
    res.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
