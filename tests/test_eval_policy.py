"""Which actor evaluation drives (`eval.policy`): the Polyak-averaged one by default, the online one on request."""

from __future__ import annotations

import pytest
import torch
from test_runtime import make_cfg

from checkpoint_store.store import SnapshotStore
from cluster.runtime import experiment
from cluster.runtime.evaluation import load_for_evaluation
from cluster.runtime.periodic_eval import PeriodicEval
from cluster.runtime.progress import MetricsLog, Status
from cluster.runtime.training import train
from learner.common.errors import ConfigError
from learner.networks import POLICY_COMPONENTS, policy_components, policy_weights
from rollout_workers.evaluation import EvalConfig


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_sources_name_the_snapshot_components_and_an_unknown_one_is_refused():
    assert policy_components("online") == POLICY_COMPONENTS
    assert policy_components("averaged") == ("actor_cnn_target", "actor_target")
    state = {name: {"w": torch.full((1,), float(i))} for i, name in
             enumerate(("actor_cnn", "actor", "actor_cnn_target", "actor_target"))}
    assert policy_weights(state, "averaged") == {"actor_cnn": state["actor_cnn_target"], "actor": state["actor_target"]}
    assert policy_weights(state, "online") == {"actor_cnn": state["actor_cnn"], "actor": state["actor"]}
    with pytest.raises(ValueError, match="averaged"):
        EvalConfig(policy="best")
    with pytest.raises(ConfigError, match="eval"):
        experiment.load(None, {"eval.policy": "target"})
    assert EvalConfig().policy == "averaged"


class RecordingBackend:
    def __init__(self) -> None:
        self.weights: list[dict] = []

    def start(self, weights, seeds):
        self.weights.append(weights)
        return [{"seed": s, "return": 1.0, "route_completion": 1.0, "collision": 0.0, "off_road": 0.0,
                 "distance_m": 100.0, "mean_speed": 5.0} for s in seeds]

    def result(self, handle):
        return handle

    wait = result


def test_evaluate_and_the_periodic_evaluation_load_the_averaged_actor_unless_told_online(tmp_path):
    train(make_cfg(tmp_path), local=True, quiet=True)
    cfg = make_cfg(tmp_path, **{"eval.every_updates": 1})
    store = SnapshotStore(cfg.store_uri())
    snap = store.get("latest")
    # After a few hundred updates the two actors differ, so loading the wrong one fails below.
    assert not same(snap.state["actor"], snap.state["actor_target"])

    ref = f"{cfg.store_uri()}@latest"
    _, weights, label = load_for_evaluation(ref, cfg, None, lambda note: None)
    assert label.endswith(snap.manifest.version)
    assert same(weights["actor"], snap.state["actor_target"])
    assert same(weights["actor_cnn"], snap.state["actor_cnn_target"])
    online_cfg = make_cfg(tmp_path, **{"eval.every_updates": 1, "eval.policy": "online"})
    _, weights, _ = load_for_evaluation(ref, online_cfg, None, lambda note: None)
    assert same(weights["actor"], snap.state["actor"]) and same(weights["actor_cnn"], snap.state["actor_cnn"])

    for run_cfg, wanted in ((cfg, "actor_target"), (online_cfg, "actor")):
        backend = RecordingBackend()
        ev = PeriodicEval(run_cfg, backend, lambda v, s: None, 0.4)
        status = Status(total_env_steps=1)
        status.last_snapshot, status.updates = snap.manifest.version, 10**6
        metrics = MetricsLog(tmp_path / f"metrics-{wanted}")
        ev.poll(status, metrics)
        metrics.close()
        assert len(backend.weights) == 1 and same(backend.weights[0]["actor"], snap.state[wanted])


def test_a_snapshot_without_the_averaged_actor_is_refused_with_the_way_out(tmp_path):
    from learner.common.errors import UserError
    from learner.networks import build_networks

    cfg = make_cfg(tmp_path)
    store = SnapshotStore(str(tmp_path / "bare"))
    store.put({name: net.state_dict() for name, net in build_networks(cfg.network).items()},
              {"config": cfg.public_dict(), "learner_updates": 1})
    with pytest.raises(UserError, match="eval.policy=online"):
        load_for_evaluation(f"{tmp_path / 'bare'}@latest", cfg, None, lambda note: None)
    online = make_cfg(tmp_path, **{"eval.policy": "online"})
    _, weights, _ = load_for_evaluation(f"{tmp_path / 'bare'}@latest", online, None, lambda note: None)
    assert set(weights) == {"actor_cnn", "actor"}
