"""The env factory: builds the configured simulator for one worker from a seed. Plain data (no live
objects), so it travels to Ray actors; a CARLA factory's live part, its server session, is created in the
process that calls it (`rollout_workers.carla.session`). The runtime makes one from a run's config
(`cluster.runtime.envs.make_factory`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from learner.common.errors import ConfigError
from learner.common.interfaces import MakeEnv
from rollout_workers.carla.server import ServerConfig


@dataclass(frozen=True)
class EnvFactory:
    """Builds the configured simulator for one worker; `worker_index` picks its CARLA server."""

    kind: str
    config: Any
    worker_index: int = 0
    server: ServerConfig | None = None
    """CARLA only: how the worker's server is launched (when CARLA_HOSTS is unset) and supervised."""
    session: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False, repr=False)
    """CARLA only: names this factory's server in the process that uses it (copies share it)."""

    def __call__(self, seed: int) -> gym.Env:
        if self.kind == "embedded":
            from rollout_workers.envs.embedded import make_env

            return make_env(self.config, seed=seed)
        if self.kind == "carla":
            from rollout_workers.carla.session import carla_env

            return carla_env(self.config, self.server or ServerConfig(), self.worker_index, seed, self.session)
        return import_factory(self.kind)(seed)


def import_factory(spec: str) -> MakeEnv:
    """`package.module:function`, a callable seed -> gymnasium.Env obeying the contract."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"env {spec!r}: use 'embedded', 'carla' or 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"env {spec!r}: cannot import {attr} from {module}: {exc}") from exc
