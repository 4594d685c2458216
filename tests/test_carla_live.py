"""Integration against real CARLA servers listed in CARLA_HOSTS (host:port,...); skipped without them.

Run: CARLA_HOSTS=127.0.0.1:2000 pytest -m carla tests/test_carla_live.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rollout_workers.carla_server import parse_carla_hosts, server_for_worker
from rollout_workers.contract import check_observation, check_step
from rollout_workers.envs.carla_env import CarlaEnvConfig, make_carla_env

HOSTS = parse_carla_hosts(os.environ.get("CARLA_HOSTS", ""))

pytestmark = [
    pytest.mark.carla,
    pytest.mark.skipif(not HOSTS, reason="no live CARLA server: set CARLA_HOSTS=host:port[,host:port...]"),
]


@pytest.mark.parametrize("worker", range(len(HOSTS)) if HOSTS else [0])
def test_a_few_steps_on_each_server_obey_the_contract(worker: int) -> None:
    pytest.importorskip("carla", reason="the carla client wheel is not installed")
    server = server_for_worker(worker)
    endpoint = server.start()  # attached: only checks that it answers
    env = make_carla_env(CarlaEnvConfig(timeout_s=20.0, max_episode_steps=50), seed=worker, server=endpoint)
    try:
        obs, info = env.reset()
        check_observation(obs)
        for _ in range(20):
            step = env.step(np.array([0.0, 0.5], np.float32))
            check_step(step)
            if step[2] or step[3]:
                break
        assert step[4]["distance_m"] > 0.0  # half throttle for a second moves the car
        obs, _ = env.reset()  # a second episode on the same connection and town
        check_observation(obs)
    finally:
        env.close()
        server.stop()
