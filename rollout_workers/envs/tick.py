"""A stand-in for a remote simulator: a fixed wall-clock tick, almost no compute here.

A CARLA server in synchronous mode with cameras answers at about 10 Hz, and the rollout
worker's process spends that time waiting, not computing. `TickEnv` reproduces that shape
for `fleet bench scale`: each step returns once the next tick has come (sleeping the
rest), with a fresh frame from a small pool of noise frames, so the measured cost is the
worker's own (policy inference, chunking, sending), as on a cluster where the simulator
runs on its own GPU. It obeys the observation contract; its reward and episode ends are
arbitrary (200-step episodes by default).

`run.env: rollout_workers.envs.tick:make` reads the tick in milliseconds from
$FLEET_TICK_MS (default 100).
"""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np

from rollout_workers import contract

EPISODE_STEPS = 200
POOL = 32


class TickEnv(gym.Env):
    def __init__(self, seed: int = 0, tick_s: float = 0.1, episode_steps: int = EPISODE_STEPS) -> None:
        self.observation_space = contract.observation_space()
        self.action_space = contract.action_space()
        self.tick_s = tick_s
        self.episode_steps = episode_steps
        rng = np.random.default_rng(seed)
        self._pool = rng.integers(0, 256, (POOL, 84, 84), dtype=np.uint8)
        self._vectors = np.clip(rng.normal(0, 0.3, (POOL, contract.vector_dim())), -1, 1).astype(np.float32)
        self._t = 0
        self._n = 0
        self._next = 0.0
        self._frames = np.zeros((4, 84, 84), dtype=np.uint8)

    def _frame(self) -> np.ndarray:
        self._n += 1
        frame = self._pool[self._n % POOL].copy()
        frame[0, :8] = np.frombuffer(self._n.to_bytes(8, "little"), dtype=np.uint8)  # every frame distinct
        return frame

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self._frames.copy(), "vector": self._vectors[self._n % POOL].copy()}

    def _wait_tick(self) -> None:
        now = time.monotonic()
        if self._next <= now:  # late (or the first step): the tick restarts from now
            self._next = now + self.tick_s
        else:
            time.sleep(self._next - now)
            self._next += self.tick_s

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._wait_tick()
        self._t = 0
        self._frames = np.repeat(self._frame()[None], 4, axis=0)
        return self._obs(), {}

    def step(self, action):
        self._wait_tick()
        self._t += 1
        self._frames = np.concatenate([self._frames[1:], self._frame()[None]])
        truncated = self._t >= self.episode_steps
        info = {"route_completion": self._t / self.episode_steps, "collision": False, "off_road": False,
                "distance_m": float(self._t), "speed": 1.0}
        return self._obs(), 0.0, False, truncated, info


def make(seed: int) -> TickEnv:
    return TickEnv(seed, tick_s=float(os.environ.get("FLEET_TICK_MS", "100")) / 1000.0)
