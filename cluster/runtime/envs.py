"""A run's env factories, from its config: each worker's (`make_factory`), after the check that a CARLA run
has servers to use (rollout_workers/carla/checks.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rollout_workers.carla.checks import check_carla_setup
from rollout_workers.envs.factory import EnvFactory

if TYPE_CHECKING:
    from cluster.runtime.experiment import ExperimentConfig


def carla_evaluators(cfg: ExperimentConfig) -> int:
    """Evaluation workers that need a CARLA server of their own during training: 1 when the run evaluates."""
    return 1 if cfg.eval.every_updates > 0 else 0


def make_factory(cfg: ExperimentConfig, worker_index: int = 0) -> EnvFactory:
    """From an ExperimentConfig; a CARLA run without servers to use is a ConfigError here."""
    if cfg.run.env == "carla":
        check_carla_setup(cfg.carla_server, cfg.run.workers, carla_evaluators(cfg),
                          count_workers=not cfg.run.ray_address)
        return EnvFactory("carla", cfg.carla, worker_index, cfg.carla_server)
    return EnvFactory(cfg.run.env, cfg.embedded, worker_index)
