"""A tiny, fast environment that obeys the contract, and a flaky variant that raises at random steps.

Used by runtime tests through `run.env: tests.env_double:make` (or `:make_flaky`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rollout_workers import contract


class TinyDrive(gym.Env):
    """Reward 1 - |steer| per step; 40-step episodes, truncated; frames are seeded noise."""

    def __init__(self, seed: int = 0, fail_prob: float = 0.0, episode_steps: int = 40) -> None:
        self.observation_space = contract.observation_space()
        self.action_space = contract.action_space()
        self.fail_prob = fail_prob
        self.episode_steps = episode_steps
        self._rng = np.random.default_rng(seed)
        self._fail_rng = np.random.default_rng(seed + 1)
        self._t = 0
        self._frames: np.ndarray | None = None

    def _frame(self) -> np.ndarray:
        return self._rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)

    def _obs(self) -> dict[str, np.ndarray]:
        vec = np.clip(self._rng.normal(0, 0.3, contract.vector_dim()), -1, 1).astype(np.float32)
        return {"image": self._frames.copy(), "vector": vec}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._frames = np.repeat(self._frame(), 4, axis=0)
        return self._obs(), {}

    def step(self, action):
        if self.fail_prob and self._fail_rng.random() < self.fail_prob:
            raise RuntimeError("simulated simulator crash")
        self._t += 1
        self._frames = np.concatenate([self._frames[1:], self._frame()])
        reward = float(1.0 - abs(float(action[0])))
        truncated = self._t >= self.episode_steps
        info = {"route_completion": self._t / self.episode_steps, "collision": False, "off_road": False,
                "distance_m": float(self._t), "speed": 1.0}
        return self._obs(), reward, False, truncated, info


def make(seed: int) -> TinyDrive:
    return TinyDrive(seed)


def make_flaky(seed: int) -> TinyDrive:
    return TinyDrive(seed, fail_prob=0.02)
