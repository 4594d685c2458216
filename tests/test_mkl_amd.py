"""learner/mkl_amd.py: which CPUs get MKL's AVX-512 kernels, the library build, and a process that
preloads it (MKL consults it, its matmuls stay correct, and nothing is exported to children)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from learner import mkl_amd

AMD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16\n"


def has_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def test_only_amd_cpus_with_the_avx512_subsets_qualify():
    assert mkl_amd.cpu_qualifies(AMD + AMD)  # one block per core: the first one is read
    assert not mkl_amd.cpu_qualifies(AMD.replace("AuthenticAMD", "GenuineIntel"))  # MKL picks AVX-512 itself
    assert not mkl_amd.cpu_qualifies(AMD.replace(" avx512bw", ""))
    assert not mkl_amd.cpu_qualifies("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma\n")  # Zen 3
    assert not mkl_amd.cpu_qualifies("")


def test_the_setting_turns_it_off(monkeypatch):
    for off in ("0", "off", "False", " no "):
        assert not mkl_amd.enabled(off)
        monkeypatch.setenv(mkl_amd.ENV, off)
        assert mkl_amd.library() is None and mkl_amd.preload_env() == {}
    assert mkl_amd.enabled("1") and mkl_amd.enabled("auto")


def test_preload_env_puts_the_library_first_and_keeps_other_preloads(monkeypatch, tmp_path):
    lib = tmp_path / "libfleet_mkl_avx512-x.so"
    monkeypatch.setenv("LD_PRELOAD", f"/opt/other.so {lib}")
    assert mkl_amd.preload_env(lib) == {"LD_PRELOAD": f"{lib} /opt/other.so"}
    monkeypatch.setenv("LD_PRELOAD", f"/opt/a.so:{lib}:/opt/b.so")  # glibc also takes colons
    assert mkl_amd.preload_env(lib) == {"LD_PRELOAD": f"{lib} /opt/a.so /opt/b.so"}


def test_the_learners_node_decides_and_the_driver_setting_is_obeyed(monkeypatch):
    from cluster.runtime import _mkl_preload_env

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert _mkl_preload_env("0") == {}
    lib = mkl_amd.library("1")
    assert _mkl_preload_env("1") == ({"LD_PRELOAD": str(lib)} if lib else {})
    monkeypatch.setattr(mkl_amd, "library", lambda setting=None: 1 / 0)
    assert _mkl_preload_env("1") == {}  # any error there: the run starts without it


@pytest.mark.skipif(not has_compiler(), reason="no C compiler")
def test_the_build_is_cached_and_a_missing_compiler_turns_it_off(monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    first = mkl_amd.build(tmp_path / "a")
    assert first is not None and first.exists()
    stamp = first.stat().st_mtime_ns
    assert mkl_amd.build(tmp_path / "a") == first and first.stat().st_mtime_ns == stamp
    compiler = next(shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c))
    monkeypatch.setenv("CC", f"{compiler} -Wall")  # a CC of several words
    assert mkl_amd.build(tmp_path / "b") is not None
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert mkl_amd.build(tmp_path / "c") is None


def test_a_library_that_cannot_be_loaded_leaves_the_command_running(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "torch")  # as at the CLI's start (restored after the test)
    monkeypatch.setattr(mkl_amd, "library", lambda setting=None: tmp_path / "libfleet_mkl_avx512-x.so")
    assert mkl_amd.preload() is False  # the file does not exist: OSError, a warning, no exception


PROBE = """
import json, os, sys
from learner import mkl_amd
preloaded = mkl_amd.preload()
import torch
torch.manual_seed(0)
a, b = torch.randn(300, 500), torch.randn(500, 200)
before = mkl_amd.queries()
error = ((a @ b).double() - a.double() @ b.double()).abs().max().item()
print(json.dumps({"preloaded": preloaded, "active": mkl_amd.active(), "queries_before": before,
                  "queries": mkl_amd.queries(), "error": error, "ld_preload": os.environ.get("LD_PRELOAD")}))
"""


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_process_that_preloads_it_runs_mkl_on_its_answer_and_stays_correct():
    if mkl_amd.library() is None:
        pytest.skip("not an AMD CPU with AVX-512, or no C compiler")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", mkl_amd.ENV)}
    r = probe(env)
    assert r["preloaded"] and r["active"]
    assert r["queries"] > 0  # MKL asked the library, by its first matmul at the latest
    assert r["error"] < 1e-3
    assert r["ld_preload"] is None  # not exported: Ray preloads jemalloc into its services only without it
    r = probe({**env, mkl_amd.ENV: "0"})
    assert not r["preloaded"] and not r["active"] and r["queries"] == 0 and r["error"] < 1e-3
