"""`train`: one training job, local or on Ray: the checks before it starts, its loop, its summary."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from checkpoint_store.fs import Root, probe, redact
from checkpoint_store.lease import check_free, new_owner
from checkpoint_store.writer import CheckpointError
from cluster.runtime.experiment import ExperimentConfig
from cluster.runtime.local import LocalRun
from cluster.runtime.nodes import NodeLost
from cluster.runtime.periodic_eval import PeriodicEval
from cluster.runtime.progress import MetricsLog, Progress, Status
from cluster.runtime.ray_run import RayRun
from cluster.runtime.ray_setup import check_ray_auth_mode
from cluster.runtime.resume import Restored, Resume, best_eval, load_resume
from cluster.runtime.run import Run, eval_figures, scripted_reference
from cluster.runtime.signals import StopRequest
from learner.common.errors import FleetError, StateError
from learner.td3 import OWN_ENCODER_STATE, trained_on_own_encoder

log = logging.getLogger(__name__)


def train(cfg: ExperimentConfig, resume: Resume | None = None, local: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Run one training job; returns the summary also written to runs/<name>/summary.json.

    Three parts: the checks that fail a run before anything starts (`check_before_start`), the run
    from its start to its final snapshot (`run_loop`), and the summary (`summarize`). A failure that
    ends the run (the store, the learner's node) is raised after the summary is written."""
    restored, owner = check_before_start(cfg, resume, local)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir)
    status = Status(total_env_steps=cfg.run.total_env_steps)
    progress = Progress(cfg.run.progress_every_s, quiet=quiet)
    runner: Run = LocalRun(cfg, restored, owner) if local else RayRun(cfg, restored, owner)
    started = time.monotonic()
    status.phase = "starting Ray and the actors" if not local else "starting"
    progress.start(status)
    try:
        outcome = run_loop(cfg, runner, restored, status, metrics)
        summary = summarize(cfg, resume, runner, status, outcome, time.monotonic() - started)
    finally:
        progress.stop()  # also when a failure propagates: the terminal is left clean for its message
    progress.summary(summary, run_dir)
    if outcome.failure is not None:
        raise outcome.failure  # after the summary: the CLI prints it as one line (exit status 2, or 1 for NodeLost)
    return summary


def check_before_start(cfg: ExperimentConfig, resume: Resume | None, local: bool) -> tuple[Restored | None, str]:
    """What fails a run before any process starts, each in one line: a resumed state that does not fit,
    Ray's auth mode, a store that cannot be written or that another live run holds, silent CARLA hosts.
    Returns the snapshot a resumed run starts from and the run's owner token for the store's lease."""
    restored = load_resume(resume) if resume else None
    if restored and cfg.agent.actor_encoder == "critic" and trained_on_own_encoder(restored.state):
        raise StateError(OWN_ENCODER_STATE)  # before any actor starts: one line, exit 2
    if not local and not cfg.run.ray_address:
        check_ray_auth_mode(cfg.run.allow_ray_without_auth)  # before anything is created
    probe(cfg.store_uri())  # a store that cannot be written fails the run now, not at its first snapshot
    # One writer per store: another live run's lease refuses this one now, in one line, before any actor
    # starts. The run's checkpoint writer takes the lease under this owner token, and a writer Ray restarts
    # (after a node loss) carries the same token, so it takes over its own run's lease.
    owner = new_owner()
    check_free(Root(cfg.store_uri()), owner)
    if cfg.run.env == "carla" and not cfg.run.ray_address:
        from rollout_workers.carla.checks import probe_carla_hosts

        probe_carla_hosts(cfg.carla_server)  # one node: CARLA_HOSTS here is the workers'; a silent one fails the run now
    return restored, owner


@dataclass
class Outcome:
    """How a run ended, for its summary."""

    interrupted: bool = False
    """Ctrl-C or SIGTERM (`ray job stop`, a scheduler)."""
    failure: FleetError | None = None
    """The store failed, or the learner's node was lost: raised after the summary."""
    final: dict[str, Any] = field(default_factory=dict)
    """`Run.finish`'s answer: the final snapshot's version (or an error), the placement on Ray."""
    evaluator: PeriodicEval | None = None


