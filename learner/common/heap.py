"""glibc heap settings for a process that runs CPU updates.

A CPU update allocates and frees tensors of a few MB many times (conv activations and gradients,
3.3 MB each at batch 64; gathered image stacks). glibc serves blocks above a dynamic threshold with
mmap and gives them back on free, and trims the heap's top once 2x that threshold is free there; so,
depending on the order of earlier allocations, every update page-faulted 2-14 MB back in (550-3,400
minor faults per update measured on one code version, run to run, against 0-5 with these settings;
docs/benchmarks.md, "Page faults"). Fixing the mmap threshold at glibc's upper limit (32 MiB) and
trimming only past 1 GiB keeps those pages in the heap. Larger blocks (snapshot staging, replay
exports) are still mmapped and returned on free, and `checkpoint_store.writer.release_freed_memory`
still trims the heap on purpose after a snapshot hand-over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest allowed mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)."""
TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def libc_function(name: str) -> Any:
    """A function of the process's C library (`mallopt`, `malloc_trim`), or None where it has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


@functools.cache
def keep_freed_pages() -> bool:
    """Apply the settings above to this process, once. False where the C library is not glibc's (no
    `mallopt`) or refuses them. (Under a preloaded allocator such as jemalloc glibc still accepts
    them, and they do nothing.)"""
    mallopt = libc_function("mallopt")
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
