"""Integration against real CARLA servers; skipped without them.

Attached servers: CARLA_HOSTS=127.0.0.1:2000 pytest -m carla tests/test_carla_live.py
Launched servers: CARLA_ROOT=/opt/carla pytest -m carla tests/test_carla_live.py (each test starts its own)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rollout_workers.carla.env import CarlaEnvConfig, make_carla_env
from rollout_workers.carla.server import (
    CarlaServer,
    ServerConfig,
    group_members,
    parse_carla_hosts,
    release_carla_hosts,
    server_for_worker,
)
from rollout_workers.contract import check_observation, check_step

HOSTS = parse_carla_hosts(os.environ.get("CARLA_HOSTS", ""))
EXE = os.path.join(os.environ["CARLA_ROOT"], "CarlaUE4.sh") if os.environ.get("CARLA_ROOT") else ""

pytestmark = pytest.mark.carla
needs_hosts = pytest.mark.skipif(not HOSTS, reason="no live CARLA server: set CARLA_HOSTS=host:port[,host:port...]")
needs_root = pytest.mark.skipif(not (EXE and os.path.isfile(EXE)),
                                reason="no CARLA installation to launch: set CARLA_ROOT (the folder of CarlaUE4.sh)")


def _drive(endpoint: object, seed: int) -> float:
    """A reset, up to 20 half-throttle steps under the contract, a second reset; the distance driven."""
    env = make_carla_env(CarlaEnvConfig(timeout_s=20.0, max_episode_steps=50), seed=seed, server=endpoint)
    try:
        obs, info = env.reset()
        check_observation(obs)
        for _ in range(20):
            step = env.step(np.array([0.0, 0.5], np.float32))
            check_step(step)
            if step[2] or step[3]:
                break
        obs, _ = env.reset()  # a second episode on the same connection and town
        check_observation(obs)
        return float(step[4]["distance_m"])
    finally:
        env.close()


@needs_hosts
@pytest.mark.parametrize("worker", range(len(HOSTS)) if HOSTS else [0])
def test_a_few_steps_on_each_server_obey_the_contract(worker: int) -> None:
    pytest.importorskip("carla", reason="the carla client wheel is not installed")
    server = server_for_worker(worker)
    endpoint = server.start()  # attached: only checks that it answers
    try:
        assert _drive(endpoint, worker) > 0.0  # half throttle for a second moves the car
    finally:
        server.stop()
        release_carla_hosts()  # the `fleet train` test below claims the first server again


@needs_hosts
def test_fleet_train_on_carla_hosts(tmp_path: Path) -> None:
    """A short `fleet train --env carla --local` on the first server of CARLA_HOSTS, which it must not touch."""
    pytest.importorskip("carla", reason="the carla client wheel is not installed")
    fleet = str(Path(sys.executable).parent / "fleet")
    args = [fleet, "train", "--env", "carla", "--local", "--workers", "1", "--steps", "300", "--name", "live",
            "--quiet", "--store", str(tmp_path / "store"), "--set", f"run.runs_dir={tmp_path / 'runs'}",
            "--set", "learner.learning_starts=200", "--set", "learner.replay_ratio=0.25",
            "--set", "eval.every_updates=0",
            "--set", "agent.batch_size=16", "--set", "carla.max_episode_steps=60", "--set", "carla.timeout_s=20"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, CARLA_HOSTS=f"{HOSTS[0].host}:{HOSTS[0].port}"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "live" / "summary.json").read_text())
    assert summary["env_steps"] >= 300 and summary["episodes"] >= 4 and summary["learner_updates"] > 0
    assert summary["env_failures"] == 0, done.stderr[-3000:]
    attached = CarlaServer.attach(HOSTS[0].host, HOSTS[0].port)
    assert attached.healthy()  # still running: attached servers are never stopped


@needs_root
def test_launched_server_restart_and_stop(tmp_path: Path) -> None:
    pytest.importorskip("carla", reason="the carla client wheel is not installed")
    cfg = ServerConfig(executable=EXE, lock_dir=str(tmp_path / "locks"), log_dir=str(tmp_path / "logs"),
                       startup_timeout_s=300.0, probe_timeout_s=10.0, kill_grace_s=20.0)
    server = CarlaServer(cfg)
    try:
        assert _drive(server.start(), 0) > 0.0
        first = server.pid
        assert first is not None and len(group_members(first)) >= 2  # the server and its watchdog at least
        endpoint = server.restart("live test")
        assert server.pid != first and not group_members(first)
        assert _drive(endpoint, 1) > 0.0
    finally:
        last = server.pid
        server.stop()
    deadline = time.monotonic() + 30
    while last is not None and group_members(last) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert last is None or group_members(last) == []
