"""`fleet bench replay --export-steps`: two consecutive exports of a full replay (no Ray)."""

from __future__ import annotations


def test_the_second_export_of_a_full_replay_encodes_only_the_changed_segments() -> None:
    from cluster.bench.replay import export_figures

    out = export_figures(steps=20_000, between=500, repeats=1)
    # 20,000 steps in segments of 4,096: the 500 steps in between touch one or two of five.
    assert out["first_mb"] > 100 and 0 < out["second_mb"] < 0.45 * out["first_mb"]
    assert out["bytes_ratio"] == round(out["second_mb"] / out["first_mb"], 4) or abs(
        out["bytes_ratio"] - out["second_mb"] / out["first_mb"]) < 0.01
    assert out["second_s"] < out["first_s"]
