"""The experiment config: one frozen dataclass per component, composed here, loaded from YAML."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from checkpoint_store.fs import redact
from checkpoint_store.retention import RetentionPolicy
from cluster.runtime.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from learner.learner import LearnerConfig
from learner.networks import NetworkConfig
from learner.replay import ReplayConfig
from learner.td3 import TD3Config
from rollout_workers.carla.env import CarlaEnvConfig
from rollout_workers.carla.server import ServerConfig
from rollout_workers.envs.embedded import EmbeddedEnvConfig
from rollout_workers.evaluation import EvalConfig
from rollout_workers.exploration import ExplorationConfig
from rollout_workers.worker import WorkerConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "embedded.yaml"


LOCAL_PROCESSES_PER_CORE = 4
"""A one-machine run refuses more rollout and evaluation workers than this many per core."""


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
    store: str = field(default="", repr=False)  # may hold credentials: kept out of every repr and log line
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
    learner_resource: str = ""
    """Custom Ray resource the learner takes one unit of, besides a GPU when the cluster has one (the replay
    follows it), e.g. `learner` on the one node meant to hold it (cluster/loopback.yaml's head); '' none."""
    allow_ray_without_auth: bool = False
    """A local run refuses RAY_AUTH_MODE other than `token` (its Ray would admit any local user without a token)
    unless this is true (`fleet train --allow-ray-without-auth`; docs/security.md)."""
    store_timeout_s: float = 120.0
    """Seconds the end of a run waits for its final snapshot to be stored. Past them (a store that stopped
    answering) the run stops without it: one line, exit status 2, and a summary that says the final
    snapshot was not stored and names the last complete version."""
    collect_steps: int = 100
    """Env steps per worker call between control checks (stop, pacing)."""
    max_ahead_steps: int = 2_000
    """Env steps the workers may run ahead of what the learner's replay ratio has consumed."""
    progress_every_s: float = 5.0
    """Seconds between progress lines."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"run.workers must be >= 1 (a run needs a rollout worker), got {self.workers}")
        if self.total_env_steps < 1 or self.collect_steps < 1:
            raise ConfigError("run.total_env_steps and run.collect_steps must be >= 1")
        if self.max_minutes < 0 or self.progress_every_s <= 0:
            raise ConfigError("run.max_minutes must be >= 0 and run.progress_every_s > 0")
        if not self.store_timeout_s > 0:
            raise ConfigError(f"run.store_timeout_s must be > 0 seconds, got {self.store_timeout_s}")


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
        if self.worker.chunk_steps < 1 or not self.worker.chunk_max_age_s > 0:
            raise ConfigError(f"worker.chunk_steps must be >= 1 and worker.chunk_max_age_s > 0 seconds, got "
                              f"{self.worker.chunk_steps} and {self.worker.chunk_max_age_s}")

    def check_local_capacity(self, cores: int) -> None:
        """Refuse a one-machine run with far more processes than cores: each worker is a process
        stepping a simulator, and 1000 of them on 2 cores starve the machine (issue 18)."""
        evaluators = self.eval.workers if self.eval.every_updates > 0 else 0
        limit = LOCAL_PROCESSES_PER_CORE * cores
        if self.run.workers + evaluators > limit:
            raise ConfigError(
                f"run.workers ({self.run.workers}) + eval.workers ({evaluators}) is more than this machine's "
                f"{cores} cores can run ({limit}, {LOCAL_PROCESSES_PER_CORE} per core): lower --workers, or "
                f"run on a cluster (run.ray_address / ray job submit), where Ray places workers on its nodes")

    def check_local_evaluators(self, workers: int, cores: int) -> None:
        """Refuse a one-machine `fleet evaluate` with far more evaluation workers than cores: it started
        Ray with as many logical CPUs and one actor each (1,000 on 2 cores)."""
        limit = LOCAL_PROCESSES_PER_CORE * cores
        if workers > limit:
            raise ConfigError(
                f"--workers {workers} is more evaluation workers than this machine's {cores} cores can run "
                f"({limit}, {LOCAL_PROCESSES_PER_CORE} per core): lower --workers, or evaluate on a cluster "
                f"(--address, or RAY_ADDRESS inside ray job submit), where Ray places them on its nodes")

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

    def public_dict(self) -> dict[str, Any]:
        """The config as a dict with credentials redacted: what a manifest, a summary or a log may hold."""
        out = to_dict(self)
        out["run"]["store"] = redact(out["run"]["store"])
        return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The packaged default config, or `path`, with dotted-key overrides; a run name is filled in."""
    cfg = load_yaml(ExperimentConfig, path or DEFAULT_CONFIG, overrides)
    if not cfg.run.name:
        cfg = replace(cfg, run=replace(cfg.run, name=time.strftime("run-%Y%m%d-%H%M%S")))
    return cfg


def from_manifest(config: dict[str, Any]) -> ExperimentConfig:
    """Rebuild the experiment config a snapshot was written with (to show it; never to run from it:
    see `for_evaluation`)."""
    return from_dict(ExperimentConfig, config)


CARLA_CONNECTION_KEYS = ("host", "port", "tm_port", "timeout_s", "load_timeout_s", "sensor_timeout_s")
"""Where a CARLA env connects: always the user's, never a manifest's."""


def for_evaluation(manifest: dict[str, Any], base: ExperimentConfig,
                   overrides: Mapping[str, Any] | None = None) -> tuple[ExperimentConfig, list[str]]:
    """The config to evaluate a snapshot with, and notes to show the user.

    Whoever can write a store can write its manifests, and a checksum is not authentication, so a
    manifest is read as data only: the network's shape (to build the layers its weights fill) and the
    simulator's parameters (route, traffic, reward, camera). What runs -- the env factory (`run.env`),
    CARLA server commands and client modules, Ray addresses, where a CARLA env connects -- comes from
    `base`, the user's own config and command line. `overrides` (the user's `--set`) win over the
    manifest's simulator parameters, e.g. `embedded.route_length_m=600` to evaluate on longer routes.
    """
    network, notes = base.network, []

    def section(name: str) -> dict[str, Any]:
        data = copy.deepcopy(manifest[name])
        prefix = name + "."
        return apply_overrides(data, {k[len(prefix):]: v for k, v in (overrides or {}).items() if k.startswith(prefix)})

    if "network" in manifest:
        network = from_dict(NetworkConfig, manifest["network"], "snapshot manifest: network")
    elif isinstance(manifest.get("vector_dim"), int):  # a legacy import records the vector size only
        network = replace(base.network, waypoints=(manifest["vector_dim"] - 3) // 2)
    embedded = replace(base.embedded, waypoints=network.waypoints)
    if "embedded" in manifest:
        embedded = from_dict(EmbeddedEnvConfig, section("embedded"), "snapshot manifest: embedded")
    carla = replace(base.carla, waypoints=network.waypoints)
    if "carla" in manifest:
        scene = from_dict(CarlaEnvConfig, section("carla"), "snapshot manifest: carla")
        carla = replace(scene, **{k: getattr(base.carla, k) for k in CARLA_CONNECTION_KEYS})
    trained_on = manifest.get("run", {}).get("env") if isinstance(manifest.get("run"), dict) else None
    if trained_on is not None and trained_on != base.run.env:
        notes.append(f"the snapshot's manifest says it was trained on env {str(trained_on)[:80]!r}; nothing a "
                     f"manifest names is run: evaluating on {base.run.env!r} (your config; choose with --env)")
    return replace(base, network=network, embedded=embedded, carla=carla), notes
