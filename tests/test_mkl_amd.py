"""learner/mkl_amd.py: which CPUs get MKL's AVX-512 kernels, the library build, and a process that
preloads it (MKL consults it, and its matmuls stay correct)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from learner import mkl_amd

AMD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16\n"


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


def test_the_build_is_cached_and_needs_a_compiler(monkeypatch, tmp_path):
    if not (os.environ.get("CC") or any(os.access(os.path.join(d, "cc"), os.X_OK)
                                         for d in os.environ.get("PATH", "").split(os.pathsep))):
        pytest.skip("no C compiler")
    first = mkl_amd.build(tmp_path / "a")
    assert first is not None and first.exists()
    stamp = first.stat().st_mtime_ns
    assert mkl_amd.build(tmp_path / "a") == first and first.stat().st_mtime_ns == stamp
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert mkl_amd.build(tmp_path / "b") is None


PROBE = """
import json, sys
from learner import mkl_amd
preloaded = mkl_amd.preload()
import torch
torch.manual_seed(0)
a, b = torch.randn(300, 500), torch.randn(500, 200)
before = mkl_amd.queries()
error = ((a @ b).double() - a.double() @ b.double()).abs().max().item()
print(json.dumps({"preloaded": preloaded, "active": mkl_amd.active(), "queries_before": before,
                  "queries": mkl_amd.queries(), "error": error}))
"""


@pytest.mark.skipif(mkl_amd.library() is None, reason="not an AMD CPU with AVX-512, or no C compiler")
def test_a_process_that_preloads_it_runs_mkl_on_its_answer_and_stays_correct():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", mkl_amd.ENV)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["preloaded"] and r["active"]
    assert r["queries"] > r["queries_before"]  # MKL asked the library at its first matmul
    assert r["error"] < 1e-3
    off = subprocess.run([sys.executable, "-c", PROBE], env={**env, mkl_amd.ENV: "0"}, capture_output=True,
                         text=True, timeout=120, check=True)
    r = json.loads(off.stdout.strip().splitlines()[-1])
    assert not r["preloaded"] and not r["active"] and r["queries"] == 0 and r["error"] < 1e-3
