"""Wiring: the same components on a Ray cluster or in one process (`--local`).

Placement: the learner takes a GPU when the cluster has one; the replay actor is
pinned to the learner's node so only new data crosses the network; rollout
workers need one CPU each, plus one `carla` resource on CARLA runs; the
checkpoint writer is the only writer of the store.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from checkpoint_store.fs import Root, abandon, bounded, probe, redact, userinfo_end
from checkpoint_store.lease import LeaseHeldError, check_free, new_owner, release_owner
from checkpoint_store.manifest import VERSION_RE, Manifest
from checkpoint_store.store import SnapshotStore
from checkpoint_store.writer import CheckpointError, CheckpointWriter, snapshot_state
from cluster.experiment import ExperimentConfig
from cluster.nodes import NodeLost, NodeWatch, check_store_shared, describe
from cluster.periodic_eval import BEST_TAG, InlineEval, PeriodicEval, RayEval
from cluster.progress import MetricsLog, Progress, Status
from learner import mkl_amd
from learner.errors import ConfigError, FleetError, StateError
from learner.replay import ReplayActor
from learner.replay.segments import saved_chunks
from learner.td3 import OWN_ENCODER_STATE, trained_on_own_encoder

log = logging.getLogger(__name__)

_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What may follow the '@' of `--resume URI@VERSION`: 'latest', a version id or a tag."""

# Ray's GCS keeps an event record (about 2.5 KB) for each of the last N tasks, N = 100,000 by
# default: a run's polling calls fill that in about half an hour, a 250 MB heap. Instances fleet
# starts keep the last 20,000 (`ray list tasks` still shows minutes of history). Each record pushed
# out is then remembered as a "dropped task attempt" (about 100 bytes) up to 1,000,000 per job by
# default: at ~2,600 calls a minute, 16 MB/h more for six hours (docs/benchmarks.md, "Soak"); fleet
# remembers the last 20,000. Cluster heads get both through RAY_task_events_* in cluster/*.yaml.
RAY_SYSTEM_CONFIG = {"task_events_max_num_task_in_gcs": 20_000,
                     "task_events_max_dropped_task_attempts_tracked_per_job_in_gcs": 20_000}


def route_ray_logs(log_file: Path | None) -> None:
    """Send the INFO and WARNING lines of Ray's Python side (start-up chatter such as "Started a local
    Ray instance" and the token-authentication notice) to `log_file`; the terminal keeps Ray's errors."""
    import ray  # noqa: F401 - importing ray installs the handlers of its "ray" logger

    logger = logging.getLogger("ray")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    if log_file is not None and not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(log_file)
                                        for h in logger.handlers):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)


def init_ray(address: str | None = None, num_cpus: int | None = None, resources: dict[str, float] | None = None,
             log_to_driver: bool = True, log_file: Path | None = None, object_store_mb: int | None = None,
             system_config: dict[str, Any] | None = None, allow_without_auth: bool = False) -> None:
    """The one place this package starts or joins Ray. Ray's start-up chatter goes to `log_file` (see
    `route_ray_logs`).

    With `address`: join that cluster (its own settings hold; the other arguments are ignored).
    Without: a one-node instance for this process, without the dashboard, with `num_cpus` logical
    CPUs (default: the machine's), the custom `resources` it should advertise, and Ray's system
    settings `RAY_SYSTEM_CONFIG` plus `system_config`.

    A local instance's node IP is 127.0.0.1, so every service it starts listens on loopback only
    (cluster/loopback_ray.py keeps Ray from swapping in the machine's address). Ray also starts it
    with token authentication unless `RAY_AUTH_MODE` says otherwise; another mode is refused (a
    ConfigError) unless `allow_without_auth` (`--allow-ray-without-auth`, docs/security.md). The
    mode is not set here: Ray reads it when it is imported, and a value set afterwards leaves this
    process without the token while the services it starts require one."""
    import ray

    from cluster import loopback_ray

    route_ray_logs(log_file)
    # Also for a cluster's address: a head on 127.0.0.1 listens there only, and Ray would otherwise dial
    # the machine's address instead (a `fleet train --set run.ray_address=127.0.0.1:PORT` hung in ray.init).
    loopback = loopback_ray.install()
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    check_ray_auth_mode(allow_without_auth, warn=True)
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, resources=resources or None, include_dashboard=False,
             log_to_driver=log_to_driver, _system_config={**RAY_SYSTEM_CONFIG, **(system_config or {})},
             object_store_memory=object_store_mb * 1024 * 1024 if object_store_mb else None,
             _node_ip_address="127.0.0.1" if loopback else None)


