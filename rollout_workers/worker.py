"""Rollout worker: env loop, exploration, chunked push, weight pull, failure recovery.

A plain class, made a Ray actor only at wiring (`cluster/runtime/ray_run.py`). Transport is
injected: `sink(chunk)` pushes a chunk (with backpressure under Ray) and
`weights()` polls for newer policy weights without blocking the env loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from learner.common.interfaces import ChunkSink, MakeEnv, Weights, WeightsPoll
from learner.networks import NetworkConfig, Policy
from learner.replay import ChunkBuilder
from rollout_workers.exploration import ExplorationConfig, noise_std, warmup_action

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    chunk_steps: int = 256
    """Env steps per chunk pushed to the replay, at most (`chunk_max_age_s` sends a chunk sooner). Each chunk
    costs the central path a fixed CPU price besides its steps' (a Ray call and an object transfer into the
    replay actor, another out to the learner): on the 2-core bench machine the ingest ceiling was 5,291
    env steps/s with 64-step chunks and 19,378 with 256 (docs/benchmarks.md, "The ceiling passes 10,000")."""
    chunk_max_age_s: float = 5.0
    """A chunk is sent once its first step is this many seconds old, full or not, also while the worker is
    held back: a simulator at 10-20 Hz would otherwise keep a 256-step chunk from the learner 13-26 s."""
    weight_sync_every: int = 100
    """Env steps between asks for newer weights (or `weight_sync_s`, whichever comes first)."""
    weight_sync_s: float = 1.0
    """Seconds between asks for newer weights: at a simulator's 10 Hz, 100 steps are 10 s. An ask in flight
    is looked at every step, so its answer is taken as soon as it is there."""
    max_in_flight: int = 4
    """Chunks a worker may have in flight to the replay actor before it waits (backpressure)."""
    max_consecutive_failures: int = 20
    """Env failures in a row (without one good episode) after which the worker gives up."""
    torch_threads: int = 1
    """Intra-op threads for acting; workers share cores with their simulators."""


@dataclass
class WorkerReport:
    """What one `collect` call did; episode metrics are per finished episode."""

    worker_id: int
    env_steps: int = 0
    episodes: list[dict[str, float]] = field(default_factory=list)
    env_failures: int = 0
    policy_version: int = 0
    steps_per_s: float = 0.0


class RolloutWorker:
    def __init__(
        self,
        worker_id: int,
        env_factory: MakeEnv,
        net_cfg: NetworkConfig,
        exploration: ExplorationConfig,
        cfg: WorkerConfig,
        seed: int = 0,
    ) -> None:
        torch.set_num_threads(cfg.torch_threads)
        self.worker_id = worker_id
        self.cfg = cfg
        self.exploration = exploration
        self.env_factory = env_factory
        self.policy = Policy(net_cfg)
        self.policy_version = 0
        self.rng = np.random.default_rng([seed, worker_id])
        self._seed_seq = np.random.SeedSequence([seed, worker_id])
        self.builder = ChunkBuilder(net_cfg.vector_dim, chunk_steps=cfg.chunk_steps)
        self.env: gym.Env | None = None
        self.obs: dict[str, np.ndarray] | None = None
        self.total_steps = 0
        self.total_failures = 0
        self._consecutive_failures = 0
        self._episode: dict[str, float] = {}
        self._asked_at: tuple[int, float] = (-1, 0.0)
        """(total_steps, monotonic time) of the last ask for newer weights."""
        self._chunk_started: float | None = None
        """Monotonic time of the first step in the chunk being built (None: no step in it yet)."""

    def _weights_due(self) -> bool:
        """Time to ask for newer weights: `weight_sync_every` steps or `weight_sync_s` seconds since the last
        ask, whichever comes first (and at the first step)."""
        steps, at = self._asked_at
        return (steps < 0 or self.total_steps - steps >= self.cfg.weight_sync_every
                or time.monotonic() - at >= self.cfg.weight_sync_s)

    def set_weights(self, weights: Weights) -> None:
        self.policy.load_components(weights.params)
        self.policy_version = weights.version

    def _new_env(self) -> None:
        if self.env is not None:
            self._close_env()
        episode_seed = int(self._seed_seq.spawn(1)[0].generate_state(1)[0])
        self.env = self.env_factory(episode_seed)

    def _close_env(self) -> None:
        try:
            self.env.close()  # type: ignore[union-attr]
        except Exception as exc:  # a dead simulator may fail to close; it is replaced anyway
            log.warning("worker %d: closing a failed env raised %r", self.worker_id, exc)
        self.env = None

    def _reset(self) -> None:
        if self.env is None:
            self._new_env()
        seed = int(self.rng.integers(2**31 - 1))
        self.obs, _ = self.env.reset(seed=seed)  # type: ignore[union-attr]
        self.builder.begin_episode(self.obs)
        self._episode = {"return": 0.0, "steps": 0}

    def _action(self) -> np.ndarray:
        if self.policy_version == 0:  # no learned policy yet: throttle-biased warm-up
            return warmup_action(self.rng, self.exploration)
        std = noise_std(self.exploration, self.total_steps)
        assert self.obs is not None  # collect resets the env first
        return self.policy.act(self.obs["image"], self.obs["vector"], std, self.rng)

    def collect(self, num_steps: int, sink: ChunkSink, weights: WeightsPoll | None = None) -> WorkerReport:
        """Run `num_steps` env steps, pushing full chunks to `sink`; survives env failures."""
        report = WorkerReport(self.worker_id)
        start = time.perf_counter()
        while report.env_steps < num_steps:
            if weights is not None and (getattr(weights, "in_flight", False) or self._weights_due()):
                self._asked_at = (self.total_steps, time.monotonic())
                newer = weights(self.policy_version)
                if newer is not None:
                    self.set_weights(newer)
            try:
                if self.obs is None:
                    self._reset()
                action = self._action()
                next_obs, reward, terminated, truncated, info = self.env.step(action)  # type: ignore[union-attr]
            except Exception as exc:  # any simulator failure costs one episode, not the run
                self._on_env_failure(exc, report)
                continue
            self.builder.add_step(action, float(reward), bool(terminated), bool(truncated), next_obs,
                                  self.policy_version)
            if self._chunk_started is None:
                self._chunk_started = time.monotonic()
            self._episode["return"] += float(reward)
            self._episode["steps"] += 1
            self.obs = next_obs
            self.total_steps += 1
            report.env_steps += 1
            if terminated or truncated:
                report.episodes.append(self._finish_episode(info))
                self.obs = None
            if self.builder.ready():
                self.flush(sink)
            else:
                self.flush_if_aged(sink)
        report.policy_version = self.policy_version
        report.steps_per_s = report.env_steps / max(time.perf_counter() - start, 1e-9)
        return report

    def flush(self, sink: ChunkSink) -> None:
        """Send the chunk being built, whatever its size."""
        chunk = self.builder.flush()
        self._chunk_started = None
        if chunk is not None:
            sink(chunk)

    def flush_if_aged(self, sink: ChunkSink) -> bool:
        """Send the chunk being built if its first step is `chunk_max_age_s` old; True if it was sent."""
        if self._chunk_started is None or time.monotonic() - self._chunk_started < self.cfg.chunk_max_age_s:
            return False
        self.flush(sink)
        return True

    def _finish_episode(self, info: dict[str, Any]) -> dict[str, float]:
        self._consecutive_failures = 0
        ep = dict(self._episode)
        for key in ("route_completion", "collision", "off_road", "distance_m", "speed"):
            ep[key] = float(info.get(key, 0.0))
        return ep

    def _on_env_failure(self, exc: Exception, report: WorkerReport) -> None:
        self.total_failures += 1
        self._consecutive_failures += 1
        report.env_failures += 1
        log.warning("worker %d: env failed (%s: %s); closing the episode as truncated and recreating it",
                    self.worker_id, type(exc).__name__, exc)
        # The episode's transitions so far stay valid (each has its real next obs); the builder
        # marks the episode's last step truncated so n-step sums and stacks stop there.
        self.builder.truncate_episode()
        self.obs = None
        if self.env is not None:  # None when the factory itself failed
            self._close_env()
        if self._consecutive_failures > self.cfg.max_consecutive_failures:
            raise RuntimeError(
                f"worker {self.worker_id}: {self._consecutive_failures} env failures in a row; last: {exc!r}"
            ) from exc

    def close(self) -> None:
        if self.env is not None:
            self._close_env()

    def stats(self) -> dict[str, int]:
        return {"worker_id": self.worker_id, "env_steps": self.total_steps,
                "env_failures": self.total_failures, "policy_version": self.policy_version}
