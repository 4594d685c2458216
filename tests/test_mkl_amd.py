"""learner/common/mkl_amd.py: which CPUs get MKL's AVX-512 kernels, the library build, and a process that
preloads it (MKL consults it, its matmuls stay correct, and nothing is exported to children)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from learner.common import mkl_amd

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
    from cluster.runtime.ray_run import _mkl_preload_env

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
from learner.common import mkl_amd
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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_AMD = """
import sys
from learner.common import mkl_amd
mkl_amd.cpu_qualifies = lambda cpuinfo=None: True  # this machine has no AVX-512: the decision is what is tested
from cluster.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
print("LOADED" if mkl_amd.active() else "NOT LOADED", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.skipif(not has_compiler(), reason="no C compiler")
def test_only_commands_that_run_a_learner_build_and_load_the_library(tmp_path):
    """Issue 18, item 12: every command, --help included, built and loaded it from ~/.cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", mkl_amd.ENV)}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=REPO)
    cache = tmp_path / "cache" / "carla-fleet"
    missing = str(tmp_path / "no-store")
    for args in (["--help"], ["train", "--local", "--help"], ["config", "--keys"], ["snapshots", "list", missing],
                 ["evaluate", "--local", "--snapshot", missing], ["inspect", "--snapshot", missing]):
        proc = subprocess.run([sys.executable, "-c", FAKE_AMD, *args], capture_output=True, text=True, timeout=120,
                              cwd=REPO, env=env)
        assert proc.stderr.strip().splitlines()[-1] == "NOT LOADED", (args, proc.stderr[-2000:])
        assert not cache.exists(), args
    a_file = tmp_path / "a-file"
    a_file.write_text("not a store")  # train --local stops at its store check, after the preload
    proc = subprocess.run([sys.executable, "-c", FAKE_AMD, "train", "--local", "--store", str(a_file), "--set",
                           f"run.runs_dir={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == "LOADED", proc.stderr[-2000:]
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)


def test_the_command_line_decides_which_commands_run_a_learner():
    from cluster.cli import runs_a_learner

    assert runs_a_learner(["train", "--local"]) and runs_a_learner(["-v", "train", "--steps", "9", "--local"])
    assert runs_a_learner(["bench", "learner", "--batch", "64"])
    assert runs_a_learner(["bench", "learning", "--final"])  # the peers learn in its process, as ours does on Ray
    for argv in (["train"], ["train", "--local", "--help"], ["-h"], [], ["evaluate", "--local", "--snapshot", "x"],
                 ["inspect", "--snapshot", "x"], ["snapshots", "list", "x"], ["config", "--show"],
                 ["import-legacy", "f.pth", "--store", "x"], ["bench", "replay"]):
        assert not runs_a_learner(argv), argv


@pytest.mark.skipif(not has_compiler(), reason="no C compiler")
@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_folder_or_file_someone_else_could_write_is_refused(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("CC", raising=False)
    good = tmp_path / "good"
    lib = mkl_amd.build(good)
    assert lib is not None and oct(good.stat().st_mode & 0o777) == oct(0o700)  # made private
    assert mkl_amd.build(good) == lib

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert mkl_amd.build(shared) is None and "not 0700" in caplog.text
    assert not list(shared.iterdir())  # nothing built there either

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert mkl_amd.build(theirs) is None and "owned by uid 65534" in caplog.text

    linked = tmp_path / "linked"
    linked.symlink_to(good)
    assert mkl_amd.build(linked) is None and "not a folder" in caplog.text

    lib.chmod(0o775)  # group-writable library in a private folder
    assert mkl_amd.build(good) is None and "writable by group or others" in caplog.text
    lib.chmod(0o755)
    os.chown(lib, 65534, 65534)
    assert mkl_amd.build(good) is None and "owned by uid 65534" in caplog.text
    os.chown(lib, os.getuid(), os.getgid())
    assert mkl_amd.build(good) == lib


def test_library_asks_for_the_cpu_check_only_when_enabled(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(mkl_amd, "build", lambda directory=None: built.append(1) or tmp_path / "lib.so")
    monkeypatch.setattr(mkl_amd, "cpu_qualifies", lambda cpuinfo=None: True)
    assert mkl_amd.library("1") == tmp_path / "lib.so" and built == [1]
    assert mkl_amd.library("0") is None and built == [1]
    monkeypatch.setattr(mkl_amd, "cpu_qualifies", lambda cpuinfo=None: False)
    assert mkl_amd.library("1") is None and built == [1]