def check_ray_auth_mode(allow_without_auth: bool, warn: bool = False) -> None:
    """Refuse (a ConfigError) to start a local Ray whose token `RAY_AUTH_MODE` turns off, unless allowed."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":
        return
    if not allow_without_auth:
        raise ConfigError(f"RAY_AUTH_MODE={mode} would start this run's Ray services without a token, so any "
                          "local user could run code as you: unset RAY_AUTH_MODE (Ray then makes a token), or "
                          "pass --allow-ray-without-auth (run.allow_ray_without_auth=true) to accept that")
    if warn:
        log.warning("RAY_AUTH_MODE=%s and --allow-ray-without-auth: this run's Ray services accept any local "
                    "client without a token (see docs/security.md)", mode)


@dataclass(frozen=True)
class Resume:
    """Where a resumed run comes from."""

    uri: str = field(repr=False)  # may hold credentials
    version: str = "latest"

    @classmethod
    def parse(cls, text: str) -> Resume:
        """`URI[@VERSION]`. The version's '@' is the last one, after the last '/' of the URI's path;
        never the '@' that ends credentials in the URI (`s3://KEY:SECRET@bucket` is a store, not the
        store `s3://KEY:SECRET` at version `bucket`, which was then printed with its secret). At a
        bucket's root, `s3://bucket@VERSION` reads the same as `s3://USER@bucket`: it is taken as a
        version only for `latest` or a version id; write `s3://bucket/@TAG` for a tag."""
        uri, sep, version = text.rpartition("@")
        if not sep:
            return cls(text)
        m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", text)
        if m is None:  # a local path holds no credentials: an '@' after its last '/' starts the version, which
            return cls(uri, version) if "/" not in version else cls(text)  # the store then checks
        if not _REF_RE.fullmatch(version):
            return cls(text)
        location = text[m.end():]
        cut = min([i for i in (location.find("?"), location.find("#")) if i >= 0], default=len(location))
        path = location[:cut]
        at = len(uri) - m.end()  # index of the separator candidate in `location`
        end = userinfo_end(path)
        if at >= cut or at > end and "/" not in path[at:]:
            return cls(uri, version)
        if at == end and ":" not in path[:at] and "/" not in path and (version == "latest" or VERSION_RE.match(version)):
            return cls(uri, version)
        return cls(text)


class StopRequest:
    """A stop asked for by a signal: SIGTERM (`ray job stop`, a scheduler) and Ctrl-C get one clean shutdown.

    The handler raises KeyboardInterrupt in the main thread at once, and also sets `requested`. Python runs a
    handler at whatever bytecode the main thread is at; when that is a finalizer or a callback whose errors
    are only printed ("Exception ignored in ..."), the raise is lost. The run loop checks `requested` on every
    pass, so the stop still happens, one poll later.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested.set()
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Restored(NamedTuple):
    """What a resumed run starts from: a snapshot's full state, its files (the replay) and manifest."""

    state: dict[str, Any]
    files: dict[str, bytes]
    manifest: Manifest


def load_resume(resume: Resume) -> Restored:
    store = SnapshotStore(resume.uri, create=False)
    snap = store.get(resume.version)
    files = {name: store.read_file(snap.manifest.version, name) for name in snap.manifest.files}
    return Restored(snap.state, files, snap.manifest)


def best_eval(restored: Restored | None) -> float:
    """The best evaluation score a resumed run must beat before it moves the `best` tag."""
    if restored is None:
        return float("-inf")
    score = restored.state.get("learner", {}).get("best_eval")
    return float("-inf") if score is None else float(score)


