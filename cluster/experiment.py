"""The experiment config: one frozen dataclass per component, composed here, loaded from YAML."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from checkpoint_store.retention import RetentionPolicy
from cluster.config import ConfigError, from_dict, load_yaml
from learner.learner import LearnerConfig
from learner.networks import NetworkConfig
from learner.replay import ReplayConfig
from learner.td3 import TD3Config
from rollout_workers.carla_server import ServerConfig
from rollout_workers.envs.carla_env import CarlaEnvConfig
from rollout_workers.envs.embedded import EmbeddedEnvConfig
from rollout_workers.evaluation import EvalConfig
from rollout_workers.exploration import ExplorationConfig
from rollout_workers.worker import WorkerConfig

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "embedded.yaml"


@dataclass(frozen=True)
class RunConfig:
    name: str = ""
    """Run name; results go to <runs_dir>/<name>/. Empty: a timestamp."""
    env: str = "embedded"
    """Simulator: 'embedded' (highway-env), 'carla', or 'package.module:function' building an env from a seed."""
    workers: int = 2
    """Rollout workers, one simulator each."""
    total_env_steps: int = 5_000
    """Environment steps to collect before the run stops (the learner then catches up its ratio)."""
    max_minutes: float = 0.0
    """Wall-clock budget: the run stops like at the end of its steps after this many minutes (0: none)."""
    store: str = ""
    """Snapshot store URI (local path, s3://bucket/prefix?endpoint_override=...). Empty: <run dir>/snapshots."""
    runs_dir: str = "runs"
    """Folder holding one sub-folder per run (metrics, TensorBoard, reports)."""
    seed: int = 0
    """Seed of the learner, the workers and their environments."""
    ray_address: str = ""
    """Ray cluster to join ('auto' inside `ray job submit`); empty starts a local Ray instance."""
    worker_resource: str = "auto"
    """Custom Ray resource each rollout worker takes one unit of: 'auto' is `carla` on CARLA runs and none
    otherwise; '' never; any other name (e.g. `carla`) always, so workers land only on nodes advertising it."""
    collect_steps: int = 100
    """Env steps per worker call between control checks (stop, pacing)."""
    max_ahead_steps: int = 2_000
    """Env steps the workers may run ahead of what the learner's replay ratio has consumed."""
    progress_every_s: float = 5.0
    """Seconds between progress lines."""


@dataclass(frozen=True)
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run budget, topology and where results go."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Seed agent architecture."""
    agent: TD3Config = field(default_factory=TD3Config)
    """TD3 hyper-parameters."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Replay ratio, warm-up, publication and snapshot cadence."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Replay memory."""
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    """Rollout worker loop."""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """Warm-up and exploration noise."""
    embedded: EmbeddedEnvConfig = field(default_factory=EmbeddedEnvConfig)
    """The embedded simulator (run.env = embedded)."""
    carla: CarlaEnvConfig = field(default_factory=CarlaEnvConfig)
    """CARLA servers (run.env = carla)."""
    carla_server: ServerConfig = field(default_factory=ServerConfig)
    """CARLA server each worker launches and supervises when CARLA_HOSTS is unset (run.env = carla)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation episodes."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """Which snapshot versions are kept."""

    def __post_init__(self) -> None:
        if self.run.env not in ("embedded", "carla") and ":" not in self.run.env:
            raise ConfigError(f"run.env: {self.run.env!r} is not 'embedded', 'carla' or 'package.module:function'")
        if self.embedded.waypoints != self.network.waypoints:
            raise ConfigError(
                f"embedded.waypoints ({self.embedded.waypoints}) must equal network.waypoints "
                f"({self.network.waypoints}): the vector size follows from it"
            )

    def worker_resources(self) -> dict[str, float]:
        """The custom resources of one rollout worker actor."""
        name = self.run.worker_resource
        if name == "auto":
            name = "carla" if self.run.env == "carla" else ""
        return {name: 1} if name else {}

    def run_dir(self) -> Path:
        return Path(self.run.runs_dir) / self.run.name

    def store_uri(self) -> str:
        return self.run.store or str((self.run_dir() / "snapshots").resolve())


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The packaged default config, or `path`, with dotted-key overrides; a run name is filled in."""
    cfg = load_yaml(ExperimentConfig, path or DEFAULT_CONFIG, overrides)
    if not cfg.run.name:
        cfg = replace(cfg, run=replace(cfg.run, name=time.strftime("run-%Y%m%d-%H%M%S")))
    return cfg


def from_manifest(config: dict[str, Any]) -> ExperimentConfig:
    """Rebuild the experiment config a snapshot was written with."""
    return from_dict(ExperimentConfig, config)
