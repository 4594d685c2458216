"""`fleet inspect`: the critic's preferred actions and the actor's actions on scripted states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_store.store import SnapshotStore
from cluster.cli import main
from cluster.runtime import experiment
from cluster.runtime.inspection import SWEEP, collect_states, inspect_weights
from learner.networks import Policy, build_networks
from rollout_workers.scripted import ScriptedDriver


def _weights(cfg, throttle_sign: float) -> dict[str, dict[str, torch.Tensor]]:
    """Random networks whose Q1 is throttle_sign * (throttle_brake + 2): a critic with a known preference."""
    torch.manual_seed(0)
    nets = build_networks(cfg.network)
    q1 = nets["critic"].Q1
    throttle_input = cfg.network.feature_dim + cfg.network.vector_dim + 1
    with torch.no_grad():
        for layer in (q1.l1, q1.l2, q1.l3):
            layer.weight.zero_()
            layer.bias.zero_()
        q1.l1.weight[0, throttle_input] = 1.0
        q1.l1.bias[0] = 2.0  # stays above the ReLU's zero for throttle in [-1, 1]
        q1.l2.weight[0, 0] = 1.0
        q1.l3.weight[0, 0] = throttle_sign
    return {name: net.state_dict() for name, net in nets.items()}


@pytest.mark.parametrize("sign, best", [(1.0, 1.0), (-1.0, -1.0)])
def test_the_probe_reads_the_critics_preference_and_the_actors_actions(sign: float, best: float) -> None:
    cfg = experiment.load(None, {})
    weights = _weights(cfg, sign)
    (probe,) = inspect_weights(cfg, weights, speeds=[8.0], episodes=1)
    assert probe.states == 20
    assert probe.best_throttle == best
    assert probe.q_over_throttle == pytest.approx([sign * (v + 2.0) for v in SWEEP], abs=1e-4)
    assert max(probe.q_over_steer) - min(probe.q_over_steer) == pytest.approx(0.0, abs=1e-5)  # Q1 ignores steer

    # The actor's figures are what a worker's policy does in the same states.
    images, vectors, _ = collect_states(experiment_factory(cfg), ScriptedDriver.for_env(cfg.embedded, target_speed=8.0),
                                        cfg.eval.seeds(1), 40, 60)
    policy = Policy(cfg.network)
    policy.load_components({k: weights[k] for k in ("actor_cnn", "actor")})
    acted = np.stack([policy.act(i, v) for i, v in zip(images, vectors)])
    assert probe.actor_throttle == pytest.approx(float(acted[:, 1].mean()), abs=1e-4)
    assert probe.actor_steer == pytest.approx(float(acted[:, 0].mean()), abs=1e-4)


def experiment_factory(cfg):
    from cluster.runtime.envs import make_factory

    return make_factory(cfg, 0)


def test_fleet_inspect_reads_a_stored_snapshot(tmp_path: Path, capsys) -> None:
    cfg = experiment.load(None, {})
    store = SnapshotStore(str(tmp_path / "store"))
    store.put(_weights(cfg, -1.0), {"config": cfg.public_dict(), "learner_updates": 1})
    assert main(["inspect", "--snapshot", str(tmp_path / "store"), "--speeds", "8,11", "--episodes", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["speed"] for s in out["speeds"]] == [8.0, 11.0]
    assert all(s["best_throttle"] == -1.0 for s in out["speeds"])


def test_fleet_inspect_refuses_bad_speeds_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["inspect", "--snapshot", str(tmp_path / "none"), "--speeds", "fast"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
