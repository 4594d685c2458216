"""Road layouts of the embedded simulator (issue 28): generated loops that are drivable, differ from each
other, and are the same on every machine; an env that draws one per episode."""

from __future__ import annotations

import numpy as np
import pytest

from rollout_workers.envs import layouts as L
from rollout_workers.envs.embedded import EmbeddedEnvConfig, make_env
from rollout_workers.envs.geometry import lane_points

NAMES = L.TRAINING_LAYOUTS + L.HELD_OUT_LAYOUTS


def _loop(network, lane_id: int) -> list:
    lanes, node = [], "a"
    while True:
        ((nxt, edge),) = network.graph[node].items()
        lanes.append(edge[lane_id])
        node = nxt
        if node == "a":
            return lanes


@pytest.mark.parametrize("name", [n for n in NAMES if n != L.RACETRACK])
def test_a_generated_loop_is_closed_long_enough_and_clear_of_itself(name: str) -> None:
    spec = L.loop_spec(name)
    network = L.build_network(spec)
    for lane_id in range(2):
        lanes = _loop(network, lane_id)
        for a, b in zip(lanes, lanes[1:] + lanes[:1]):  # each piece ends where the next begins
            end, start = lane_points(a, np.array([a.length]))[0], lane_points(b, np.array([0.0]))[0]
            assert np.hypot(*(end - start)) < 1e-6
    line = L.centre_line(spec)
    assert L._length(line) >= 450.0 and L._clear_of_itself(line, 22.0)


def test_loops_are_the_same_everywhere_and_differ_from_each_other() -> None:
    assert L.describe("loop-2") == L.describe("loop-2")
    assert L.loop_spec("loop-3").corners[0] == pytest.approx((19.374, -85.498), abs=1e-3)  # a fixed draw
    figures = [L.describe(n) for n in NAMES if n != L.RACETRACK]
    assert len({tuple(f["turns_deg"]) for f in figures}) == len(figures)
    held_out = [L.describe(n) for n in L.HELD_OUT_LAYOUTS]
    assert all(f["left_turns"] and f["right_turns"] for f in held_out)  # turns both ways
    assert not set(L.HELD_OUT_LAYOUTS) & set(L.TRAINING_LAYOUTS)


def test_a_name_that_names_no_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown road layout 'town02'"):
        EmbeddedEnvConfig(layouts=("town02",))


@pytest.mark.parametrize("name", NAMES)
def test_the_scripted_driver_completes_every_layout(name: str) -> None:
    from rollout_workers.evaluation import summarize
    from rollout_workers.scripted import ScriptedDriver, run_episodes

    cfg = EmbeddedEnvConfig(layouts=(name,))
    report = summarize(run_episodes(lambda seed: make_env(cfg, seed=seed), ScriptedDriver.for_env(cfg), [7]))
    assert report.mean_route_completion == 1.0 and report.off_road_rate == 0.0


def test_an_env_draws_a_layout_per_episode_from_its_set() -> None:
    env = make_env(EmbeddedEnvConfig(layouts=("racetrack", "loop-2")), seed=0)
    seen = set()
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        assert info["layout"] == env.unwrapped.layout
        seen.add(info["layout"])
        assert env.observation_space.contains(obs)
    assert seen == {"racetrack", "loop-2"}
    env.close()


def _snapshot(tmp_path, overrides: dict | None = None) -> str:
    import torch

    from checkpoint_store.store import SnapshotStore
    from cluster.runtime import experiment
    from learner.networks import build_networks

    cfg = experiment.load(None, overrides or {})
    torch.manual_seed(0)
    store = SnapshotStore(str(tmp_path / "store"))
    nets = build_networks(cfg.network)  # and their targets, as every snapshot a run writes holds them
    store.put({f"{name}{end}": net.state_dict() for name, net in nets.items() for end in ("", "_target")},
              {"config": cfg.public_dict(), "learner_updates": 1})
    return str(tmp_path / "store")


