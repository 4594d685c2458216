"""`fleet train --env carla` on a local Ray cluster: each worker actor launches and supervises its own (fake)
CARLA server, and no server outlives its actor. Fake server processes (tests/fake_carla_server.py) reached
through the carla API double; no live CARLA server is involved."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

from cluster.runtime import experiment
from cluster.runtime.training import train
from tests.procs import alive

REPO = Path(__file__).resolve().parents[1]
FAKE = str(Path(__file__).with_name("fake_carla_server.py"))


@pytest.mark.integration
def test_ray_run_launches_one_server_per_worker_and_leaves_none(tmp_path: Path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("CARLA_HOSTS", raising=False)
    port_base = random.randrange(20000, 32000, 10)
    cfg = experiment.load(None, {
        "run.name": "carla-ray", "run.runs_dir": str(tmp_path / "runs"), "run.env": "carla", "run.workers": 2,
        "run.total_env_steps": 160, "run.collect_steps": 40, "run.store": str(tmp_path / "store"),
        "run.progress_every_s": 1.0, "agent.batch_size": 16, "learner.learning_starts": 100,
        "learner.replay_ratio": 0.25, "learner.snapshot_every": 1000, "replay.capacity": 2000,
        "eval.every_updates": 0,
        "carla": {"timeout_s": 2.0, "sensor_timeout_s": 2.0, "route_length_m": 40.0, "max_episode_steps": 12,
                  "warmup_ticks": 0},
        "carla_server": {
            # --child: like CarlaUE4.sh, whose server binary is its child.
            "command": [sys.executable, FAKE, "--port", "{rpc}", "--pid-file", str(tmp_path / "pids"),
                        "--lifetime", "300", "--child"],
            "client": "tests.fake_carla:SERVER_BACKED", "port_base": port_base,
            "lock_dir": str(tmp_path / "locks"), "log_dir": str(tmp_path / "logs"), "startup_timeout_s": 60.0,
            "probe_timeout_s": 2.0, "probe_interval_s": 0.05, "kill_grace_s": 0.5,
            # Longer than the run's shutdown: the servers must go because their actors are killed.
            "idle_stop_s": 600.0}})
    # Like a CARLA node: the workers take one `carla` unit each (run.worker_resource: auto).
    ray.init(num_cpus=4, resources={"carla": 2}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        summary = train(cfg, quiet=True)
    finally:
        ray.shutdown()
    assert summary["env_steps"] >= 160 and summary["env_failures"] == 0 and summary["episodes"] >= 10
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == [f"carla-{port_base}.log", f"carla-{port_base + 10}.log"]  # one block per worker
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 4  # two servers, each with its child
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []
    # Ray kills a dead worker's children (the servers) but not theirs: the watchdogs stopped those.
    for name in logs:
        assert "is gone; stopping the server" in (tmp_path / "logs" / name).read_text()
