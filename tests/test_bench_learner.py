"""`fleet bench learner`: its figures are consistent with each other, the peak is the better of a
matmul and a convolution (on AMD CPUs MKL's matmul runs at half of oneDNN's AVX-512 rate unless
learner/common/mkl_amd.py's library is loaded), and the reference also runs in a plain process."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main


def test_bench_learner_reports_consistent_figures(capsys):
    argv = ["bench", "learner", "--batch", "4", "--updates", "2", "--rounds", "1", "--peak-seconds", "0.2", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["peak_gflops"] == max(r["peak_matmul_gflops"], r["peak_conv_gflops"]) > 0
    # The ratios are reported rounded to 3 decimals: at a low efficiency (a loaded machine) that is over 1%.
    assert r["speedup"] == pytest.approx(r["updates_per_s"] / r["reference_updates_per_s"], rel=1e-2, abs=1e-3)
    assert r["efficiency"] == pytest.approx(r["achieved_gflops"] / r["peak_gflops"], rel=1e-2, abs=1e-3)
    # Counted from the layer shapes: the three convolutions and the fc of a NatureCNN are 18.7 MFLOP
    # per image forward, and one update runs at least two CNN forwards per image.
    assert r["flops_per_update"] > 2 * 4 * 18.7e6
    assert r["same_process_speedup"] == pytest.approx(
        r["updates_per_s"] / r["same_process_reference_updates_per_s"], rel=1e-2, abs=1e-3)
    assert set(r["page_faults_per_update"]) == {"runtime", "reference", "same_process_reference"}
    assert r["mkl_avx512"]["reference"] is False  # the plain process never loads learner/common/mkl_amd.py's library
    assert all(len(v) == 1 for v in r["rounds"].values()) and len(r["rounds"]) == 3


def test_bench_learner_refuses_bad_arguments(capsys):
    assert main(["bench", "learner", "--rounds", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
