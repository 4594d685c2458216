"""A scripted lane-following driver (the "expert" reference return) and a generic episode runner.

`ScriptedDriver` reads only the contract's vector (speed and route waypoints in
the ego frame), so it drives any contract environment, CARLA included, given the
vector's scales: pure pursuit toward a waypoint a few metres ahead for steering,
a proportional speed controller for throttle and brake. It has no perception of
other vehicles; learning benchmarks compare an agent's return against it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)

Observation = Mapping[str, np.ndarray]
PolicyFn = Callable[[Observation], np.ndarray]
"""A policy as the runner sees it: contract observation -> action (2,)."""

SATURATED = 0.99
"""|action| from which an episode's step counts as pinned at the action box's edge."""


@dataclass(frozen=True)
class DriverConfig:
    target_speed: float = 8.0
    """Speed to hold, m/s."""
    speed_scale: float = 20.0
    """m/s per unit of vector[0] (the embedded simulator's max_speed)."""
    waypoint_scale: float = 20.0
    """Metres per unit of a waypoint coordinate (embedded: waypoints * waypoint_spacing_m)."""
    lookahead_m: float = 5.0
    """Minimum pure-pursuit lookahead, m."""
    lookahead_s: float = 0.5
    """Lookahead grows by this many seconds of travel at the current speed."""
    wheelbase_m: float = 5.0
    """Effective wheelbase of the steering model (highway-env's kinematic car: its length, 5 m)."""
    max_steering: float = math.pi / 4
    """Wheel angle at steer = 1, rad."""
    speed_gain: float = 0.5
    """Throttle (or brake) per m/s of speed error."""


class ScriptedDriver:
    """Pure-pursuit lane follower working from the contract vector only."""

    def __init__(self, cfg: DriverConfig | None = None) -> None:
        self.cfg = cfg or DriverConfig()

    @classmethod
    def for_env(cls, env_cfg: Any = None, **overrides: Any) -> ScriptedDriver:
        """A driver matched to an `EmbeddedEnvConfig` (its scales and target speed)."""
        from rollout_workers.envs.embedded import EmbeddedEnvConfig

        env_cfg = env_cfg or EmbeddedEnvConfig()
        params = dict(
            target_speed=env_cfg.reward.target_speed,
            speed_scale=env_cfg.max_speed,
            waypoint_scale=env_cfg.waypoint_spacing_m * env_cfg.waypoints,
            max_steering=env_cfg.max_steering,
        )
        params.update(overrides)
        return cls(DriverConfig(**params))

    def act(self, obs: Observation | np.ndarray) -> np.ndarray:
        """Action (steer, throttle_brake) float32 (2,) from an observation dict or its vector."""
        cfg = self.cfg
        vec = np.asarray(obs["vector"] if isinstance(obs, Mapping) else obs, dtype=np.float64)
        speed = float(vec[0]) * cfg.speed_scale
        wps = vec[3:].reshape(-1, 2) * cfg.waypoint_scale
        dist = np.hypot(wps[:, 0], wps[:, 1])
        lookahead = cfg.lookahead_m + cfg.lookahead_s * max(speed, 0.0)
        k = int(np.argmax(dist >= lookahead)) if (dist >= lookahead).any() else len(wps) - 1
        x, y = wps[k]
        # Pure pursuit: the arc through the target point has curvature 2 sin(alpha) / distance;
        # y is to the right and steer > 0 turns right, so no sign flip.
        alpha = math.atan2(y, x)
        curvature = 2.0 * math.sin(alpha) / max(float(dist[k]), 1e-3)
        steer = math.atan(curvature * cfg.wheelbase_m) / cfg.max_steering
        throttle = cfg.speed_gain * (cfg.target_speed - speed)
        return np.clip(np.array([steer, throttle], dtype=np.float32), -1.0, 1.0)

    __call__ = act


def run_episodes(
    env_factory: Callable[[int], gym.Env],
    policy: PolicyFn | ScriptedDriver,
    seeds: Iterable[int],
    max_steps: int = 100_000,
) -> list[dict[str, float]]:
    """One episode per seed (env built by `env_factory(seed)`, reset with that seed), then closed.

    `policy` maps a contract observation to an action (for a learner `Policy`:
    `lambda obs: policy.act(obs["image"], obs["vector"])`). Per episode: seed, return,
    steps, route_completion, collision, off_road, distance_m, mean_speed, the keys
    `rollout_workers.evaluation.summarize` reads, and what the policy did (mean_abs_steer, mean_throttle,
    steer_saturated, throttle_saturated). `max_steps` guards against an env
    that never ends its episodes.
    """
    act = policy.act if isinstance(policy, ScriptedDriver) else policy
    results = []
    for seed in seeds:
        env = env_factory(int(seed))
        try:
            results.append(_episode(env, act, int(seed), max_steps))
        finally:
            env.close()
    return results


def _episode(env: gym.Env, act: PolicyFn, seed: int, max_steps: int) -> dict[str, float]:
    obs, info = env.reset(seed=seed)
    total, steps, speed_sum = 0.0, 0, 0.0
    actions = np.zeros(2)  # sums of |steer| and throttle_brake
    pinned = np.zeros(2)  # steps with |steer|, |throttle_brake| at the box's edge
    done = False
    while not done:
        action = act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        a = np.asarray(action, dtype=np.float64).reshape(-1)[:2]
        actions += (abs(a[0]), a[1])
        pinned += np.abs(a) >= SATURATED
        total += float(reward)
        steps += 1
        speed_sum += float(info.get("speed", 0.0))
        done = bool(terminated or truncated)
        if steps >= max_steps and not done:
            raise RuntimeError(f"episode with seed {seed} did not end within {max_steps} steps")
    n = max(steps, 1)
    result = {
        "seed": float(seed), "return": total, "steps": float(steps),
        "route_completion": float(info["route_completion"]), "collision": float(info["collision"]),
        "off_road": float(info["off_road"]), "distance_m": float(info["distance_m"]),
        "mean_speed": speed_sum / n,
        # What the policy did, to tell a policy pinned at the action box's edge (a saturated tanh) from one
        # that drives: mean |steer|, mean throttle_brake (< 0 brakes) and the share of steps at |a| >= 0.99.
        "mean_abs_steer": float(actions[0]) / n, "mean_throttle": float(actions[1]) / n,
        "steer_saturated": float(pinned[0]) / n, "throttle_saturated": float(pinned[1]) / n,
    }
    log.debug("episode seed %d: %s", seed, result)
    return result
