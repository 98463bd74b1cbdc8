"""Keeping freed heap memory in the process, so that a hot loop of large allocations reuses
pages instead of faulting in fresh ones.

glibc returns a freed block of more than its mmap threshold to the kernel at once, and trims
the top of the heap whenever more than its trim threshold is free there; both adapt only up
to about twice the largest block freed so far. A training step frees and allocates the same
few buffers every time (a batch of 32 float32 images at 256 px is 25 MB; each image's
resized and float copies are 0.2–0.8 MB), so by default every step maps fresh pages and
pays a page fault per 4 KiB on first touch, which is expensive on this project's CI machine
(a sandboxed VM). Measured with bench/bench_datapath.py (256 ISIC images, batch 32): the
batched torch augmentation served 580 images/s on CPU with the defaults and 880 with freed
memory kept; the per-image OpenCV path that replaced it allocates less, and gains ~8% at 2
threads (990–1070 → 1100–1160 images/s) and nothing measurable at 1; the network's own step
did not change. This is the effect for which PyTorch's CPU performance guides recommend
jemalloc or tcmalloc; a process that can preload those does not need this.

The price: a process keeps up to ``keep_bytes`` of free heap beyond what it uses (its
resident size stays near its peak until then), and keeps the policy for the rest of its
life: a segmenter service that has trained once keeps it for its later jobs too (prediction
and feature extraction reuse their buffers the same way). Under a preloaded jemalloc or
tcmalloc, glibc's ``mallopt`` still answers but no longer governs the heap; there this is a
harmless no-op.
"""
from __future__ import annotations

import ctypes
import logging
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MAX_MMAP_THRESHOLD = 32 * 2**20


@dataclass(frozen=True)
class HeapPolicy:
    """Blocks up to ``heap_blocks_up_to`` bytes come from the heap (larger ones are mapped and
    unmapped on their own); up to ``keep_bytes`` free bytes at the top of the heap stay."""

    heap_blocks_up_to: int = MAX_MMAP_THRESHOLD
    keep_bytes: int = 2**30


_applied: HeapPolicy | None = None


def retain_freed_memory(policy: HeapPolicy = HeapPolicy()) -> bool:
    """Apply ``policy`` to this process's allocator (module docstring). Returns whether it
    applies: glibc only (elsewhere the allocator is left alone and this returns False).
    Idempotent; the first policy applied stays."""
    global _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if not 0 < policy.heap_blocks_up_to <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"heap_blocks_up_to must be in 1…{MAX_MMAP_THRESHOLD}, got {policy.heap_blocks_up_to}")
    if _applied is not None:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(policy.keep_bytes, 2**31 - 1)
    if mallopt(_M_MMAP_THRESHOLD, policy.heap_blocks_up_to) != 1 or mallopt(_M_TRIM_THRESHOLD, keep) != 1:
        log.warning("mallopt refused the heap policy %s; the allocator keeps its defaults", policy)
        return False
    _applied = policy
    log.info("allocator: blocks up to %d MB from the heap, up to %d MB of freed heap kept for reuse",
             policy.heap_blocks_up_to // 2**20, keep // 2**20)
    return True
