"""Compositor throughput: composites per second at 256 px, 3 foregrounds, Gaussian blending,
written to the store (JPEG blobs + RLE masks + manifest), with 1 and 2 worker processes.

Foregrounds and backgrounds come from the real ISIC 2018 training images (loaded straight
from the folder into a temporary file store). Prints figures; asserts nothing.

    PYTHONPATH=. .venv/bin/python bench/bench_compositor.py [--count 3000] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from services.common.datasets import Dataset, DatasetWriter
from services.common.store import FileStore
from services.compositor.config import BackgroundParams, ComposeParams, ForegroundParams
from services.compositor.core.compose import compose_image
from services.compositor.core.pipeline import (
    StoreAssets,
    compose_dataset,
    extract_foreground_set,
    harvest_background_set,
)
from services.compositor.core.sets import BACKGROUND_KIND, FOREGROUND_KIND, load_set

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "isic2018-256" / "train"


def load_isic(store: FileStore, root: Path, limit: int) -> Dataset:
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name="isic-train")
    for path in sorted(glob.glob(str(root / "images" / "*.jpg")))[:limit or None]:
        stem = Path(path).stem
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(root / "masks" / f"{stem}_segmentation.png"), cv2.IMREAD_GRAYSCALE) > 127
        if mask.any():
            writer.add(image, mask[None], [1], f"{stem}.jpg", split="train", image_format="jpeg")
    return Dataset.load(store, writer.finish())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--images", type=int, default=0, help="use only the first N training images (0 = all)")
    ap.add_argument("--backgrounds", type=int, default=400, help="backgrounds to harvest (inpainting)")
    ap.add_argument("--preview", type=Path, default=None, help="write a contact sheet of the composites here")
    args = ap.parse_args()
    print(f"CPU cores visible: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-compositor-") as tmp:
        store = FileStore(Path(tmp) / "store")
        t = time.perf_counter()
        real = load_isic(store, args.data, args.images)
        print(f"import: {len(real)} images in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        fg, fg_manifest = extract_foreground_set(store, real, "train", ForegroundParams(min_area=64, feather_sigma=0.0))
        print(f"ExtractForegrounds: {len(fg_manifest['foregrounds'])} foregrounds "
              f"(skipped {fg_manifest['skipped']}) in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        bg, bg_manifest = harvest_background_set(
            store, dataset=real, split="train", seed=0,
            params=BackgroundParams(method="inpaint_telea", max_backgrounds=args.backgrounds))
        dt = time.perf_counter() - t
        print(f"HarvestBackgrounds (Telea inpainting): {len(bg_manifest['backgrounds'])} backgrounds in {dt:.1f} s "
              f"({args.backgrounds / dt:.0f} images/s)")
        params = ComposeParams(output_size=256, min_objects=3, max_objects=3, blend="gaussian").validate()

        # Compose alone (no encoding or store), warm caches: where the time goes.
        assets = StoreAssets(store, load_set(store, fg.key, FOREGROUND_KIND, "fg")["foregrounds"],
                             load_set(store, bg.key, BACKGROUND_KIND, "bg")["backgrounds"], params)
        for i in range(assets.num_foregrounds):
            assets.foreground(i)
        for i in range(assets.num_backgrounds):
            assets.background(i)
        n = 500
        t = time.perf_counter()
        for i in range(n):
            compose_image(assets, params, 0, i)
        print(f"compose_image only (1 core, warm): {n / (time.perf_counter() - t):.0f} images/s")

        # The reference, measured here under the same load: a thesis-style loop
        # (read PNG lesion crops, plain paste of 3 without blending or instance masks, PNG out).
        ref_dir = Path(tmp) / "ref"
        ref_dir.mkdir()
        fg_keys = [e["key"] for e in fg_manifest["foregrounds"][:200]]
        bg_keys = [e["key"] for e in bg_manifest["backgrounds"][:100]]
        for k in fg_keys + bg_keys:
            (ref_dir / Path(k).name).write_bytes(store.get_bytes(k))
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for i in range(n):
            bgi = cv2.imread(str(ref_dir / Path(bg_keys[i % len(bg_keys)]).name))
            for _ in range(3):
                fgi = cv2.imread(str(ref_dir / Path(fg_keys[int(rng.integers(len(fg_keys)))]).name), cv2.IMREAD_UNCHANGED)
                fgi = cv2.resize(fgi, (96, 96))
                y, x = (int(v) for v in rng.integers(0, 256 - 96, 2))
                sel = fgi[..., 3] > 127
                bgi[y:y + 96, x:x + 96][sel] = fgi[..., :3][sel]
            cv2.imwrite(str(ref_dir / "out.png"), bgi)
        ref_rate = n / (time.perf_counter() - t)
        print(f"reference paste loop (PNG files, no blending, no masks), same conditions: {ref_rate:.0f} images/s")

        ids = set()
        rates = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            cpu = time.process_time()  # this process only (with one worker it composes here too)
            ref, metrics = compose_dataset(store, fg.key, bg.key, args.count, seed=1, params=params, workers=workers)
            cpu = time.process_time() - cpu
            ids.add(ref.id)
            rates[workers] = metrics["images_per_s"]
            print(f"Compose → store, {workers} worker(s): {args.count} composites, {int(metrics['instances'])} instances, "
                  f"{metrics['seconds']:.1f} s → {metrics['images_per_s']:.0f} composites/s "
                  f"({metrics['images_per_s'] / workers:.0f} per worker; includes pool start and first decodes); "
                  f"parent process CPU {cpu:.1f} s")
        for w, r in rates.items():
            print(f"  {w} worker(s): {r / w / ref_rate:.2f}× the reference loop per worker")
        if 1 in rates and len(rates) > 1:
            for w, r in rates.items():
                if w != 1:
                    print(f"scaling 1 → {w} workers: ×{r / rates[1]:.2f}")
        print(f"identical output for every worker count: {len(ids) == 1}")
        print("reference: plain thesis-style paste loop ≈ 165 images/s on one core (issue 3); target ≥ 330/worker")
        if args.preview:
            from services.common.imageio import write_png
            from services.compositor.contact_sheet import draw_contact_sheet
            write_png(args.preview, draw_contact_sheet(Dataset.load(store, ref.id), count=16, columns=4))
            print(f"contact sheet: {args.preview}")


if __name__ == "__main__":
    main()
