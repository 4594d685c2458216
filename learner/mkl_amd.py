"""MKL's AVX-512 matrix kernels on AMD CPUs.

torch's CPU wheels link Intel MKL, which picks its sgemm kernels by CPU vendor: on an AMD CPU with
AVX-512 (Zen 4 and 5) it runs its AVX2 kernels. On the 2-core VM of docs/benchmarks.md ("The
machine's peak") a 2048^3 fp32 matmul ran at about 230 GFLOP/s while oneDNN's convolutions, which
pick kernels by instruction set, reached 480; the CNN's fc layer and the MLP heads were 28% of a CPU
update. MKL asks one exported function, `mkl_serv_intel_cpu_true`, whether the CPU is Intel's. A
tiny library that answers yes, loaded before torch, lets MKL run its AVX-512 kernels (the same
matmul: 456-470 GFLOP/s). The math is the same up to float rounding (summation order).

It is used only where it can help and is safe to use: Linux on an AMD CPU with the AVX-512 subsets
MKL's kernels use (F, CD, BW, DQ, VL), a C compiler to build the library (cached), and
`FLEET_MKL_AVX512` not set to 0. The fleet CLI loads it into its own process before torch (the
learner of `--local` runs and `fleet bench learner`). A Ray learner on the CPU gets it in
`LD_PRELOAD` through its runtime environment, decided on its node (cluster/runtime.py). It is
never exported to a whole Ray instance: Ray preloads its jemalloc into the raylet and the GCS only
when `LD_PRELOAD` is unset. Anything that goes wrong (no compiler, a noexec cache directory) leaves
MKL's own choice, with a warning, and never stops a command.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "FLEET_MKL_AVX512"
"""Set to 0 to keep MKL's own kernel choice."""

SOURCE = """\
/* carla-fleet: tell Intel MKL the CPU may run its AVX-512 kernels (learner/mkl_amd.py). */
static int queries;
int mkl_serv_intel_cpu_true(void) { __atomic_add_fetch(&queries, 1, __ATOMIC_RELAXED); return 1; }
/* How often MKL asked: > 0 once it has taken this answer. */
int fleet_mkl_queries(void) { return __atomic_load_n(&queries, __ATOMIC_RELAXED); }
"""

log = logging.getLogger(__name__)

NAME = "libfleet_mkl_avx512-"
"""The library's file name before its source digest: how it is found in a process's maps and in
LD_PRELOAD."""

REQUIRED_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def cpu_qualifies(cpuinfo: str | None = None) -> bool:
    """An AMD x86-64 CPU (Linux) with the AVX-512 subsets MKL's AVX-512 kernels need."""
    if cpuinfo is None:
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor == "AuthenticAMD" and REQUIRED_FLAGS <= flags


def enabled(setting: str | None = None) -> bool:
    """Whether `setting` (default: the FLEET_MKL_AVX512 variable) allows the library."""
    setting = os.environ.get(ENV, "1") if setting is None else setting
    return setting.strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carla-fleet"


def build(directory: Path | None = None) -> Path | None:
    """The library, built once per source into `directory` (default: ~/.cache/carla-fleet); None
    without a C compiler or when the build fails."""
    try:
        directory = directory or cache_dir()
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
        target = directory / f"{NAME}{digest}.so"
        if target.exists():
            return target
        compiler = (shlex.split(os.environ.get("CC", "")) or
                    [next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "")])
        if not compiler[0]:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src, out = Path(tmp) / "shim.c", Path(tmp) / "shim.so"
            src.write_text(SOURCE)
            subprocess.run([*compiler, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)],
                           check=True, capture_output=True, timeout=60)
            os.replace(out, target)  # atomic: concurrent builders leave one complete file
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # RuntimeError: no home directory
        log.warning("MKL keeps its AVX2 kernels: could not build %s's library (%s)", __name__, exc)
        return None
    return target


def library(setting: str | None = None) -> Path | None:
    """The library to preload on this machine, or None where it does not apply."""
    if not enabled(setting) or not cpu_qualifies():
        return None
    return build()


def preload_env(path: Path | None = None, setting: str | None = None) -> dict[str, str]:
    """Environment variables that preload the library into a new process ({} where it does not
    apply): LD_PRELOAD with the library first, keeping what was there."""
    path = path or library(setting)
    if path is None:
        return {}
    return {"LD_PRELOAD": " ".join([str(path), *other_preloads()])}


def other_preloads() -> list[str]:
    """This process's LD_PRELOAD entries (glibc separates them by spaces or colons), less any copy of
    the library."""
    return [p for p in re.split(r"[:\s]+", os.environ.get("LD_PRELOAD", "")) if p and NAME not in p]


def preload() -> bool:
    """Load the library into this process. Returns whether it is active here. Loading works only
    before torch is imported (afterwards torch's own definition of the function is found first:
    measured, the matmul stayed at the AVX2 rate). Nothing is exported to child processes."""
    if "torch" in sys.modules:
        return active()
    path = library()
    if path is None:
        return False
    try:
        ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
    except OSError as exc:  # e.g. a cache directory mounted noexec
        log.warning("MKL keeps its AVX2 kernels: could not load %s (%s)", path, exc)
        return False
    return True


def loaded_path() -> str | None:
    """The library's path if it is loaded in this process (by `preload` or LD_PRELOAD)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        if NAME in line:
            return line.split(maxsplit=5)[-1]
    return None


def active() -> bool:
    """Whether the library is loaded in this process, ahead of torch's MKL."""
    return loaded_path() is not None


def queries() -> int:
    """How many times MKL has asked the loaded library whether the CPU is Intel's (0: not loaded, or
    MKL has not run yet)."""
    path = loaded_path()
    return int(ctypes.CDLL(path).fleet_mkl_queries()) if path else 0