def train(cfg: ExperimentConfig, resume: Resume | None = None, local: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Run one training job; returns the summary also written to runs/<name>/summary.json."""
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
        from cluster.envs import probe_carla_hosts

        probe_carla_hosts(cfg)  # one node: CARLA_HOSTS here is the workers'; a silent one fails the run now
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir)
    status = Status(total_env_steps=cfg.run.total_env_steps)
    progress = Progress(cfg.run.progress_every_s, quiet=quiet)
    runner = LocalRun(cfg, restored, owner) if local else RayRun(cfg, restored, owner)
    evaluator: PeriodicEval | None = None
    started = time.monotonic()
    interrupted = False
    stop = StopRequest()
    failure: FleetError | None = None  # the store failed, or the learner's node was lost: after the summary
    deadline = started + 60 * cfg.run.max_minutes if cfg.run.max_minutes > 0 else float("inf")
    status.phase = "starting Ray and the actors" if not local else "starting"
    progress.start(status)
    try:
        with ExitStack() as signals:
            try:
                runner.start()
                # After start: ray.init installs its own SIGTERM handler (a bare exit), ours replaces it.
                signals.enter_context(stop.installed())
                evaluator = runner.evaluator(best_eval(restored))
                while max(status.env_steps, status.collected) < cfg.run.total_env_steps \
                        and time.monotonic() < deadline and not stop.requested.is_set():
                    runner.poll(status, metrics)
                    evaluator.poll(status, metrics)
                    status.phase = phase(status, cfg)
                if stop.requested.is_set():  # the signal's raise was lost (see StopRequest)
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
                status.phase = "interrupted: stopping the workers, writing a final snapshot"
            except CheckpointError as exc:  # reported by the CLI once the summary is written
                failure = exc
                status.phase = "the store failed: stopping"
            except NodeLost as exc:  # the learner and its replay are gone: nothing left to snapshot
                failure = exc
                status.phase = "the learner's node was lost: stopping"
            finally:
                try:
                    if not interrupted and failure is None:
                        status.phase = "stopping the workers, catching up the replay ratio, writing the final snapshot"
                    # Interrupted (Ctrl-C, SIGTERM from `ray job stop` or a scheduler, which give ~30 s): the
                    # final snapshot first, without catching up the updates the ratio still owes.
                    final = runner.finish(status, metrics, catch_up=not interrupted, snapshot=failure is None)
                    if final.get("error"):  # the final snapshot was not stored in time: reported after the summary
                        failure = CheckpointError(final["error"])
                        status.phase = "the final snapshot was not stored: stopping"
                    if evaluator is not None and not interrupted and failure is None:
                        status.phase = f"evaluating the final snapshot {status.last_snapshot}"
                        evaluator.finish(status, metrics)  # the final version too, so `best` considers it
                finally:
                    if evaluator is not None:
                        evaluator.backend.close()
                    runner.close()
                    metrics.close()
        summary = {
            "run": cfg.run.name, "interrupted": interrupted, "env_steps": status.env_steps,
            "collected_steps": max(status.collected, status.env_steps),
            "learner_updates": status.updates, "episodes": status.episodes,
            "mean_return_last_episodes": round(status.mean_return, 3), "env_failures": status.env_failures,
            "worker_restarts": status.worker_restarts, "node_losses": getattr(runner, "node_losses", []),
            "workers_paused_s": status.workers_paused_s, "final_snapshot": final.get("version", "-"),
            "final_snapshot_stored": "version" in final, "last_stored_version": status.last_snapshot or "-",
            "snapshot_block_ms_median": status.snapshot_block_ms,
            "store": redact(cfg.store_uri()), "wall_s": round(time.monotonic() - started, 1),
            "resumed_from": f"{redact(resume.uri)}@{resume.version}" if resume else None,
        }
        if failure is not None:
            summary["error"] = str(failure)
        if evaluator is not None and evaluator.reports:
            summary["last_eval"] = status.last_eval
            summary["best"] = {"version": evaluator.best_version, "driving_score": evaluator.best_score}
            summary["final_eval"] = eval_figures(evaluator.reports[-1])
            if cfg.run.env == "embedded":
                status.phase = "the scripted driver on the same evaluation episodes, for reference"
                summary["scripted_reference"] = scripted_reference(cfg)
    finally:
        progress.stop()  # also when a failure propagates: the terminal is left clean for its message
    if final.get("placement"):
        summary["placement"] = final["placement"]
        summary["placement_text"] = final.get("placement_text", [])
    progress.summary(summary, run_dir)
    if failure is not None:
        raise failure  # after the summary: the CLI prints it as one line (exit status 2, or 1 for NodeLost)
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


def get_reporting(ref: Any, report: Callable[[], None], every_s: float = 1.0) -> Any:
    """`ray.get(ref)`, calling `report` every `every_s` while it runs (e.g. the progress display's
    counters during the learner's catch-up, which would otherwise freeze for a minute or more)."""
    import ray

    while not ray.wait([ref], timeout=every_s)[0]:
        report()
    return ray.get(ref)


def raise_if_store_failed(writer: dict[str, Any]) -> None:
    """Stop the run when the checkpoint writer's last save failed after its retries (issue 18): a run
    that trains on without being able to save loses everything after its last stored version."""
    if writer.get("last_failed"):
        kept = writer.get("last_version") or "none"
        raise CheckpointError(
            f"saving a snapshot to {writer.get('store')} failed after {writer.get('max_retries', 0)} retries "
            f"({writer.get('last_error')}); the run stops here. Versions stored before are kept (latest: {kept}): "
            f"fix the store (space, permissions, reachability), then continue with --resume {writer.get('store')}")


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


def eval_figures(report: Any) -> dict[str, float]:
    """What a person reads of an evaluation: how far, how well, how fast, what it earned."""
    return {"route_completion": round(report.mean_route_completion, 3),
            "driving_score": round(report.driving_score, 3), "mean_speed": round(report.mean_speed, 2),
            "mean_return": round(report.mean_return, 1), "off_road_rate": round(report.off_road_rate, 2),
            "episodes": len(report.episodes)}


def scripted_reference(cfg: ExperimentConfig, episodes: int | None = None) -> dict[str, float]:
    """The scripted lane follower on the evaluation's own seeds: the figures an agent is held against."""
    from cluster.envs import make_factory
    from rollout_workers.evaluation import summarize
    from rollout_workers.scripted import ScriptedDriver, run_episodes

    return eval_figures(summarize(run_episodes(make_factory(cfg, 0), ScriptedDriver.for_env(cfg.embedded),
                                               cfg.eval.seeds(episodes))))


def _absorb_reports(reports: list[Any], status: Status, metrics: MetricsLog, returns: list[float]) -> None:
    for report in reports:
        status.env_failures += report.env_failures
        for ep in report.episodes:
            status.episodes += 1
            returns.append(ep["return"])
            metrics.record("episode", status.env_steps, ep)
    if returns:
        status.mean_return = statistics.fmean(returns[-20:])


class LocalRun:
    """Everything in this process: workers step in turn, the learner updates between them."""

    def __init__(self, cfg: ExperimentConfig, restored: Restored | None, owner: str | None = None) -> None:
        from cluster.envs import make_factory
        from learner.learner import Learner
        from rollout_workers.worker import RolloutWorker

        self.cfg = cfg
        self.learner = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner, seed=cfg.run.seed)
        if restored:
            state, files = restored.state, restored.files
            self.learner.restore(state, files)
        self.workers = [RolloutWorker(i, make_factory(cfg, i), cfg.network, cfg.exploration, cfg.worker,
                                      seed=cfg.run.seed) for i in range(cfg.run.workers)]
        self.writer = CheckpointWriter(cfg.store_uri(), cfg.retention, owner=owner, run=cfg.run.name)
        self._chunks: list[Any] = []
        self._returns: list[float] = []
        self._replay_refs: dict[str, str] | None = None
        self._stuck = False

    def start(self) -> None:
        pass

    def evaluator(self, best_score: float) -> PeriodicEval:
        from cluster.envs import make_factory
        from rollout_workers.evaluation import EvaluationWorker

        backend = InlineEval(EvaluationWorker(make_factory(self.cfg, 0), self.cfg.network))
        return PeriodicEval(self.cfg, backend, self._tag_best, best_score)

    def _tag_best(self, version: str, score: float) -> None:
        self.writer.tag(version, BEST_TAG)
        self.learner.best_eval = score

    def close(self) -> None:
        if self._stuck:
            abandon(self.writer.close_now())
        else:
            self.writer.close()

    def _source(self) -> list[Any]:
        out, self._chunks = self._chunks, []
        return out

    def _sink(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        # Only segments changed since the last stored version are encoded; the rest are references.
        files = self.learner.memory.export(self.writer.stored_files()) if self.cfg.learner.save_replay else None
        meta = dict(meta, config=self.cfg.public_dict())
        self.writer.submit(snapshot_state(state), meta, files)

    def poll(self, status: Status, metrics: MetricsLog) -> None:
        import torch

        # One process: workers and evaluators set their own (single) thread count on construction;
        # the learner's updates, which bound the run, get theirs back here.
        if torch.get_num_threads() != self.cfg.learner.threads():
            torch.set_num_threads(self.cfg.learner.threads())
        for w in self.workers:
            report = w.collect(self.cfg.run.collect_steps, self._chunks.append, self.learner.weights_if_newer)
            w.flush(self._chunks.append)  # in one process a chunk costs nothing to hand over: all steps go now
            _absorb_reports([report], status, metrics, self._returns)
            while self.learner.step(self._source, self._sink):
                pass
        self._update(status, metrics)

    def _update(self, status: Status, metrics: MetricsLog, check_store: bool = True) -> None:
        stats = self.learner.stats()
        status.env_steps, status.updates = stats["env_steps"], stats["learner_updates"]
        status.snapshot_block_ms = stats.get("snapshot_block_ms_median", status.snapshot_block_ms)
        status.replay_size = stats["replay_size"]
        status.policy_lag = stats["metrics"].get("policy_lag", 0.0)
        if stats["metrics"]:
            metrics.record("learner", status.updates, stats["metrics"])
        writer = self.writer.status()
        status.last_snapshot = writer.get("last_version") or "-"
        if check_store:
            raise_if_store_failed(writer)

    def finish(self, status: Status, metrics: MetricsLog, catch_up: bool = True,
               snapshot: bool = True) -> dict[str, Any]:
        for w in self.workers:
            w.flush(self._chunks.append)
            w.close()
        if not snapshot:  # the store is failing: nothing more to write there
            self._update(status, metrics, check_store=False)
            return {}
        while catch_up and self.learner.step(self._source, self._sink):
            pass
        self.learner.snapshot(self._sink)
        timeout_s = self.cfg.run.store_timeout_s
        manifest = self.writer.wait(timeout=timeout_s)
        self._update(status, metrics, check_store=False)
        if manifest is None:  # the save is stuck in the store, and cannot be interrupted: leave it
            self._stuck = True
            return {"error": final_not_stored(self.learner.stats()["learner_updates"], timeout_s,
                                              status.last_snapshot, self.writer.store.uri)}
        return {"version": manifest.version}


def replay_actor_class() -> Any:
    """The replay actor as Ray runs it: one thread, so each worker's chunks are logged in the order it
    sent them. With several threads, two chunks a worker had in flight at once were at times logged
    swapped; the memory then cut the stream's episode there and dropped its steps as orphans (1,028 of
    21,308 in a fast-collecting run). Every call it serves is short (validate and copy a chunk, hand
    out logged ones): the replay it used to export now lives in the learner."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1)(ReplayActor)


class RayRun:
    """Actors on a Ray cluster; this process only orchestrates and reports."""

    def __init__(self, cfg: ExperimentConfig, restored: Restored | None, owner: str | None = None) -> None:
        self.cfg = cfg
        self.restored = restored
        self.owner = owner or new_owner()
        """The run's token in the store's lease: every instance of its checkpoint writer carries it."""
        self._started_ray = False
        self._returns: list[float] = []
        self.workers: list[Any] = []
        self._runs: dict[Any, int] = {}
        self.placement: dict[str, Any] = {}
        self._learner_gpu = False
        self._drains: dict[int, Any] = {}
        self._worker_nodes: dict[int, str] = {}
        self._ran_on: dict[str, set[int]] = {}
        """The workers that ran on each node: a lost node's may be restarted elsewhere before it is seen lost."""
        self.watch: NodeWatch | None = None
        self.node_losses: list[dict[str, Any]] = []
        """Nodes lost during the run: which, when, and the actors that were on them (the summary's)."""
        self.learner_lost = False

    def start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from cluster.actors import LearnerActor, WorkerActor

        cfg = self.cfg
        if not ray.is_initialized():
            if cfg.run.ray_address:
                init_ray(cfg.run.ray_address, log_file=cfg.run_dir() / "ray.log")
            else:
                # Logical CPUs: one per worker and evaluator plus the learner, even on a laptop with fewer
                # cores (they then share them) -- otherwise some workers would never be scheduled.
                cfg.check_local_capacity(os.cpu_count() or 1)
                evaluators = cfg.eval.workers if cfg.eval.every_updates > 0 else 0
                needed = cfg.run.workers + 1 + evaluators
                if cfg.run.env == "carla":  # one node, this environment: fail now, with what to set
                    from cluster.envs import check_carla_setup

                    check_carla_setup(cfg)
                # This one-node instance advertises the workers' custom resource (e.g. `carla`) itself.
                custom = {k: float(cfg.run.workers + evaluators) for k in cfg.worker_resources()}
                if cfg.run.learner_resource:
                    custom[cfg.run.learner_resource] = custom.get(cfg.run.learner_resource, 0.0) + 1.0
                init_ray(num_cpus=max(os.cpu_count() or 1, needed), resources=custom,
                         log_file=cfg.run_dir() / "ray.log", allow_without_auth=cfg.run.allow_ray_without_auth)
                self._started_ray = True
        self.watch = NodeWatch()
        check_store_shared(cfg.store_uri())  # several nodes: each must see the store's one folder
        gpus = ray.cluster_resources().get("GPU", 0) >= 1 and cfg.agent.device != "cpu"
        self._learner_gpu = bool(gpus)
        learner_res = {cfg.run.learner_resource: 1} if cfg.run.learner_resource else {}
        if learner_res and ray.cluster_resources().get(cfg.run.learner_resource, 0) < 1:
            raise ConfigError(f"run.learner_resource: no node of this cluster advertises a "
                              f"{cfg.run.learner_resource!r} resource (ray start --resources, or the cluster YAML)")
        state, files = (self.restored.state, self.restored.files) if self.restored else (None, None)
        name = cfg.run.name
        # Ray restarts a killed writer; the store keeps the last complete version meanwhile. The writer takes
        # the store's lease as this run's owner; a restarted one takes it over (checkpoint_store/lease.py).
        self.writer = ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1)(CheckpointWriter).options(
            name=f"{name}-checkpoint").remote(cfg.store_uri(), cfg.retention, owner=self.owner, run=name,
                                              defer_lease_error=True)
        problem = self._writer("lease_problem")  # another run took the store since train()'s check
        if problem:
            raise LeaseHeldError(problem)
        # The learner first: the replay is then pinned to whatever node it landed on.
        learner_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, resources=learner_res,
                                 max_concurrency=8)(LearnerActor)
        probe = ray.remote(num_cpus=0, num_gpus=1 if gpus else 0, resources=learner_res)(_node_id).remote()
        node = ray.get(probe)
        affinity = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        replay_cls = replay_actor_class()
        # Ingestion only (the learner holds the run's one replay memory): it resumes the chunk count.
        first = saved_chunks(files) if files else 0
        self.replay = replay_cls.options(name=f"{name}-replay", scheduling_strategy=affinity).remote(
            cfg.replay, cfg.network.vector_dim, first_cursor=first)
        # A CPU learner on an AMD CPU with AVX-512: MKL's AVX-512 kernels (learner/mkl_amd.py), decided on
        # its node, which builds the library there. ({} elsewhere, or with FLEET_MKL_AVX512=0.)
        preload = {} if gpus else ray.get(ray.remote(num_cpus=0)(_mkl_preload_env).options(
            scheduling_strategy=affinity).remote(os.environ.get(mkl_amd.ENV, "1")))
        options = {"runtime_env": {"env_vars": preload}} if preload else {}
        self.learner = learner_cls.options(name=f"{name}-learner", scheduling_strategy=affinity, **options).remote(
            cfg, self.replay, self.writer, state, files or None)
        self.learner_run = self.learner.run.remote()
        resources = cfg.worker_resources()
        # A killed worker is restarted by Ray, and its interrupted loop call re-run on the new instance.
        worker_cls = ray.remote(num_cpus=1, resources=resources, max_restarts=-1, max_task_retries=-1,
                                max_concurrency=2)(WorkerActor)
        # By name, not handle: a handle in a restartable actor's constructor arguments is a reference Ray
        # cannot restore (ray-project/ray#53727), and it says so with an ERROR line at every start.
        self.workers = [worker_cls.options(name=f"{name}-worker-{i}").remote(
            i, cfg, f"{name}-replay", f"{name}-learner") for i in range(cfg.run.workers)]
        self._runs = {w.run.remote(): i for i, w in enumerate(self.workers)}
        self.placement = self._placement()

    def _placement(self) -> dict[str, Any]:
        """The node id each actor runs on (also in the run summary). Workers report theirs to the learner
        when they start (`worker_nodes`): a worker waiting for a node with its resources does not hold
        up the run, and a restarted one is found where it runs now."""
        import ray

        def where(actor: Any) -> Any:
            return actor.__ray_call__.remote(lambda _self: _node_id())

        refs = {"learner": where(self.learner), "replay": where(self.replay), "checkpoint": where(self.writer)}
        out: dict[str, Any] = {k: ray.get(v, timeout=300) for k, v in refs.items()}
        out["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
        return out

    def placement_text(self) -> list[str]:
        """Where each actor runs, by node address and host name, with the resources it holds."""
        import ray

        cfg, p = self.cfg, self.placement
        if not p:
            return []
        nodes = {n["NodeID"]: _node_text(n) for n in ray.nodes()}
        learner_res = ("1 CPU" + (", 1 GPU" if self._learner_gpu else "")
                       + (f", 1 {cfg.run.learner_resource}" if cfg.run.learner_resource else "")
                       + f", {cfg.learner.threads()} torch threads")
        worker_res = ", ".join(["1 CPU"] + [f"{v:g} {k}" for k, v in cfg.worker_resources().items()])
        lines = [f"learner      on {nodes.get(p['learner'], p['learner'])}: {learner_res}",
                 f"replay       on {nodes.get(p['replay'], p['replay'])}: 0 CPU",
                 f"checkpoint   on {nodes.get(p['checkpoint'], p['checkpoint'])}: 0 CPU"]
        for node in sorted(set(p["workers"])):
            lines.append(f"{p['workers'].count(node)} worker(s) on {nodes.get(node, node)}: {worker_res} each")
        return lines

    def poll(self, status: Status, metrics: MetricsLog) -> None:
        import ray
        from ray.exceptions import RayActorError

        ready, _ = ray.wait([self.learner_run], timeout=0)
        if ready:
            try:
                ray.get(self.learner_run)  # raises the learner's error, if any
            except RayActorError as exc:  # its loop is gone, whatever the actor's state: no transient
                self._learner_failed(exc, status, transient=False)
            raise RuntimeError("the learner loop stopped unexpectedly")
        self._watch_nodes(status)
        done, _ = ray.wait(list(self._runs), timeout=0.5, num_returns=1)
        for ref in done:
            i = self._runs.pop(ref)
            try:
                ray.get(ref)
                log.warning("worker %d stopped by itself; starting it again", i)
            except RayActorError as exc:
                # Retries ran out for this call; Ray still restarts the actor, the driver re-issues its loop.
                log.warning("worker %d died (%s); Ray restarts it", i, type(exc).__name__)
            self._runs[self.workers[i].run.remote()] = i
        _absorb_reports(self._drain(), status, metrics, self._returns)
        self._update(status, metrics)

    def _drain(self, timeout_s: float = 1.0) -> list[Any]:
        """The workers' new reports. A worker that does not answer in `timeout_s` (waiting for a node
        with its resources, or being restarted on one) keeps its call for the next poll."""
        import ray
        from ray.exceptions import RayActorError

        for i, w in enumerate(self.workers):
            if i not in self._drains:
                self._drains[i] = w.drain_reports.remote()
        pending = {ref: i for i, ref in self._drains.items()}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        reports = []
        for ref in ready:
            del self._drains[pending[ref]]
            try:
                reports.extend(ray.get(ref))
            except RayActorError:
                continue
        return reports

    def _watch_nodes(self, status: Status, force: bool = False) -> None:
        """Record each node lost during the run with the workers that were on it (Ray restarts those
        on the nodes left that have their resources; the summary's `node_losses`)."""
        assert self.watch is not None
        for node in self.watch.poll(force=force):
            workers = sorted(self._ran_on.get(node["NodeID"], ()))
            others = [k for k in ("learner", "replay", "checkpoint") if self.placement.get(k) == node["NodeID"]]
            self.node_losses.append({"node": describe(node), "node_id": node["NodeID"],
                                     "at_env_steps": status.env_steps, "workers": workers, "actors": others})
            log.warning("node %s lost at %d env steps: worker(s) %s%s were on it", describe(node),
                        status.env_steps, workers or "none", f" and the {', '.join(others)}" if others else "")

    def _learner_failed(self, exc: Exception, status: Status, transient: bool = True,
                        patience_s: float = 120.0) -> None:
        """The learner did not answer: raise NodeLost when its node is gone, else return when it answers
        again (ActorUnavailableError on a call, when `transient`: a moment's disconnection) or re-raise
        `exc` (it died on its own).

        Ray tells callers at once that an actor is unreachable, and marks its node dead only after the
        missed health checks (about 15 to 30 s with its defaults): waited for here, at most `patience_s`."""
        import ray

        assert self.watch is not None
        node = self.placement.get("learner", "")
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            if self.watch.is_dead(node):
                self.learner_lost = True
                self._watch_nodes(status)
                raise NodeLost(self._lost_message(node, status)) from None
            state = _actor_state(self.learner)
            if transient and state == "ALIVE" and not isinstance(exc, ray.exceptions.ActorDiedError):
                return
            if state == "DEAD" and not self.watch.is_dead(node):
                raise exc
            time.sleep(1.0)
        raise exc

    def _lost_message(self, node_id: str, status: Status) -> str:
        """One line: what was lost, what the store keeps, how to go on."""
        node = next((n for n in self.watch.lost if n["NodeID"] == node_id), {"NodeID": node_id}) \
            if self.watch else {"NodeID": node_id}
        try:
            kept = SnapshotStore(self.cfg.store_uri(), create=False).manifest("latest")
            keeps = f"keeps {kept.version} ({kept.env_steps:,} env steps, {kept.learner_updates:,} updates)"
        except Exception:  # noqa: BLE001 - no version yet, or the store cannot be read from here
            keeps = "holds no snapshot of this run yet"
        return (f"the learner's node {describe(node)} was lost at {status.env_steps:,} env steps and "
                f"{status.updates:,} updates; the store {redact(self.cfg.store_uri())} {keeps}: run the same "
                f"command with --resume auto to continue from its latest snapshot")

    def _update(self, status: Status, metrics: MetricsLog, check_store: bool = True) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            stats = ray.get(self.learner.stats.remote())
        except RayActorError as exc:
            self._learner_failed(exc, status)
            return
        status.env_steps, status.updates = stats["env_steps"], stats["learner_updates"]
        status.snapshot_block_ms = stats.get("snapshot_block_ms_median", status.snapshot_block_ms)
        status.replay_size = stats["replay_size"]
        status.policy_lag = stats["metrics"].get("policy_lag", 0.0)
        status.worker_restarts = stats["worker_restarts"]
        status.collected = stats["collected_steps"]
        status.steps_ahead = stats["steps_ahead"]
        status.workers_paused_s = stats["workers_paused_s"]
        self._worker_nodes = stats["worker_nodes"]
        for i, node in self._worker_nodes.items():
            self._ran_on.setdefault(node, set()).add(i)
        if stats["metrics"]:
            metrics.record("learner", status.updates, stats["metrics"])
        try:
            writer = ray.get(self.writer.status.remote(), timeout=30)
        except (RayActorError, GetTimeoutError):  # the writer is restarting: keep the last known version
            return
        status.last_snapshot = writer.get("last_version") or status.last_snapshot
        if check_store:
            raise_if_store_failed(writer)

    def stop_workers(self, timeout_s: float = 60.0) -> None:
        """Ask every rollout worker to end its loop, and wait (bounded) until the loops have ended.

        The learner is told first: a worker Ray restarts (its node lost) re-runs its loop, and ends it at
        its first ask, whatever became of its stop call (before, the loop went on collecting through the
        catch-up, which then owed updates for minutes)."""
        import ray

        if not self.learner_lost:
            self.learner.end_collection.remote()
        for w in self.workers:
            w.stop.remote()
        ray.wait(list(self._runs), num_returns=len(self._runs), timeout=timeout_s)

    def finish(self, status: Status, metrics: MetricsLog, catch_up: bool = True,
               snapshot: bool = True) -> dict[str, Any]:
        import ray
        from ray.exceptions import GetTimeoutError

        if not self.workers:
            return {"placement": self.placement, "placement_text": self.placement_text()}
        if self.learner_lost:  # nothing to catch up or snapshot: the last stored version is what is left
            self.stop_workers(timeout_s=30)
            self._watch_nodes(status, force=True)
            self.placement["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
            return {"placement": self.placement, "placement_text": self.placement_text()}
        self.stop_workers()
        self._watch_nodes(status, force=True)  # a node lost near the end, seen once its workers' loops ended
        self.learner.stop.remote()
        ray.get(self.learner_run, timeout=120)
        if not snapshot:  # the store is failing: nothing more to write there
            self._update(status, metrics, check_store=False)
            return {"placement": self.placement, "placement_text": self.placement_text()}
        # The catch-up takes a minute or more at the default ratio: the progress display follows its updates.
        caught_up = self.learner.catch_up.remote(timeout_s=600, updates=catch_up)
        final = get_reporting(caught_up, lambda: self._update(status, metrics, check_store=False))["learner_updates"]

        def wait(left: float) -> Manifest | None:
            try:  # the writer's own wait returns None after `left`; ray.get is bounded should the call hang
                return self._writer("wait", left, get_timeout_s=left + 30)
            except GetTimeoutError:
                return None

        def resubmit(left: float) -> None:
            try:
                ray.get(self.learner.catch_up.remote(timeout_s=600, updates=False), timeout=max(left, 1.0))
            except GetTimeoutError:
                pass

        timeout_s = self.cfg.run.store_timeout_s
        manifest = await_final_snapshot(wait, resubmit, final, timeout_s)
        self._update(status, metrics, check_store=False)
        self.placement["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
        result: dict[str, Any] = {"placement": self.placement, "placement_text": self.placement_text()}
        if manifest is None:
            result["error"] = final_not_stored(final, timeout_s, status.last_snapshot, redact(self.cfg.store_uri()))
            return result
        result["version"] = manifest.version
        return result

    def _writer(self, method: str, *args: Any, patience_s: float = 120.0, get_timeout_s: float | None = None) -> Any:
        """Call the checkpoint writer, waiting out a restart (Ray restarts it when it is killed); each
        call waited for at most `get_timeout_s` (GetTimeoutError)."""
        import ray
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + patience_s
        warned = False
        while True:
            try:
                return ray.get(getattr(self.writer, method).remote(*args), timeout=get_timeout_s)
            except RayActorError as exc:  # ActorUnavailableError included: restarting
                # Past the patience, wait on only while Ray says the writer is coming back: a restart on a
                # loaded machine may take minutes, a dead actor never returns.
                if time.monotonic() > deadline and _actor_state(self.writer) not in ("RESTARTING", "PENDING_CREATION"):
                    raise
                if not warned:
                    log.warning("checkpoint writer unavailable (%s); waiting while Ray restarts it",
                                type(exc).__name__)
                    warned = True
                time.sleep(0.5)

    def evaluator(self, best_score: float) -> PeriodicEval:
        backend = RayEval(self.cfg) if self.cfg.eval.every_updates > 0 else InlineEval(None)
        return PeriodicEval(self.cfg, backend, self._tag_best, best_score)

    def _tag_best(self, version: str, score: float) -> None:
        self._writer("tag", version, BEST_TAG)
        self.learner.note_best_eval.remote(score)

    def close(self) -> None:
        """Every actor of the run goes, also after a failure; Ray too when this run started it."""
        import ray

        writer = getattr(self, "writer", None)
        if writer is not None:  # its lease first, so the same command can run again at once (--resume auto)
            try:
                ray.get(writer.release_lease.remote(), timeout=15)
            except Exception:  # noqa: BLE001 - gone with its node, or stuck: the driver releases it below
                pass
        for actor in [*self.workers, getattr(self, "learner", None), getattr(self, "replay", None), writer]:
            if actor is not None:
                ray.kill(actor)
        if writer is not None:
            self._release_lease()
        # The learner's node lost: this driver is done with the cluster; disconnecting stops Ray's streamed
        # worker logs (recovering lost objects, ...), which would otherwise print after the run's one line.
        if self._started_ray or self.learner_lost:
            ray.shutdown()

    def _release_lease(self) -> None:
        """Delete the store's lease if it still names this run (a writer that died with its node), bounded:
        otherwise it expires on its own after its TTL. A writer of this run still alive somewhere (a node
        cut off, not dead) finds it gone at its next renewal and stops saving."""
        uri = self.cfg.store_uri()
        try:
            if bounded(lambda: release_owner(Root(uri, timeout_s=None), self.owner), 20.0,
                       lambda: TimeoutError("the store did not answer")):
                log.info("released this run's lease on %s", redact(uri))
        except Exception as exc:  # noqa: BLE001 - best effort: the lease expires on its own
            log.warning("could not release this run's lease on %s (%s): it expires on its own", redact(uri), exc)


def _actor_state(actor: Any) -> str:
    """Ray's state of an actor (ALIVE, RESTARTING, DEAD, ...), or UNKNOWN when it cannot be read."""
    try:  # the GCS's actor table: works without the dashboard that ray.util.state needs
        from ray._private.state import state

        return str(state.actor_table(actor._actor_id.hex()).get("State", "UNKNOWN"))
    except Exception:  # noqa: BLE001 - a private API, read best effort
        return "UNKNOWN"


def _node_text(node: dict[str, Any]) -> str:
    """A node as the summary names it: address (host name, and the node name where it says more), and the
    start of its node id, which tells apart nodes that share an address (several on one machine)."""
    addr, host, name = (node.get(k) or "?" for k in ("NodeManagerAddress", "NodeManagerHostname", "NodeName"))
    label = host if name in (addr, host) else f"{host}, {name}"
    return f"{addr} ({label}) node {str(node.get('NodeID', '?'))[:8]}"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _mkl_preload_env(setting: str) -> dict[str, str]:
    """On the learner's node: the environment that preloads learner/mkl_amd.py's library, under the
    driver's FLEET_MKL_AVX512 setting ({} where it does not apply, or on any error there)."""
    try:
        return mkl_amd.preload_env(setting=setting)
    except Exception:  # noqa: BLE001 -- a speed-up only: never the reason a run does not start
        log.warning("no MKL AVX-512 preload for the learner", exc_info=True)
        return {}
