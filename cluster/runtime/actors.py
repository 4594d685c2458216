"""Thin Ray-facing wrappers: each holds one plain component and only adds transport.

They are decorated with `ray.remote` in `cluster/runtime/ray_run.py`, never here, so this
module imports without starting Ray and the wrappers can be tested in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import ray
import torch
from ray import ObjectRef
from ray.actor import ActorHandle

from checkpoint_store.writer import SnapshotStager
from cluster.runtime.envs import make_factory
from learner.common.chunks import Chunk
from learner.common.interfaces import PolicyParams, ReplayFiles, SnapshotMeta, SnapshotState, Weights
from learner.learner import Learner, LearnerStats
from learner.replay import BoundedSender
from rollout_workers.evaluation import EvaluationWorker
from rollout_workers.worker import RolloutWorker, WorkerReport

if TYPE_CHECKING:
    from cluster.runtime.experiment import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass
class RunStats(LearnerStats):
    """The learner actor's stats: the learner's, and what it knows of the run's workers."""

    worker_restarts: int = 0
    """Worker (re)starts beyond the first of each (a node lost, an actor killed)."""
    collected_steps: int = 0
    """Env steps the workers reported collecting (ahead of `env_steps` by what is in flight)."""
    steps_ahead: int = 0
    """How far collection is ahead of the replay ratio; the workers wait beyond `run.max_ahead_steps`."""
    worker_nodes: dict[int, str] = field(default_factory=dict)
    """Worker id -> the node it runs on now."""
    workers_paused_s: float = 0.0
    """Time the workers were held back by the ratio."""


PULL_IDLE_S = 0.02
"""The learner's pause after a pull from the replay actor that brought nothing."""


class WeightsPoller:
    """Asks the learner for newer weights without ever blocking the env loop.

    A call sends an ask when none is in flight; while one is (`in_flight`), the worker calls every step
    and the answer is taken at the first call that finds it ready."""

    def __init__(self, learner: ActorHandle) -> None:
        self.learner = learner
        self._pending: ObjectRef | None = None

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def __call__(self, version: int) -> Weights | None:
        if self._pending is None:
            self._pending = self.learner.weights_if_newer.remote(version)
            return None
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        ref, self._pending = self._pending, None
        return ray.get(ref)


class WorkerActor:
    def __init__(self, worker_id: int, cfg: ExperimentConfig, replay_name: str, learner_name: str) -> None:
        """`replay_name` and `learner_name` name actors of this job; a restarted worker finds them again."""
        self.cfg = cfg
        replay, learner = ray.get_actor(replay_name), ray.get_actor(learner_name)
        self.learner = learner
        # Every (re)start is counted (restarts = starts - workers), with the node it runs on now.
        learner.register_worker.remote(worker_id, ray.get_runtime_context().get_node_id())
        self.worker: RolloutWorker = RolloutWorker(worker_id, make_factory(cfg, worker_id), cfg.network,
                                                   cfg.exploration, cfg.worker, seed=cfg.run.seed)
        self.sender: BoundedSender = BoundedSender(lambda chunk: replay.add.remote(chunk), cfg.worker.max_in_flight)
        self.poll = WeightsPoller(learner)
        self._stop: threading.Event = threading.Event()
        self._reports: list[WorkerReport] = []
        self._lock: threading.Lock = threading.Lock()

    def run(self) -> dict[str, int]:
        """Collect until stopped, or until the learner says collection is over, pacing to its replay ratio.

        A stop that arrived first is kept: Ray retries both calls on a restarted actor (a lost node), in
        either order. The learner's word covers a restart that lost the stop altogether."""
        try:
            unreported = 0
            while not self._stop.is_set():
                ahead = cast("int | None", ray.get(self.learner.ahead_steps.remote(unreported)))
                unreported = 0
                if ahead is None:  # the run has ended its collection
                    break
                if ahead > self.cfg.run.max_ahead_steps:
                    # Held back: the steps it has go now, for the learner to catch up on (counted as collected,
                    # they would otherwise keep the workers held back until they are sent).
                    self.worker.flush(self.sender.send)
                    self._stop.wait(0.05)
                    continue
                report = self.worker.collect(self.cfg.run.collect_steps, self.sender.send, self.poll)
                unreported = report.env_steps
                with self._lock:
                    self._reports.append(report)
            self.worker.flush(self.sender.send)
            self.sender.drain()
        finally:
            self.worker.close()
        return self.worker.stats()

    def stop(self) -> None:
        self._stop.set()

    def drain_reports(self) -> list[WorkerReport]:
        with self._lock:
            out, self._reports = self._reports, []
        return out


