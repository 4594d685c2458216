"""The soak benchmark's analysis: slope and verdict of memory series (no Ray)."""

from __future__ import annotations

import math

import pytest

from cluster.bench.soak import series, trend


def _times(minutes: float = 30, every_s: float = 30) -> list[float]:
    return [i * every_s for i in range(int(minutes * 60 / every_s) + 1)]


def test_a_leak_of_100_mb_per_hour_grows_and_a_noisy_flat_series_does_not() -> None:
    ts = _times()
    growing = [500 + 100 * t / 3600 for t in ts]
    flat = [500 + 3 * math.sin(t / 50) for t in ts]  # +-3 MB of noise, no trend

    g = trend(ts, growing, 0, ts[-1])
    f = trend(ts, flat, 0, ts[-1])

    assert g.verdict == "GROWS"
    assert g.slope_mb_per_h == pytest.approx(100, rel=1e-6)
    assert g.threshold_mb_per_h == pytest.approx(0.05 * g.median_mb)  # 5% of ~537 MB per hour
    # Medians of the last quarter (minutes 22.5-30) and the second (7.5-15): 543.75 / 518.75.
    assert g.relative_growth == pytest.approx(543.75 / 518.75 - 1, abs=1e-6)
    assert f.verdict == "flat"
    assert abs(f.slope_mb_per_h) < f.threshold_mb_per_h
    assert f.start_mb == 500 and f.samples == 31


def test_growth_only_in_the_first_half_is_warm_up_not_a_trend() -> None:
    ts = _times()
    filling = [200 + min(t, 600) * 0.5 for t in ts]  # a replay filling for 10 minutes, then full

    tr = trend(ts, filling, 0, ts[-1])

    assert tr.verdict == "flat" and tr.slope_mb_per_h == 0
    assert tr.end_mb == 500


def test_small_processes_get_an_absolute_floor_and_short_series_no_verdict() -> None:
    ts = _times()
    small = [20 + 4 * t / 3600 for t in ts]  # 4 MB/h on 20 MB: 20%/h but under the 5 MB/h floor

    assert trend(ts, small, 0, ts[-1]).verdict == "flat"
    assert trend(ts, small, 0, ts[-1]).threshold_mb_per_h == 5.0
    assert trend(ts[:3], small[:3], 0, ts[-1]).verdict == "too short"


def test_a_restarted_actor_is_a_new_series() -> None:
    rows = [{"t_s": 0, "process": "worker-0", "pid": 10, "rss_mb": 1.0},
            {"t_s": 30, "process": "worker-0", "pid": 10, "rss_mb": 1.0},
            {"t_s": 60, "process": "worker-0", "pid": 11, "rss_mb": 2.0}]

    per = series(rows)

    assert [len(v) for v in per.values()] == [2, 1]
    assert list(per) == ["worker-0 (pid 10)", "worker-0 (pid 11)"]


def test_one_transient_peak_is_not_a_trend_but_a_slow_leak_under_noise_is() -> None:
    ts = _times()
    # Flat at 420 MB with one sample, late in the run, taken during a 130 MB replay export.
    peak = [547.0 if i == len(ts) - 3 else 420.0 for i in range(len(ts))]
    # 30 MB/h under +-3 MB of noise.
    leak = [400 + 30 * t / 3600 + 3 * math.sin(t / 50) for t in ts]

    p = trend(ts, peak, 0, ts[-1])
    lk = trend(ts, leak, 0, ts[-1])

    assert p.ls_slope_mb_per_h > p.threshold_mb_per_h  # least squares alone would call it growth
    assert p.slope_mb_per_h == 0 and p.verdict == "flat"
    assert lk.verdict == "GROWS" and lk.slope_mb_per_h == pytest.approx(30, rel=0.1)


def test_the_all_process_peak_adds_up_processes_sampled_together() -> None:
    from cluster.bench.soak import all_processes

    rows = [{"t_s": t, "process": p, "pid": 1, "rss_mb": rss, "anon_mb": anon}
            for t, p, rss, anon in [(0, "learner", 500, 400), (0, "replay", 300, 200),
                                    (30, "learner", 900, 700), (30, "replay", 320, 250),
                                    (60, "learner", 800, 650), (60, "replay", 600, 500)]]
    assert all_processes(rows) == {"peak_anon_mb": 1150.0, "peak_at_s": 60, "peak_rss_mb": 1400.0,
                                   "end_anon_mb": 1150.0}
    rows[-1]["anon_mb"] = 100
    assert all_processes(rows)["peak_anon_mb"] == 950.0 and all_processes(rows)["peak_at_s"] == 30
