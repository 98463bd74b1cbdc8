"""The heap policy of training processes (services/common/allocator.py): freed memory is kept
for reuse, so a loop that allocates and frees the same large buffers stops faulting in
fresh pages. Run in child processes, as the policy is process-wide."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.common.allocator import HeapPolicy, retain_freed_memory

REPO = Path(__file__).resolve().parents[2]

# Three 1 MiB blocks allocated, touched and freed per cycle: with glibc's defaults the heap
# top (more than twice the largest block) is trimmed after every cycle.
_CYCLES = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from services.common.allocator import retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False

    def cycle():
        blocks = [np.ones(2**18, np.float32) for _ in range(3)]
        del blocks

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        cycle()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
""")


def _faults_per_cycle(mode: str) -> tuple[str, float]:
    # glibc's defaults, whatever this process was started with.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _CYCLES, mode], cwd=REPO, env=env, check=True, capture_output=True,
                         text=True, timeout=60).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults() -> None:
    applied, default = _faults_per_cycle("default")
    assert applied == "False" and default >= 256  # ≥ a third of the 768 pages a cycle touches
    applied, retained = _faults_per_cycle("retain")
    assert applied == "True" and retained <= 8


def test_a_heap_block_limit_beyond_glibcs_is_refused() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert retain_freed_memory(HeapPolicy(heap_blocks_up_to=2**40)) is False
        return
    with pytest.raises(ValueError, match="heap_blocks_up_to"):
        retain_freed_memory(HeapPolicy(heap_blocks_up_to=2**40))
