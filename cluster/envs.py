"""Environment factories that travel to Ray actors (picklable, no live objects)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvFactory:
    """Builds the configured simulator for one worker; `worker_index` picks its CARLA server."""

    kind: str
    config: Any
    worker_index: int = 0

    def __call__(self, seed: int) -> gym.Env:
        if self.kind == "embedded":
            from rollout_workers.envs.embedded import make_env

            return make_env(self.config, seed=seed)
        if self.kind == "carla":
            from rollout_workers.envs.carla_env import make_carla_env

            return make_carla_env(self.config, seed=seed, server=carla_host(self.worker_index))
        return import_factory(self.kind)(seed)


def import_factory(spec: str) -> Any:
    """`package.module:function`, a callable seed -> gymnasium.Env obeying the contract."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"env {spec!r}: use 'embedded', 'carla' or 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"env {spec!r}: cannot import {attr} from {module}: {exc}") from exc


def carla_host(worker_index: int) -> tuple[str, int] | None:
    """The server a worker drives: entry worker_index (mod len) of CARLA_HOSTS, else the config's."""
    hosts = [h.strip() for h in os.environ.get("CARLA_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        return None
    host, _, port = hosts[worker_index % len(hosts)].rpartition(":")
    return host, int(port)


def make_factory(cfg: Any, worker_index: int = 0) -> EnvFactory:
    """From an ExperimentConfig."""
    section = cfg.carla if cfg.run.env == "carla" else cfg.embedded
    return EnvFactory(cfg.run.env, section, worker_index)
