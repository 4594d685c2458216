"""MKL's AVX-512 matrix kernels on AMD CPUs.

torch's CPU wheels link Intel MKL, which picks its sgemm kernels by CPU vendor: on an AMD CPU with
AVX-512 (Zen 4 and 5) it runs its AVX2 kernels. On the 2-core VM of docs/benchmarks.md ("The
machine's peak") a 2048^3 fp32 matmul ran at about 230 GFLOP/s while oneDNN's convolutions, which
pick kernels by instruction set, reached 480; the CNN's fc layer and the MLP heads were 28% of a CPU
update. MKL asks one exported function, `mkl_serv_intel_cpu_true`, whether the CPU is Intel's. A
tiny library that answers yes, loaded before torch, lets MKL run its AVX-512 kernels (the same
matmul: 456-470 GFLOP/s). The math is the same up to float rounding (summation order).

It is used only where it can help and is safe to use: Linux on an AMD CPU with the AVX-512 subsets
MKL's kernels use (F, CD, BW, DQ, VL), a C compiler to build the library (cached in
~/.cache/carla-fleet, which must be a folder of yours with mode 0700, holding a file of yours that
no one else can write), and `FLEET_MKL_AVX512` not set to 0. Only processes that run a learner
load it: the fleet CLI into its own process before torch for `train --local` and `bench learner`
(`cluster.cli.runs_a_learner`), never for `--help` or another command. A Ray learner on the CPU
gets it in `LD_PRELOAD` through its runtime environment, decided on its node (cluster/runtime/ray_run.py). It is
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
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV = "FLEET_MKL_AVX512"
"""Set to 0 to keep MKL's own kernel choice."""

SOURCE = """\
/* carla-fleet: tell Intel MKL the CPU may run its AVX-512 kernels (learner/common/mkl_amd.py). */
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


def cpu_fields(cpuinfo: str | None = None) -> dict[str, Any]:
    """The first core's `vendor_id`, `model name` (str) and `flags` (a set) of `cpuinfo` (default: this
    machine's /proc/cpuinfo on Linux x86-64; empty fields elsewhere or when it cannot be read)."""
    if cpuinfo is None:
        cpuinfo = ""
        if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
            try:
                cpuinfo = Path("/proc/cpuinfo").read_text()
            except OSError:
                pass
    fields: dict[str, Any] = {"vendor_id": "", "model name": "", "flags": set()}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in fields and not fields[key]:  # one block per core: the first one is read
            fields[key] = set(value.split()) if key == "flags" else value.strip()
    return fields


def cpu_qualifies(cpuinfo: str | None = None) -> bool:
    """An AMD x86-64 CPU (Linux) with the AVX-512 subsets MKL's AVX-512 kernels need."""
    cpu = cpu_fields(cpuinfo)
    return cpu["vendor_id"] == "AuthenticAMD" and REQUIRED_FLAGS <= cpu["flags"]


def enabled(setting: str | None = None) -> bool:
    """Whether `setting` (default: the FLEET_MKL_AVX512 variable) allows the library."""
    setting = os.environ.get(ENV, "1") if setting is None else setting
    return setting.strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carla-fleet"


def unsafe_directory(directory: Path) -> str | None:
    """Why `directory` may not hold the library (None: it may). Whoever can write there can replace
    a library every learner of yours preloads, so it must be a folder (not a link) you own with mode
    0700."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder (a symbolic link or a file)"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700 (chmod 700 it)"
    return None


def unsafe_file(path: Path) -> str | None:
    """Why the library file at `path` may not be loaded (None: it may): a regular file you own that
    neither group nor others can write."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def build(directory: Path | None = None) -> Path | None:
    """The library, built once per source into `directory` (default: ~/.cache/carla-fleet, created
    with mode 0700); None without a C compiler, when the build fails, or when the folder or the
    file there could have been written by someone else (`unsafe_directory`, `unsafe_file`)."""
    try:
        directory = directory or cache_dir()
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
        target = directory / f"{NAME}{digest}.so"
        if os.path.lexists(directory):
            why = unsafe_directory(directory)
            if why is not None:
                log.warning("MKL keeps its AVX2 kernels: %s %s, so a library there is not used (%s=0 turns "
                            "this off)", directory, why, ENV)
                return None
        if os.path.lexists(target):
            why = unsafe_file(target)
            if why is not None:
                log.warning("MKL keeps its AVX2 kernels: %s %s; delete it (%s=0 turns this off)", target, why, ENV)
                return None
            return target
        compiler = (shlex.split(os.environ.get("CC", "")) or
                    [next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "")])
        if not compiler[0]:
            return None
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another builder: checked again
            pass
        why = unsafe_directory(directory)
        if why is not None:
            log.warning("MKL keeps its AVX2 kernels: %s %s", directory, why)
            return None
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
