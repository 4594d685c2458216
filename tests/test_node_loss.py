"""Nodes that join and nodes that are lost during a run, on a real local multi-node Ray cluster.

A lost node is killed the way a reclaimed spot machine goes (`remove_node(allow_graceful=False)`: its
raylet and workers get SIGKILL, the GCS finds out from missed health checks). The nodes declare more
logical CPUs than this machine has cores: Ray only counts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoint_store.store import SnapshotStore
from cluster.runtime import experiment
from tests.multinode import REPO, actor_state, join, local_cluster, wait_for
from tests.test_faults import train_in_thread, versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = {"run.collect_steps": 50, "run.progress_every_s": 1.0, "agent.batch_size": 16,
         "learner.learning_starts": 300, "learner.replay_ratio": 0.25, "learner.snapshot_every": 40,
         "learner.publish_every": 10, "replay.capacity": 5000, "eval.every_updates": 0,
         "run.env": "tests.env_double:make"}


def cfg_for(tmp_path: Path, address: str, **over) -> experiment.ExperimentConfig:
    return experiment.load(None, {**SMALL, "run.runs_dir": str(tmp_path / "runs"), "run.store": str(tmp_path / "store"),
                                  "run.ray_address": address, **over})


def learner_stats(name: str) -> dict:
    import dataclasses

    import ray

    try:
        return dataclasses.asdict(ray.get(ray.get_actor(f"{name}-learner").stats.remote(), timeout=10))
    except Exception:  # not created yet, or gone
        return {}


def test_workers_waiting_for_a_carla_node_start_on_one_that_joins_mid_run(tmp_path, monkeypatch):
    """One `carla` unit at the start for three workers: the run goes on with one, and the two waiting
    start on the node that joins."""
    import ray

    with local_cluster(monkeypatch, dict(num_cpus=3, resources={"carla": 1})) as (cluster, _):
        cfg = cfg_for(tmp_path, cluster.address, **{"run.name": "join", "run.workers": 3,
                                                      "run.worker_resource": "carla", "run.total_env_steps": 1000})
        thread, out = train_in_thread(cfg)
        wait_for(lambda: learner_stats("join").get("collected_steps", 0) > 0 or "error" in out, 180,
                 "the first worker's steps")
        waiting = [actor_state(f"join-worker-{i}") for i in range(3)]
        assert waiting.count("PENDING_CREATION") == 2 and waiting.count("ALIVE") == 1, waiting
        joined = cluster.add_node(num_cpus=2, resources={"carla": 2})
        join(thread, 300)
        assert "error" not in out, repr(out.get("error"))
        summary = out["summary"]
        assert summary["env_steps"] >= 1000 and summary["worker_restarts"] == 0
        assert summary["placement"]["workers"].count(joined.node_id) == 2, summary["placement"]
        assert summary["node_losses"] == []
        assert ray.cluster_resources().get("carla") == 3


def test_losing_a_worker_node_restarts_its_workers_on_the_nodes_left_and_the_run_finishes(tmp_path, monkeypatch):
    """Head (driver, learner, replay) with two `carla` units, two more nodes with two each; four workers.
    The lost node's workers come back on the two spare units; the replay and the store keep everything."""
    with local_cluster(monkeypatch, dict(num_cpus=3, resources={"carla": 2}),
                       dict(num_cpus=2, resources={"carla": 2}), dict(num_cpus=2, resources={"carla": 2})) \
            as (cluster, nodes):
        cfg = cfg_for(tmp_path, cluster.address, **{"run.name": "wloss", "run.workers": 4,
                                                      "run.worker_resource": "carla", "run.total_env_steps": 1800,
                                                      "retention.keep_last": 1000})  # every version kept
        thread, out = train_in_thread(cfg)
        uri = cfg.store_uri()
        wait_for(lambda: len(versions(uri)) >= 1 or "error" in out, 240, "a first snapshot")
        stats = learner_stats("wloss")
        on = stats["worker_nodes"]
        victim = next(n for n in nodes[1:] if n.node_id in on.values())
        lost_workers = sorted(i for i, n in on.items() if n == victim.node_id)
        before = {m.version: m.env_steps for m in SnapshotStore(uri).list()}
        replay_before = stats["replay_size"]
        lost_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)

        def back() -> bool:
            now = learner_stats("wloss")
            return bool(now) and victim.node_id not in now["worker_nodes"].values() \
                and len(now["worker_nodes"]) == 4
        wait_for(lambda: back() or not thread.is_alive(), 180, "the lost workers started elsewhere", every=0.5)
        recreated_s = time.monotonic() - lost_at
        join(thread, 300)
        assert "error" not in out, repr(out.get("error"))
        summary = out["summary"]
        print(f"\nworkers {lost_workers} back on other nodes {recreated_s:.1f} s after their node was lost")
        assert summary["env_steps"] >= 1800 - cfg.worker.chunk_steps * (1 + cfg.worker.max_in_flight)
        assert summary["collected_steps"] >= 1800
        assert summary["worker_restarts"] >= len(lost_workers)
        [loss] = summary["node_losses"]
        assert loss["node_id"] == victim.node_id and victim.node_id[:8] in loss["node"]
        assert loss["workers"] == lost_workers
        assert victim.node_id not in summary["placement"]["workers"]
        # Nothing stored before is lost; the learner's replay only grew (capacity 5000 > the budget).
        store = SnapshotStore(uri)
        for version, env_steps in before.items():
            assert store.manifest(version).env_steps == env_steps and store.verify(version) == []
        final = store.get("latest")
        assert final.manifest.version == summary["final_snapshot"]
        header = json.loads(store.read_file(final.manifest.version, "replay/header.json"))
        assert header["counters"]["steps_added"] == summary["env_steps"] >= replay_before


