"""A run on several nodes: a store every node must see, evaluation spread over the nodes, and workers held
back (not the object store filling) while the learner is behind. One three-node local cluster for the
module; its nodes declare more logical CPUs than this machine has cores (Ray only counts them)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.cli import main as fleet
from cluster.runtime import experiment
from tests.multinode import join, local_cluster
from tests.test_faults import train_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[Any]]:
    """Head (this process's driver), and two `carla: 2` nodes; the last one has a HOME of its own, as a
    second machine has, so `~/...` names another folder there."""
    token = Path.home() / ".ray" / "auth_token"  # this user's Ray token, before HOME changes
    with pytest.MonkeyPatch.context() as mp:
        home = tempfile.mkdtemp(prefix="fleet-home-", dir="/tmp")
        mp.setenv("HOME", home)
        other_home = tempfile.mkdtemp(prefix="fleet-home-", dir="/tmp")
        # An earlier Ray started in this process set RAY_AUTH_MODE=token here (Ray does, for a local
        # ray.init): every node's processes then read the token from $HOME/.ray/auth_token, and a GCS that
        # finds none does not start ("Timed out waiting for file .../gcs_server_port_..."; CI, twice). Each
        # HOME gets the token, as each machine of a real cluster has it (cluster.yaml's file mount).
        if token.is_file():
            for h in (home, other_home):
                (Path(h) / ".ray").mkdir(mode=0o700)
                (Path(h) / ".ray" / "auth_token").write_bytes(token.read_bytes())
                (Path(h) / ".ray" / "auth_token").chmod(0o600)
        with local_cluster(mp, dict(num_cpus=2), dict(num_cpus=2, resources={"carla": 2}),
                           dict(num_cpus=2, resources={"carla": 2}, env_vars={"HOME": other_home})) as (_, ns):
            yield ns


def cfg_for(tmp_path: Path, **over: Any) -> experiment.ExperimentConfig:
    import ray

    base = {"run.name": "nodes", "run.runs_dir": str(tmp_path / "runs"), "run.store": str(tmp_path / "store"),
            "run.env": "tests.env_double:make", "run.workers": 2, "run.worker_resource": "carla",
            "run.ray_address": ray.get_runtime_context().gcs_address, "run.collect_steps": 50,
            "run.progress_every_s": 1.0, "agent.batch_size": 16, "learner.learning_starts": 300,
            "learner.replay_ratio": 0.25, "learner.snapshot_every": 40, "learner.publish_every": 10,
            "replay.capacity": 5000, "eval.every_updates": 0}
    return experiment.load(None, {**base, **over})


def test_a_local_store_one_node_cannot_see_is_refused_in_one_line_naming_that_node(tmp_path, nodes, capsys):
    import ray

    store = f"~/fleet-store-{tmp_path.name}"
    code = fleet(["train", "--quiet", "--name", "blind", "--store", store, "--set", f"run.runs_dir={tmp_path}",
                  "--set", "run.env=tests.env_double:make", "--set", "run.worker_resource=carla",
                  "--set", f"run.ray_address={ray.get_runtime_context().gcs_address}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fleet: error: the snapshot store"), err
    assert "s3://" in err[0] and nodes[2].node_id[:8] in err[0]
    assert nodes[0].node_id[:8] not in err[0] and nodes[1].node_id[:8] not in err[0]
    assert not [a for a in ray.util.list_named_actors() if a.startswith("blind-")]  # refused before any actor
    # The driver's mark file is gone again: the store holds nothing of the check.
    assert not list((Path("~").expanduser() / f"fleet-store-{tmp_path.name}" / "probes").glob("*"))


def test_a_store_every_node_sees_passes_the_check(tmp_path, nodes):
    from cluster.runtime.nodes import check_store_shared

    check_store_shared(str(tmp_path / "shared"))
    check_store_shared(f"file://{tmp_path / 'shared'}")
    assert not list((tmp_path / "shared" / "probes").glob("*"))


def test_evaluation_actors_spread_over_the_nodes(tmp_path, nodes):
    import ray

    from cluster.runtime.periodic_eval import RayEval

    cfg = cfg_for(tmp_path, **{"run.worker_resource": ""})
    evaluators = RayEval(cfg, workers=3)
    try:
        where = ray.get([a.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
                         for a in evaluators.actors], timeout=120)
    finally:
        evaluators.close()
    # Every node has room for all three (6 logical CPUs); packed, they would share one or two nodes.
    assert len(set(where)) == 3, where


def test_a_slow_learner_holds_the_workers_back_and_the_object_store_neither_fills_nor_spills(tmp_path, nodes):
    """Workers on the two `carla` nodes, the learner on the head: every chunk crosses the object store.
    1.5 updates of a larger batch per env step keep the learner behind the workers the whole run."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    cfg = cfg_for(tmp_path, **{"run.name": "slow", "run.total_env_steps": 600, "run.max_ahead_steps": 200,
                               "learner.learning_starts": 200, "learner.replay_ratio": 1.5,
                               "agent.batch_size": 32, "learner.snapshot_every": 300})
    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    samples: list[tuple[int, int, int, int]] = []  # (used, spilled, capacity, steps ahead)
    stop = threading.Event()

    def sample() -> None:
        learner = None
        while not stop.is_set():
            stats = get_memory_info_reply(state).store_stats
            try:
                learner = learner or ray.get_actor("slow-learner")
                ahead = ray.get(learner.stats.remote(), timeout=10).steps_ahead
            except Exception:  # not started yet, or stopped
                ahead = -1
            samples.append((stats.object_store_bytes_used, stats.spilled_bytes_total,
                            stats.object_store_bytes_used + stats.object_store_bytes_avail, ahead))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    thread, out = train_in_thread(cfg)
    try:
        join(thread, 400)
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert "error" not in out, repr(out.get("error"))
    summary = out["summary"]
    assert summary["env_steps"] >= 600 and summary["workers_paused_s"] > 0, summary
    assert len(samples) >= 10
    # Pacing: the workers never ran more than one collect call each past the bound.
    assert max(s[3] for s in samples) <= cfg.run.max_ahead_steps + cfg.run.workers * cfg.run.collect_steps
    # Nothing spilled, never near full. While the workers wait, the store holds what is in flight (chunks,
    # published weights: ~8 MB measured), not the run's data; a snapshot handed to the writer (state and
    # new replay segments) passes through it for a moment.
    assert max(s[1] for s in samples) == 0
    capacity = samples[0][2]
    assert max(s[0] for s in samples) < capacity / 2, (max(s[0] for s in samples), capacity)
    paused = sorted(s[0] for s in samples if s[3] > cfg.run.max_ahead_steps)
    assert paused and paused[len(paused) // 2] < 16 * 2**20, paused