def test_fleet_evaluate_reports_each_layout_apart_on_the_validation_seeds(tmp_path, capsys) -> None:
    import json

    from cluster.cli import main

    store = _snapshot(tmp_path)
    assert main(["evaluate", "--snapshot", store, "--local", "--episodes", "1", "--layouts", "racetrack,loop-2",
                 "--out", str(tmp_path / "eval"), "--json", "--set", f"run.runs_dir={tmp_path / 'runs'}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == "validation" and [r["layout"] for r in out["layouts"]] == ["racetrack", "loop-2"]
    assert all(r["set"] == "training" and r["episodes"] == 1 for r in out["layouts"])
    # Held against the scripted driver on the same episode of each layout: an untrained actor is far below it.
    assert all(r["scripted_return"] > 50 and r["at_level"] is False for r in out["layouts"]), out["layouts"]
    assert all(r["of_scripted_return"] == round(r["mean_return"] / r["scripted_return"], 3) for r in out["layouts"])
    # Crashes: its episodes that ended in a collision or off the road, as its own report holds them; the scripted
    # driver's on the same episodes (it completes every layout, so none).
    for r in out["layouts"]:
        episodes = json.loads((tmp_path / "eval" / r["layout"] / "report.json").read_text())["episodes"]
        assert r["crashes"] == sum(bool(e["collision"] or e["off_road"]) for e in episodes)
        assert r["scripted_crashes"] == 0
    assert not (tmp_path / "runs" / "test-set-uses.jsonl").exists()  # no test seed was looked at


def test_the_scripted_driver_is_held_on_the_snapshots_simulator_not_the_users_config(tmp_path, capsys) -> None:
    """A snapshot trained on 150 m routes is held against the scripted driver on 150 m routes (its own
    episodes), though the user's config says 300 m; a --set reaches both (the twice-the-traffic check)."""
    import json
    from dataclasses import replace

    from cluster.cli import main
    from cluster.runtime import experiment
    from cluster.runtime.evaluation import layout_config
    from cluster.runtime.run import scripted_reference

    store = _snapshot(tmp_path, {"embedded.route_length_m": 150.0})
    runs = ["--set", f"run.runs_dir={tmp_path / 'runs'}"]
    base = experiment.load(None, {})

    def scripted(route_m: float, vehicles: int) -> float:
        embedded = replace(base.embedded, route_length_m=route_m, vehicles_count=vehicles)
        return scripted_reference(layout_config(replace(base, embedded=embedded), "racetrack"), 1)["mean_return"]

    for extra, vehicles in (([], base.embedded.vehicles_count), (["--set", "embedded.vehicles_count=12"], 12)):
        assert main(["evaluate", "--snapshot", store, "--local", "--episodes", "1", "--layouts", "racetrack",
                     "--out", str(tmp_path / "eval"), "--json", *runs, *extra]) == 0
        row = json.loads(capsys.readouterr().out)["layouts"][0]
        assert row["scripted_return"] == scripted(150.0, vehicles)
    assert scripted(150.0, base.embedded.vehicles_count) < 0.75 * scripted(300.0, base.embedded.vehicles_count)


def test_held_out_layouts_and_test_seeds_need_the_final_flag_and_each_use_is_recorded(tmp_path, capsys) -> None:
    import json

    from cluster.cli import main

    store = _snapshot(tmp_path)
    runs = ["--set", f"run.runs_dir={tmp_path / 'runs'}"]
    assert main(["evaluate", "--snapshot", store, "--local", "--layouts", "loop-22", *runs]) == 2
    assert "held out for the final evaluation only" in capsys.readouterr().err
    assert main(["evaluate", "--snapshot", store, "--local", "--final", "--seed", "5", *runs]) == 2
    assert "takes no --seed" in capsys.readouterr().err
    for _ in range(2):
        assert main(["evaluate", "--snapshot", store, "--local", "--final", "--episodes", "1", "--layouts",
                     "racetrack,loop-22", "--out", str(tmp_path / "eval"), "--json", *runs]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["seeds"] == "test" and [r["set"] for r in out["layouts"]] == ["training", "held-out"]
    assert "use 2 of the test set" in captured.err
    uses = [json.loads(line) for line in (tmp_path / "runs" / "test-set-uses.jsonl").read_text().splitlines()]
    assert len(uses) == 2 and uses[0]["layouts"] == ["racetrack", "loop-22"] and uses[0]["first_seed"] == 3_000_000
