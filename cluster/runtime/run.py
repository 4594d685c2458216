"""What a local run and a Ray run share: the `Run` they both are, and the helpers of their loop and end."""

from __future__ import annotations

import logging
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from checkpoint_store.manifest import Manifest
from checkpoint_store.writer import CheckpointError, WriterStatus
from cluster.runtime.experiment import ExperimentConfig
from cluster.runtime.periodic_eval import PeriodicEval
from cluster.runtime.progress import MetricsLog, Status
from learner.learner import LearnerStats
from rollout_workers.evaluation import EvalReport

if TYPE_CHECKING:
    from ray import ObjectRef

T = TypeVar("T")

log = logging.getLogger(__name__)


class Run(ABC):
    """A training run's processes as `train` drives them: in this process (`LocalRun`) or as actors on a
    Ray cluster (`RayRun`). `start`, then `poll` until the budget is collected, then `finish` (the final
    snapshot) and `close`; `evaluator` evaluates snapshots meanwhile."""

    cfg: ExperimentConfig
    node_losses: list[dict[str, Any]]
    """Nodes lost during the run (the summary's `node_losses`); a local run has none."""

    @abstractmethod
    def start(self) -> None:
        """Create the run's processes (and start Ray, if it needs one)."""

    @abstractmethod
    def evaluator(self, best_score: float) -> PeriodicEval:
        """The periodic evaluation of this run's snapshots; `best_score` is the one to beat."""

    @abstractmethod
    def poll(self, status: Status, metrics: MetricsLog) -> None:
        """Let the run work a while; bring `status` and `metrics` up to date."""

    @abstractmethod
    def finish(self, status: Status, metrics: MetricsLog, catch_up: bool = True,
               snapshot: bool = True) -> dict[str, Any]:
        """Stop collecting, do the updates the ratio still owes (`catch_up`), store the final snapshot
        (`snapshot`): {"version": ...} or {"error": ...}, with the placement on Ray."""

    @abstractmethod
    def close(self) -> None:
        """End every process of the run, also after a failure."""

    @abstractmethod
    def _learner_stats(self, status: Status) -> LearnerStats | None:
        """The learner's stats, or None when it cannot answer now (the caller skips this update)."""

    @abstractmethod
    def _writer_status(self) -> WriterStatus | None:
        """The checkpoint writer's status, or None when it cannot answer now."""

    def _update(self, status: Status, metrics: MetricsLog, check_store: bool = True) -> None:
        """`status` and `metrics` from the learner's and the writer's counters; with `check_store`, stop
        the run (CheckpointError) when the writer's last save failed for good."""
        stats = self._learner_stats(status)
        if stats is None:
            return
        status.env_steps, status.updates = stats.env_steps, stats.learner_updates
        if stats.snapshot_block_ms_median is not None:
            status.snapshot_block_ms = stats.snapshot_block_ms_median
        status.replay_size = stats.replay_size
        status.policy_lag = stats.metrics.get("policy_lag", 0.0)
        if stats.metrics:
            metrics.record("learner", status.updates, stats.metrics)
        writer = self._writer_status()
        if writer is None:  # the writer is restarting: keep the last known version
            return
        status.last_snapshot = writer.last_version or status.last_snapshot
        if check_store:
            raise_if_store_failed(writer)


def get_reporting(ref: ObjectRef[T], report: Callable[[], None], every_s: float = 1.0) -> T:
    """`ray.get(ref)`, calling `report` every `every_s` while it runs (e.g. the progress display's
    counters during the learner's catch-up, which would otherwise freeze for a minute or more)."""
    import ray

    while not ray.wait([ref], timeout=every_s)[0]:
        report()
    return ray.get(ref)


def raise_if_store_failed(writer: WriterStatus) -> None:
    """Stop the run when the checkpoint writer's last save failed after its retries (issue 18): a run
    that trains on without being able to save loses everything after its last stored version."""
    if writer.last_failed:
        kept = writer.last_version or "none"
        raise CheckpointError(
            f"saving a snapshot to {writer.store} failed after {writer.max_retries} retries "
            f"({writer.last_error}); the run stops here. Versions stored before are kept (latest: {kept}): "
            f"fix the store (space, permissions, reachability), then continue with --resume {writer.store}")


def await_final_snapshot(wait: Callable[[float], Manifest | None], resubmit: Callable[[float], None],
                         final_updates: int, timeout_s: float, attempts: int = 3) -> Manifest | None:
    """The manifest of the run's final snapshot (`final_updates` updates) once the writer has stored it,
    or None when it was not stored within `timeout_s` in all.

    `wait(left)` blocks until the writer is idle, at most `left` seconds, and returns its last manifest
    (None: still busy). An older manifest means the writer restarted and lost the final save:
    `resubmit(left)` hands it over again. A store that stops answering used to keep a Ray run waiting
    3 x 600 s, then fail with a traceback and no summary; the stuck save itself cannot be
    interrupted, so this only stops waiting for it."""
    deadline = time.monotonic() + timeout_s
    for attempt in range(attempts):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        manifest = wait(left)
        if manifest is None:
            return None
        if manifest.learner_updates >= final_updates:
            return manifest
        # A writer restarted during the final save: nothing of it was kept, so the learner submits the
        # final snapshot again (catch_up has no updates left to do).
        log.warning("final snapshot not in the store (writer has %s); submitting it again", manifest.version)
        if attempt + 1 < attempts:
            resubmit(deadline - time.monotonic())
    return None


def final_not_stored(updates: int, timeout_s: float, last: str | None, store: str) -> str:
    """The one line a run ends with when its final snapshot was not stored in time."""
    last = last if last and last != "-" else "none"
    return (f"the final snapshot ({updates} updates) was not stored within run.store_timeout_s={timeout_s:g} s: "
            f"the store {store} did not finish the save, so the run stops without it. The last complete version "
            f"is {last} (summary.json says the same): fix the store (reachability, space), then continue with "
            f"--resume {store}")


def eval_figures(report: EvalReport) -> dict[str, float]:
    """What a person reads of an evaluation: how far, how well, how fast, what it earned."""
    return {"route_completion": round(report.mean_route_completion, 3),
            "driving_score": round(report.driving_score, 3), "mean_speed": round(report.mean_speed, 2),
            "mean_return": round(report.mean_return, 1), "off_road_rate": round(report.off_road_rate, 2),
            "crashes": report.crashes, "episodes": len(report.episodes)}


def scripted_reference(cfg: ExperimentConfig, episodes: int | None = None, final: bool = False) -> dict[str, float]:
    """The scripted lane follower on the evaluation's own seeds (the test seeds with `final`): the figures an
    agent is held against."""
    from cluster.runtime.envs import make_factory
    from rollout_workers.evaluation import summarize
    from rollout_workers.scripted import ScriptedDriver, run_episodes

    return eval_figures(summarize(run_episodes(make_factory(cfg, 0), ScriptedDriver.for_env(cfg.embedded),
                                               cfg.eval.seeds(episodes, final=final))))


def _absorb_reports(reports: list[Any], status: Status, metrics: MetricsLog, returns: list[float]) -> None:
    for report in reports:
        status.env_failures += report.env_failures
        for ep in report.episodes:
            status.episodes += 1
            returns.append(ep["return"])
            metrics.record("episode", status.env_steps, ep)
    if returns:
        status.mean_return = statistics.fmean(returns[-20:])