def run_loop(cfg: ExperimentConfig, runner: Run, restored: Restored | None, status: Status,
             metrics: MetricsLog) -> Outcome:
    """Start the run and poll it until it has its env steps, its time is up or a stop is asked for; then end
    it, whatever happened: the final snapshot, its evaluation, every process closed."""
    outcome = Outcome()
    stop = StopRequest()
    deadline = time.monotonic() + 60 * cfg.run.max_minutes if cfg.run.max_minutes > 0 else float("inf")
    with ExitStack() as signals:
        try:
            runner.start()
            # After start: ray.init installs its own SIGTERM handler (a bare exit), ours replaces it.
            signals.enter_context(stop.installed())
            outcome.evaluator = runner.evaluator(best_eval(restored))
            while max(status.env_steps, status.collected) < cfg.run.total_env_steps \
                    and time.monotonic() < deadline and not stop.requested.is_set():
                runner.poll(status, metrics)
                outcome.evaluator.poll(status, metrics)
                status.phase = phase(status, cfg)
            if stop.requested.is_set():  # the signal's raise was lost (see StopRequest)
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            outcome.interrupted = True
            status.phase = "interrupted: stopping the workers, writing a final snapshot"
        except CheckpointError as exc:  # reported by the CLI once the summary is written
            outcome.failure = exc
            status.phase = "the store failed: stopping"
        except NodeLost as exc:  # the learner and its replay are gone: nothing left to snapshot
            outcome.failure = exc
            status.phase = "the learner's node was lost: stopping"
        finally:
            end_run(runner, outcome, status, metrics)
    return outcome


def end_run(runner: Run, outcome: Outcome, status: Status, metrics: MetricsLog) -> None:
    """The final snapshot (after the updates the ratio still owes, unless interrupted) and its evaluation;
    then every process of the run is closed, also when those fail."""
    evaluator = outcome.evaluator
    try:
        if not outcome.interrupted and outcome.failure is None:
            status.phase = "stopping the workers, catching up the replay ratio, writing the final snapshot"
        # Interrupted (Ctrl-C, SIGTERM from `ray job stop` or a scheduler, which give ~30 s): the
        # final snapshot first, without catching up the updates the ratio still owes.
        outcome.final = runner.finish(status, metrics, catch_up=not outcome.interrupted,
                                      snapshot=outcome.failure is None)
        if outcome.final.get("error"):  # the final snapshot was not stored in time: reported after the summary
            outcome.failure = CheckpointError(outcome.final["error"])
            status.phase = "the final snapshot was not stored: stopping"
        if evaluator is not None and not outcome.interrupted and outcome.failure is None:
            status.phase = f"evaluating the final snapshot {status.last_snapshot}"
            evaluator.finish(status, metrics)  # the final version too, so `best` considers it
    finally:
        if evaluator is not None:
            evaluator.backend.close()
        runner.close()
        metrics.close()


def summarize(cfg: ExperimentConfig, resume: Resume | None, runner: Run, status: Status, outcome: Outcome,
              wall_s: float) -> dict[str, Any]:
    """The run's summary (summary.json): counters, the final and best snapshots, their evaluation beside the
    scripted driver's (embedded env), where each actor ran (Ray), and the error that ended it, if one did."""
    final, evaluator = outcome.final, outcome.evaluator
    summary: dict[str, Any] = {
        "run": cfg.run.name, "interrupted": outcome.interrupted, "env_steps": status.env_steps,
        "collected_steps": max(status.collected, status.env_steps),
        "learner_updates": status.updates, "episodes": status.episodes,
        "mean_return_last_episodes": round(status.mean_return, 3), "env_failures": status.env_failures,
        "worker_restarts": status.worker_restarts, "node_losses": runner.node_losses,
        "workers_paused_s": status.workers_paused_s, "final_snapshot": final.get("version", "-"),
        "final_snapshot_stored": "version" in final, "last_stored_version": status.last_snapshot or "-",
        "snapshot_block_ms_median": status.snapshot_block_ms,
        "store": redact(cfg.store_uri()), "wall_s": round(wall_s, 1),
        "resumed_from": f"{redact(resume.uri)}@{resume.version}" if resume else None,
    }
    if outcome.failure is not None:
        summary["error"] = str(outcome.failure)
    if evaluator is not None and evaluator.reports:
        summary["last_eval"] = status.last_eval
        summary["best"] = {"version": evaluator.best_version, "driving_score": evaluator.best_score,
                           "mean_return": evaluator.best_return if evaluator.best_return > float("-inf") else None}
        summary["final_eval"] = eval_figures(evaluator.reports[-1])
        if cfg.run.env == "embedded":
            status.phase = "the scripted driver on the same evaluation episodes, for reference"
            summary["scripted_reference"] = scripted_reference(cfg)
    if final.get("placement"):
        summary["placement"] = final["placement"]
        summary["placement_text"] = final.get("placement_text", [])
    return summary


def phase(status: Status, cfg: ExperimentConfig) -> str:
    """What the run is doing, in words, with the reason when workers wait."""
    learning_starts = cfg.learner.learning_starts
    if status.env_steps < learning_starts:
        return f"warm-up: exploring until {learning_starts:,} env steps, then learning"
    if status.steps_ahead > cfg.run.max_ahead_steps:
        return (f"waiting for the learner: workers {status.steps_ahead:,} env steps ahead of replay ratio "
                f"{cfg.learner.replay_ratio:g}")
    return "learning"
