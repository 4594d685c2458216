"""Exploration: the warm-up action distribution and the Gaussian noise schedule.

Uniform warm-up actions average zero throttle_brake, so the car barely moves and the
replay fills with a standing car. Most warm-up steps here draw throttle_brake from
U(low, high) with a positive mean (default U(-0.2, 1): mean 0.4) and steer gently, so
warm-up episodes drive forward and reach curves, traffic and the road's edge.

A fraction of warm-up steps (`warmup_uniform_prob`) can be drawn from the whole action
box instead. Without them the replay holds no steer beyond +-0.3 and no brake beyond
-0.2, and early in training the critic's Q is linear in steer over [-1, 1]; the actor
follows that slope to full lock, leaves the road, and with fast value propagation the
critic then learns that moving ends in a crash and the actor brakes to a standstill.
Covering the box did not stop that slide on its own (the actor follows the critic's
early, nearly flat slope wherever it points), so it is off by default; see
docs/benchmarks.md, "Faster value propagation, and why it made the agent stand still again".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExplorationConfig:
    warmup_steer_scale: float = 0.3
    """Warm-up steer ~ U(-scale, scale) on the gentle steps; full-lock random steering at every step
    leaves the lane within a second."""
    warmup_uniform_prob: float = 0.0
    """Fraction of warm-up steps drawn uniformly from the whole action box [-1, 1]^2, so that the
    critic has seen every action the actor can take. Off by default: on its own it did not stop the
    actor's slide to full lock (see the module docstring)."""
    warmup_throttle_low: float = -0.2
    """Warm-up throttle_brake ~ U(low, high); keep the mean positive so the car moves."""
    warmup_throttle_high: float = 1.0
    """Upper end of the warm-up throttle_brake range."""
    noise_std_initial: float = 0.3
    """Std of the Gaussian noise added to the policy's actions when learning starts."""
    noise_std_final: float = 0.1
    """Std of the exploration noise after the decay."""
    noise_decay_steps: int = 200_000
    """Env steps (per worker) over which the std decays linearly from initial to final."""
    noise_scale: tuple[float, float] = (1 / 3, 1.0)
    """Per-action multiplier of the noise std (steer, throttle_brake). Steer noise accumulates into
    heading and lateral drift: at std 0.3 even the scripted driver leaves the road in every episode
    (route completion 0.32), at 0.1 it completes every route (docs/benchmarks.md, Exploration)."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.warmup_throttle_low <= self.warmup_throttle_high <= 1.0:
            raise ValueError(
                "need -1 <= warmup_throttle_low <= warmup_throttle_high <= 1, got "
                f"({self.warmup_throttle_low}, {self.warmup_throttle_high})"
            )
        if not 0.0 <= self.warmup_steer_scale <= 1.0:
            raise ValueError(f"warmup_steer_scale must be in [0, 1], got {self.warmup_steer_scale}")
        if not 0.0 <= self.warmup_uniform_prob <= 1.0:
            raise ValueError(f"warmup_uniform_prob must be in [0, 1], got {self.warmup_uniform_prob}")
        if self.noise_std_initial < 0 or self.noise_std_final < 0 or self.noise_decay_steps < 0:
            raise ValueError("noise stds and noise_decay_steps must be >= 0")
        if len(self.noise_scale) != 2 or min(self.noise_scale) < 0:
            raise ValueError(f"noise_scale must be two factors >= 0 (steer, throttle_brake), got {self.noise_scale}")

    @property
    def warmup_throttle_mean(self) -> float:
        """Mean warm-up throttle_brake (the uniform steps average 0)."""
        gentle = (self.warmup_throttle_low + self.warmup_throttle_high) / 2
        return (1.0 - self.warmup_uniform_prob) * gentle


def warmup_action(rng: np.random.Generator, cfg: ExplorationConfig) -> np.ndarray:
    """A random warm-up action (steer, throttle_brake), float32 (2,) in [-1, 1]: from the whole box with
    probability warmup_uniform_prob, else gentle steer and throttle-biased."""
    if cfg.warmup_uniform_prob > 0.0 and rng.random() < cfg.warmup_uniform_prob:  # no draw when off: same stream
        return rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    steer = rng.uniform(-cfg.warmup_steer_scale, cfg.warmup_steer_scale)
    throttle = rng.uniform(cfg.warmup_throttle_low, cfg.warmup_throttle_high)
    return np.array([steer, throttle], dtype=np.float32)


def noise_std(cfg: ExplorationConfig, env_step: int) -> np.ndarray:
    """Exploration noise std per action (steer, throttle_brake) at `env_step`: the schedule, linear from
    initial to final over noise_decay_steps, times noise_scale."""
    if cfg.noise_decay_steps <= 0:
        std = float(cfg.noise_std_final)
    else:
        frac = min(max(env_step, 0) / cfg.noise_decay_steps, 1.0)
        std = cfg.noise_std_initial + frac * (cfg.noise_std_final - cfg.noise_std_initial)
    return (std * np.asarray(cfg.noise_scale, dtype=np.float64)).astype(np.float32)
