"""The thesis' composition loop, re-implemented faithfully, as the baseline of bench_compositor.

What the thesis' compositor did for each synthetic image: read a random background PNG
from disk, paste 2-3 random foreground PNGs (lesion cut-outs with an alpha channel) onto it
with alpha, each randomly flipped, scaled and colour-changed, draw every pasted lesion into
one merged white mask (no instances), and write the image and the mask as PNG files.
Nothing is cached between images: every PNG is read and decoded each time it is drawn.

Two implementations of that loop are timed, so the baseline is never a strawman:
  * "pil": Pillow, as the thesis wrote it (Image.open, transpose, resize, ImageEnhance,
    Image.paste with the alpha as mask, PNG saved with Pillow's defaults);
  * "cv2": the same steps with OpenCV and numpy (imread, flip, resize, a per-channel scale
    for brightness, a grey blend for saturation, blendLinear with the alpha, imwrite's fast
    PNG settings).
The benchmark compares against the faster of the two, measured in the same run.
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageEnhance

# The thesis' ranges, as synthaug's ComposeParams defaults keep them.
SCALE = (0.25, 0.55)  # longer side of a lesion relative to the image side
BRIGHTNESS = (0.85, 1.15)
SATURATION = (0.85, 1.15)
_BINARY = [0] * 128 + [255] * 128  # alpha → white mask (Image.point table)


@dataclass(frozen=True)
class LoopJob:
    """One process's share of the loop: images [start, stop)."""

    foregrounds: Sequence[str]
    backgrounds: Sequence[str]
    out_dir: str
    start: int
    stop: int
    seed: int = 0
    size: int = 256
    objects: int = 3


def _place(rnd: random.Random, size: int, w: int, h: int) -> tuple[int, int]:
    return rnd.randint(0, max(0, size - w)), rnd.randint(0, max(0, size - h))


def loop_pil(job: LoopJob) -> int:
    """The loop with Pillow; returns the number of images written."""
    rnd = random.Random(job.seed * 1_000_003 + job.start)
    size = job.size
    for i in range(job.start, job.stop):
        bg = Image.open(rnd.choice(job.backgrounds)).convert("RGB")
        if bg.size != (size, size):
            bg = bg.resize((size, size))
        mask = Image.new("L", (size, size), 0)
        for _ in range(job.objects):
            fg = Image.open(rnd.choice(job.foregrounds)).convert("RGBA")
            if rnd.random() < 0.5:
                fg = fg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rnd.random() < 0.5:
                fg = fg.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            f = rnd.uniform(*SCALE) * size / max(fg.size)
            fg = fg.resize((max(1, round(fg.width * f)), max(1, round(fg.height * f))))
            fg = ImageEnhance.Brightness(fg).enhance(rnd.uniform(*BRIGHTNESS))
            fg = ImageEnhance.Color(fg).enhance(rnd.uniform(*SATURATION))
            x, y = _place(rnd, size, fg.width, fg.height)
            alpha = fg.getchannel("A")
            bg.paste(fg, (x, y), alpha)
            mask.paste(255, (x, y, x + fg.width, y + fg.height), alpha.point(_BINARY))
        bg.save(os.path.join(job.out_dir, f"{i:06d}.png"))
        mask.save(os.path.join(job.out_dir, f"{i:06d}_mask.png"))
    return job.stop - job.start


def _imread(path: str, flags: int) -> np.ndarray:
    """cv2.imread, failing with the path instead of returning None."""
    image = cv2.imread(path, flags)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return image


def loop_cv2(job: LoopJob) -> int:
    """The loop with OpenCV and numpy; returns the number of images written."""
    cv2.setNumThreads(1)
    rnd = random.Random(job.seed * 1_000_003 + job.start)
    size = job.size
    for i in range(job.start, job.stop):
        bg = _imread(rnd.choice(job.backgrounds), cv2.IMREAD_COLOR)
        if bg.shape[:2] != (size, size):
            bg = cv2.resize(bg, (size, size), interpolation=cv2.INTER_AREA)
        mask = np.zeros((size, size), np.uint8)
        for _ in range(job.objects):
            fg = _imread(rnd.choice(job.foregrounds), cv2.IMREAD_UNCHANGED)
            if rnd.random() < 0.5:
                fg = cv2.flip(fg, 1)
            if rnd.random() < 0.5:
                fg = cv2.flip(fg, 0)
            f = rnd.uniform(*SCALE) * size / max(fg.shape[:2])
            fg = cv2.resize(fg, (max(1, round(fg.shape[1] * f)), max(1, round(fg.shape[0] * f))),
                            interpolation=cv2.INTER_LINEAR)
            rgb = cv2.convertScaleAbs(fg[..., :3], alpha=rnd.uniform(*BRIGHTNESS))
            grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            s = rnd.uniform(*SATURATION)
            rgb = cv2.addWeighted(rgb, s, grey, 1.0 - s, 0.0)
            h, w = rgb.shape[:2]
            x, y = _place(rnd, size, w, h)
            h, w = min(h, size - y), min(w, size - x)
            alpha = fg[:h, :w, 3].astype(np.float32) * np.float32(1 / 255)
            roi = bg[y:y + h, x:x + w]
            bg[y:y + h, x:x + w] = cv2.blendLinear(np.ascontiguousarray(rgb[:h, :w]), np.ascontiguousarray(roi),
                                                   alpha, 1.0 - alpha)
            mask[y:y + h, x:x + w][fg[:h, :w, 3] >= 128] = 255
        cv2.imwrite(os.path.join(job.out_dir, f"{i:06d}.png"), bg)
        cv2.imwrite(os.path.join(job.out_dir, f"{i:06d}_mask.png"), mask)
    return job.stop - job.start


LOOPS: dict[str, Callable[[LoopJob], int]] = {"pil": loop_pil, "cv2": loop_cv2}


def _run_job(kind_and_job: tuple[str, LoopJob]) -> tuple[int, float]:
    """(images written, CPU seconds of this process for them)."""
    kind, job = kind_and_job
    cpu = time.process_time()
    n = LOOPS[kind](job)
    return n, time.process_time() - cpu


@dataclass(frozen=True)
class LoopRun:
    images_per_s: float  # all processes together
    cpu_seconds: float  # summed over processes


def run_loop(kind: str, foregrounds: Sequence[str], backgrounds: Sequence[str], out_dir: Path, count: int,
             processes: int = 1, seed: int = 0, size: int = 256, objects: int = 3) -> LoopRun:
    """The `kind` loop over `count` images in `processes` parallel processes (each its
    share, one after the other within a process), writing to `out_dir`.

    The processes are started and warmed up before the clock starts (the thesis loop gets
    no start-up cost; synthaug's figure includes its pool's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    share = -(-count // processes)

    def job(start: int, stop: int, job_seed: int = seed) -> LoopJob:
        return LoopJob(list(foregrounds), list(backgrounds), str(out_dir), start, stop, job_seed, size, objects)

    jobs = [(kind, job(s, min(count, s + share))) for s in range(0, count, share)]
    warm = (kind, job(0, 1, seed + 1))
    if processes == 1:
        _run_job(warm)
        t = time.perf_counter()
        n, cpu = _run_job(jobs[0])
        return LoopRun(n / (time.perf_counter() - t), cpu)
    import multiprocessing

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_run_job, [warm] * processes))
        t = time.perf_counter()
        done = list(pool.map(_run_job, jobs))
        return LoopRun(sum(n for n, _ in done) / (time.perf_counter() - t), sum(c for _, c in done))
