"""A run in one process (`fleet train --local`): workers step in turn, the learner updates between them."""

from __future__ import annotations

from typing import Any

from checkpoint_store.fs import abandon
from checkpoint_store.writer import CheckpointWriter, WriterStatus, snapshot_state
from cluster.runtime.experiment import ExperimentConfig
from cluster.runtime.periodic_eval import BEST_TAG, InlineEval, PeriodicEval
from cluster.runtime.progress import MetricsLog, Status
from cluster.runtime.resume import Restored
from cluster.runtime.run import Run, _absorb_reports, final_not_stored
from learner.learner import LearnerStats


class LocalRun(Run):
    """Everything in this process: workers step in turn, the learner updates between them."""

    def __init__(self, cfg: ExperimentConfig, restored: Restored | None, owner: str | None = None) -> None:
        from cluster.runtime.envs import make_factory
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
        self.node_losses: list[dict[str, Any]] = []

    def start(self) -> None:
        pass

    def evaluator(self, best_score: float) -> PeriodicEval:
        from cluster.runtime.envs import make_factory
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
        files = self.learner.replay_exporter.export(self.writer.stored_files()) if self.cfg.learner.save_replay else None
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

    def _learner_stats(self, status: Status) -> LearnerStats:
        return self.learner.stats()

    def _writer_status(self) -> WriterStatus:
        return self.writer.status()

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
            return {"error": final_not_stored(self.learner.stats().learner_updates, timeout_s,
                                              status.last_snapshot, self.writer.store.uri)}
        return {"version": manifest.version}
