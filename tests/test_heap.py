"""learner/common/heap.py: with its settings, MB-sized blocks freed and allocated again (what every CPU
update does) no longer page-fault; without them glibc hands them back to the OS each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

CYCLES = """
import resource, sys
import numpy as np
from learner.common import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_pages() and heap.keep_freed_pages()  # idempotent
def cycle():
    blocks = [np.ones(3 * 1024 * 1024 // 4, np.float32) for _ in range(10)]  # ten 3 MB blocks, touched
    return sum(float(b[0]) for b in blocks)
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = faults("keep"), faults("default")
    pages = 20 * 10 * 3 * 1024 * 1024 // 4096  # what the 20 cycles touch
    assert default > pages // 2  # glibc's defaults: most of them are faulted in again
    assert kept < pages // 100