def fleet_train(tmp_path: Path, address: str, store: str) -> subprocess.Popen:
    """`fleet train ... --resume auto` as a user runs it; the very same command each time."""
    args = [sys.executable, "-m", "cluster.cli", "train", "--quiet", "--name", "spot", "--store", store,
            "--workers", "2", "--steps", "1600", "--resume", "auto",
            "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", f"run.ray_address={address}",
            "--set", "run.learner_resource=learner", "--set", "run.max_ahead_steps=200"]
    args += [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_losing_the_learners_node_fails_in_one_line_and_resume_auto_continues_from_the_latest_snapshot(
        tmp_path, monkeypatch):
    """The learner (and the replay) pinned by a `learner` resource to a node other than the head, which
    holds the GCS, the job server and the driver; the workers on the head."""
    with local_cluster(monkeypatch, dict(num_cpus=3), dict(num_cpus=1, resources={"learner": 1})) \
            as (cluster, nodes):
        store = str(tmp_path / "store")
        first = fleet_train(tmp_path, cluster.address, store)
        try:
            wait_for(lambda: len(versions(store)) >= 3 or first.poll() is not None, 300, "snapshots of the run")
            assert first.poll() is None, first.communicate()[1][-3000:]
            cluster.remove_node(nodes[1], allow_graceful=False)
            lost_at = time.monotonic()
            out, err = first.communicate(timeout=240)
        finally:
            first.kill()
        failed_s = time.monotonic() - lost_at
        lines = err.strip().splitlines()
        assert first.returncode == 1, err[-3000:]
        assert "Traceback" not in err and lines, err[-3000:]
        assert lines[-1].startswith("fleet: error: the learner's node") and "--resume auto" in lines[-1], lines[-1]
        assert sum("fleet: error" in line for line in lines) == 1  # above it only Ray's own log lines
        assert nodes[1].node_id[:8] in lines[-1]
        assert "no snapshot" in out  # the first run of `--resume auto` said it started from scratch
        dead = json.loads((tmp_path / "runs" / "spot" / "summary.json").read_text())
        assert dead["error"].startswith("the learner's node") and dead["node_losses"][0]["node_id"] == nodes[1].node_id
        latest = SnapshotStore(store).manifest("latest")

        cluster.add_node(num_cpus=1, resources={"learner": 1})  # a new machine for the learner
        second = fleet_train(tmp_path, cluster.address, store)
        try:
            out2, err2 = second.communicate(timeout=400)
        finally:
            second.kill()
        assert second.returncode == 0, err2[-3000:]
        assert f"continuing from {store}@{latest.version}" in out2
        summary = json.loads((tmp_path / "runs" / "spot" / "summary.json").read_text())
    lost = dead["env_steps"] - latest.env_steps
    print(f"\nlearner node lost: the run stopped {failed_s:.1f} s later; {lost} env steps lost "
          f"(last progress {dead['env_steps']}, resumed from {latest.version} at {latest.env_steps})")
    assert summary["resumed_from"] == f"{store}@{latest.version}"
    # At most one snapshot interval of env steps (snapshot_every updates at the replay ratio), plus what the
    # workers may run ahead of the ratio (run.max_ahead_steps, and one collect call each past it).
    interval = SMALL["learner.snapshot_every"] / SMALL["learner.replay_ratio"]
    assert 0 <= lost <= interval + 200 + 2 * SMALL["run.collect_steps"], lost
    # Counters and the update schedule continue: the updates an uninterrupted run owes at these steps.
    assert summary["env_steps"] >= 1600
    owed = int(SMALL["learner.replay_ratio"] * (summary["env_steps"] - SMALL["learner.learning_starts"] + 1))
    assert abs(summary["learner_updates"] - owed) <= 1, (summary["learner_updates"], owed)
    final = SnapshotStore(store).manifest("latest")
    assert (final.env_steps, final.learner_updates) == (summary["env_steps"], summary["learner_updates"])
