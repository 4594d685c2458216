"""The fixed-tick stand-in for a remote simulator (`fleet bench scale`): it obeys the contract, its
frames are all distinct (chunks carry fresh frames), and a worker's chunks of it reach the memory whole."""

from __future__ import annotations

import numpy as np

from rollout_workers import contract
from rollout_workers.envs.tick import EPISODE_STEPS, TickEnv


def test_tick_env_obeys_the_contract_and_every_frame_is_new() -> None:
    env = TickEnv(seed=3, tick_s=0.0)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    seen = {obs["image"][-1].tobytes()}
    for t in range(1, EPISODE_STEPS + 1):
        obs, reward, terminated, truncated, info = env.step(np.zeros(contract.action_space().shape, np.float32))
        assert env.observation_space.contains(obs)
        seen.add(obs["image"][-1].tobytes())
        assert truncated == (t == EPISODE_STEPS) and not terminated
    assert len(seen) == EPISODE_STEPS + 1  # a pool of 32 noise frames, each stamped with its own counter


def test_a_worker_on_the_tick_env_fills_the_memory_with_every_step() -> None:
    from learner.networks import NetworkConfig
    from learner.replay.memory import ReplayConfig, ReplayMemory
    from rollout_workers.exploration import ExplorationConfig
    from rollout_workers.worker import RolloutWorker, WorkerConfig

    memory = ReplayMemory(ReplayConfig(capacity=5_000), NetworkConfig().vector_dim, gamma=0.95)
    worker = RolloutWorker(0, lambda seed: TickEnv(seed, tick_s=0.0), NetworkConfig(), ExplorationConfig(),
                           WorkerConfig(chunk_steps=64), seed=0)
    report = worker.collect(450, memory.add)
    worker.flush(memory.add)
    assert report.env_steps == 450 and len(memory) == 450
