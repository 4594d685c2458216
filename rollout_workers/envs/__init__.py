"""Environments obeying the contract: the embedded simulator (default) and the CARLA adapter.

Importing this package is cheap (no highway-env, no Ray); it registers the
gymnasium id `carla-fleet/Embedded-v0` (idempotent). `register_ray_envs()` adds
the same env to Ray's registry under the same name, for RLlib and Tune.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from learner.common.errors import ConfigError

EMBEDDED_ID = "carla-fleet/Embedded-v0"


def register_gym_envs() -> None:
    """Register `carla-fleet/Embedded-v0` with gymnasium; calling it again is harmless."""
    if EMBEDDED_ID not in gym.registry:
        # No max_episode_steps: the env truncates itself (EmbeddedEnvConfig.max_episode_steps),
        # and a second TimeLimit would disagree with it when the config changes.
        gym.register(EMBEDDED_ID, entry_point="rollout_workers.envs.embedded:make_env")


def embedded_from_env_config(env_config: Mapping[str, Any] | None) -> gym.Env:
    """Build the embedded env from an RLlib-style config dict.

    Keys are `EmbeddedEnvConfig` fields (`reward` may be a dict of `RewardConfig`
    fields), plus `seed`; RLlib's own `num_envs` is ignored. An unknown key is an
    error naming it. The seed is offset by RLlib's worker and vector index, so
    parallel copies differ.
    """
    from rollout_workers.envs.embedded import EmbeddedEnvConfig, make_env
    from rollout_workers.reward import RewardConfig

    data = dict(env_config or {})
    seed = data.pop("seed", None)
    data.pop("num_envs", None)
    names = {f.name for f in dataclasses.fields(EmbeddedEnvConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown embedded env key(s) {unknown}; valid: {sorted(names)}")
    if isinstance(data.get("reward"), Mapping):
        data["reward"] = RewardConfig(**data["reward"])
    for key in ("traffic_speed", "ego_lane_traffic_speed", "layouts"):
        if key in data:
            data[key] = tuple(data[key])
    if seed is not None:
        seed = int(seed) + 1000 * getattr(env_config, "worker_index", 0) + getattr(env_config, "vector_index", 0)
    return make_env(EmbeddedEnvConfig(**data), seed=seed)


def register_ray_envs() -> None:
    """Register `carla-fleet/Embedded-v0` in Ray's env registry (imports Ray only now)."""
    from ray.tune.registry import register_env

    register_env(EMBEDDED_ID, embedded_from_env_config)


register_gym_envs()
