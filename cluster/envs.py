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


_claimed: dict[str, tuple[Any, tuple[str, int]]] = {}


def carla_host(worker_index: int) -> tuple[str, int] | None:
    """A CARLA server from CARLA_HOSTS that no other worker on this node drives; None if unset.

    Workers land on nodes in an order Ray chooses, so a global index could send two workers
    to one server. Each worker process instead claims a free server with a non-blocking file
    lock (released when the process ends, however it ends), starting from its own index.
    """
    import fcntl
    import tempfile

    hosts = [h.strip() for h in os.environ.get("CARLA_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        return None
    spec = ",".join(hosts)
    if spec in _claimed:
        return _claimed[spec][1]
    for k in range(len(hosts)):
        entry = hosts[(worker_index + k) % len(hosts)]
        host, _, port = entry.rpartition(":")
        lock = open(os.path.join(tempfile.gettempdir(), f"carla-fleet-{host}-{port}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _claimed[spec] = (lock, (host, int(port)))
        return host, int(port)
    raise RuntimeError(f"all CARLA servers in CARLA_HOSTS ({spec}) are driven by other workers on this node; "
                       "start more servers or fewer workers (the node's `carla` resource should equal its servers)")


def make_factory(cfg: Any, worker_index: int = 0) -> EnvFactory:
    """From an ExperimentConfig."""
    section = cfg.carla if cfg.run.env == "carla" else cfg.embedded
    return EnvFactory(cfg.run.env, section, worker_index)
