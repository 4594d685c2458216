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


def test_a_worker_sends_full_chunks_and_a_chunk_whose_first_step_is_too_old(monkeypatch) -> None:
    """Chunks of 256 steps cost the central path a third of what 64-step ones do per step; at a simulator's
    10-20 Hz a chunk that waited to be full would keep its steps from the learner 13-26 s."""
    from learner.networks import NetworkConfig
    from rollout_workers import worker as worker_module
    from rollout_workers.exploration import ExplorationConfig
    from rollout_workers.worker import RolloutWorker, WorkerConfig

    now = [100.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])

    class Clocked(TickEnv):  # each step takes 1/8 s of the test's clock (exact in binary): an 8 Hz simulator
        def step(self, action):  # type: ignore[no-untyped-def]
            now[0] += 0.125
            return super().step(action)

    sent: list[int] = []
    worker = RolloutWorker(0, lambda seed: Clocked(seed, tick_s=0.0, episode_steps=10**6), NetworkConfig(),
                           ExplorationConfig(), WorkerConfig(chunk_steps=256, chunk_max_age_s=5.0), seed=0)
    worker.collect(120, lambda chunk: sent.append(len(chunk)))
    # A chunk's first step at t, the step at t + 5 s sends it: 41 steps each.
    assert sent == [41, 41]
    assert not worker.flush_if_aged(lambda chunk: sent.append(len(chunk)))  # 38 steps, 4.625 s old
    now[0] += 0.5
    assert worker.flush_if_aged(lambda chunk: sent.append(len(chunk))) and sent[-1] == 38

    fast: list[int] = []  # no clock advance: only full chunks go
    monkeypatch.setattr(Clocked, "step", TickEnv.step)
    worker.collect(600, lambda chunk: fast.append(len(chunk)))
    assert fast == [256, 256]


def test_a_worker_at_a_simulators_pace_asks_for_weights_by_time_and_takes_an_answer_the_step_it_is_ready() -> None:
    """At 10 Hz, asking every 100 env steps and taking the answer at the next ask left new weights 10-20 s
    from the workers. Now: an ask at least every `weight_sync_s`, and an ask in flight looked at every step."""
    import time

    from learner.networks import NetworkConfig
    from rollout_workers.exploration import ExplorationConfig
    from rollout_workers.worker import RolloutWorker, WorkerConfig

    class Poll:  # an ask answered two looks after it is sent, as a remote call is a moment later
        def __init__(self) -> None:
            self.asks: list[float] = []  # when each ask was sent
            self.looks = 0

        @property
        def in_flight(self) -> bool:
            return self.looks > 0

        def __call__(self, version: int):
            if self.looks == 0:
                self.asks.append(time.monotonic())
                self.looks = 2
                return None
            self.looks -= 1
            return None if self.looks else (version, {})  # same version: nothing to load

    poll = Poll()
    worker = RolloutWorker(0, lambda seed: TickEnv(seed, tick_s=0.05), NetworkConfig(), ExplorationConfig(),
                           WorkerConfig(weight_sync_every=100, weight_sync_s=0.5), seed=0)
    worker.set_weights = lambda weights: taken.append(worker.total_steps)  # type: ignore[method-assign]
    taken: list[int] = []
    start = time.monotonic()
    report = worker.collect(40, lambda chunk: None, poll)  # 2 s at 20 Hz: 40 steps, far fewer than 100
    elapsed = time.monotonic() - start
    assert report.env_steps == 40
    # One ask at the first step, then one every ~0.5 s (each ask's two looks take two steps, 0.1 s).
    assert len(poll.asks) >= int(elapsed / 0.65), (poll.asks, elapsed)
    gaps = [b - a for a, b in zip(poll.asks, poll.asks[1:])]
    assert gaps and max(gaps) < 1.0, gaps
    # Each answer taken two steps after its ask: the ask's step, and the two looks on the next steps.
    assert taken and all(b - a >= 2 for a, b in zip(taken, taken[1:]))
    assert len(taken) == len(poll.asks) or len(taken) == len(poll.asks) - 1