class LearnerActor:
    """Runs the learner loop in a thread of the actor so stats and weights stay answerable."""

    def __init__(self, cfg: ExperimentConfig, replay: ActorHandle, writer: ActorHandle,
                 restore: SnapshotState | None = None,
                 files: dict[str, bytes] | None = None) -> None:
        self.cfg = cfg
        self.replay = replay
        self.writer = writer
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1): a CPU update would use one core.
        torch.set_num_threads(cfg.learner.threads())
        self.learner = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner, seed=cfg.run.seed)
        self.learner.snapshot_copies = False  # the stager's copy into its buffers is the one copy
        if restore is not None:
            self.learner.restore(restore, files)
        # The replay actor was started at the restored replay's chunk count: the learner pulls from there.
        self._cursor = self.learner.memory.chunks_added
        self.collected = self.learner.env_steps  # steps the workers reported (restored runs: from here)
        self._pending: ObjectRef | None = None
        self._next_pull_at = 0.0  # monotonic time before which no new pull is sent (after an empty one)
        self._stager = SnapshotStager()
        self._stop = threading.Event()
        self.snapshots = 0
        self.worker_starts: dict[int, int] = {}
        self.worker_nodes: dict[int, str] = {}
        self._paused_s = 0.0
        self._paused_since: float | None = None
        self._collection_over = False

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _pull(self) -> list[Chunk]:
        """New chunks from the replay actor: one pull in flight at a time, taken only when ready.

        After a pull that brought nothing the next one waits PULL_IDLE_S, sleeping if no update is due:
        asked again at once, the learner and the replay actor each spent a third of a core on empty pulls
        at one worker (docs/benchmarks.md, "Scaling with workers")."""
        if self._pending is None:
            idle = self._next_pull_at - time.monotonic()
            if idle > 0:
                if self.learner.updates_allowed():
                    return []  # the updates run meanwhile
                self._stop.wait(idle)
            self._pending = self.replay.pull_new.remote(self._cursor)
            return []
        wait = 0 if self.learner.updates_allowed() else 0.05
        ready, _ = ray.wait([self._pending], timeout=wait)
        if not ready:
            return []
        pulled = ray.get(self._pending)
        chunks, self._cursor = pulled.chunks, pulled.cursor
        self._pending = None
        if not chunks:
            self._next_pull_at = time.monotonic() + PULL_IDLE_S
        return chunks

    def _sink(self, state: SnapshotState, meta: SnapshotMeta) -> None:
        files = self._replay_files() if self.cfg.learner.save_replay else None
        self._stager.submit(self.writer, state, dict(meta, config=self.cfg.public_dict()), files)
        self.snapshots += 1

    def _replay_files(self) -> Callable[[], ReplayFiles]:
        """The learner's memory at this snapshot, encoded on the stager's hand-over thread.

        Only segments changed since the writer's last *stored* version are encoded (a superseded save
        stored nothing, so its segments are sent again); the rest go as references to stored blobs.
        """
        export, writer, learner = self.learner.export_replay_later(), self.writer, self.learner

        def encode() -> ReplayFiles:
            start = time.perf_counter()
            try:
                previous = cast("dict[str, str]", ray.get(writer.stored_files.remote(), timeout=120))
            except Exception as exc:  # noqa: BLE001 -- encode everything rather than lose the replay
                log.warning("could not ask the checkpoint writer what it stored (%r); sending the whole replay",
                            exc)
                previous = {}
            files = export.encode(previous)
            learner.record(replay_export_s=time.perf_counter() - start,
                           replay_export_mb=export.encoded_bytes / 2**20)
            return files

        return encode

    def run(self) -> LearnerStats:
        while not self._stop.is_set():
            self.learner.step(self._pull, self._sink)
        return self.learner.stats()

    def stop(self) -> None:
        self._stop.set()

    def catch_up(self, timeout_s: float, updates: bool = True) -> LearnerStats:
        """After the workers stop: finish the updates the ratio still owes (unless `updates` is False,
        as on an interrupt), then a final snapshot."""
        deadline = time.monotonic() + timeout_s
        while updates and time.monotonic() < deadline:
            done = self.learner.step(self._pull, self._sink)
            if not done and self._pending is None and not self.learner.updates_allowed():
                if not self.learner.holding:
                    break
                self.learner.settle_replay()  # chunks held back by an export may allow more updates
        # A failed earlier hand-over (reported here) must not keep the final snapshot from being tried.
        try:
            self._stager.wait(max(deadline - time.monotonic(), 60))
        except Exception as exc:
            log.error("an earlier snapshot did not reach the checkpoint writer: %r", exc)
        # The final snapshot must reach the writer before the driver asks it to drain: calls from two
        # callers are not ordered. A writer restarted meanwhile (killed, node lost) loses the call: resend.
        for attempt in range(3):
            self.learner.snapshot(self._sink)
            try:
                submitted = self._stager.wait()  # the snapshot just staged: never None here
                if submitted is not None:
                    ray.get(submitted, timeout=max(deadline - time.monotonic(), 60))
                break
            except ray.exceptions.RayActorError as exc:
                log.warning("final snapshot not accepted by the checkpoint writer (%s); retry %d", exc, attempt + 1)
        return self.learner.stats()

    def ahead_steps(self, collected: int = 0) -> int | None:
        """Add a worker's newly collected steps; return how far collection is ahead of the ratio, or None
        once the run has ended its collection (`end_collection`): the worker then ends its loop.

        Counted from what the workers collected, not what the learner has pulled so far: while the
        learner lags behind the replay, the workers are held back instead of running on unbounded.
        """
        self.collected += collected
        if self._collection_over:
            return None
        ahead = self.learner.steps_ahead(self.collected)
        now = time.monotonic()
        if self._paused_since is not None:  # the time the workers were held back, for the summary
            self._paused_s += now - self._paused_since
        self._paused_since = now if ahead > self.cfg.run.max_ahead_steps else None
        return ahead

    def end_collection(self) -> None:
        """The run has its env steps: every worker's loop, a restarted one's too, ends at its next ask."""
        self._collection_over = True

    def weights_if_newer(self, version: int) -> Weights | None:
        return self.learner.weights_if_newer(version)

    def note_best_eval(self, score: float) -> None:
        """The driver's periodic evaluation found a new best; later snapshots carry the score."""
        self.learner.best_eval = score

    def register_worker(self, worker_id: int, node_id: str = "") -> None:
        self.worker_starts[worker_id] = self.worker_starts.get(worker_id, 0) + 1
        self.worker_nodes[worker_id] = node_id

    def stats(self) -> RunStats:
        return RunStats(**vars(self.learner.stats()),
                        worker_restarts=sum(n - 1 for n in self.worker_starts.values()),
                        collected_steps=self.collected, steps_ahead=self.learner.steps_ahead(self.collected),
                        worker_nodes=dict(self.worker_nodes), workers_paused_s=round(self._paused_s, 1))


class EvaluatorActor:
    def __init__(self, cfg: ExperimentConfig, worker_index: int) -> None:
        self.worker = EvaluationWorker(make_factory(cfg, worker_index), cfg.network)

    def run(self, weights: PolicyParams, seeds: list[int]) -> list[dict[str, float]]:
        self.worker.load(weights)
        return self.worker.run(seeds)
