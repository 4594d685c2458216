"""Evaluation during training: the newest snapshot every `eval.every_updates` updates; `best` tag.

The driver reads the snapshot's policy components from the store (a policy-only
load, so the evaluated weights are exactly a stored version's), runs the episodes
on evaluation workers without blocking the training loop (Ray) or inline
(`--local`), records the metrics, and points the `best` tag at the version with
the highest driving score so far, through the checkpoint writer (the store's one
writer). A tagged version is pinned against retention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from checkpoint_store.store import SnapshotStore
from cluster.runtime.progress import MetricsLog, Status
from learner.networks import policy_components, policy_weights
from rollout_workers.evaluation import EvalReport, summarize

if TYPE_CHECKING:
    from cluster.runtime.experiment import ExperimentConfig

log = logging.getLogger(__name__)

BEST_TAG = "best"

OnBest = Callable[[str, float], Any]
"""(version, driving score) -> anything: points the `best` tag at the version and remembers the score."""


class PeriodicEval:
    """Decides when to evaluate, runs it through a backend, keeps the best score."""

    def __init__(self, cfg: ExperimentConfig, backend: Any, on_best: OnBest, best_score: float = float("-inf")) -> None:
        self.cfg = cfg
        self.every = cfg.eval.every_updates
        self.backend = backend
        self.on_best = on_best
        self.store = SnapshotStore(cfg.store_uri())
        self.best_score = best_score
        self.best_return = float("-inf")
        """The best snapshot's mean return: among equal driving scores (1.00 is common once it drives), the
        one that earned more is better."""
        self.best_version: str | None = None
        self.reports: list[EvalReport] = []
        self._next = self.every
        self._running: tuple[str, int, Any] | None = None
        self._last_version: str | None = None

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def poll(self, status: Status, metrics: MetricsLog) -> None:
        """Collect a finished evaluation; start one when due and a new version exists. Never blocks on Ray."""
        if not self.enabled:
            return
        if self._running is not None:
            version, updates, handle = self._running
            try:
                episodes = self.backend.result(handle)
            except Exception as exc:  # an evaluation env that fails costs that evaluation, not the run
                log.warning("evaluation of %s failed: %r", version, exc)
                self._running = None
                status.last_eval = f"{version} failed"
                return
            if episodes is None:
                return
            self._running = None
            self._finish(version, updates, episodes, status, metrics)
        version = status.last_snapshot
        if status.updates < self._next or version in ("-", self._last_version):
            return
        self._start(version)

    def finish(self, status: Status, metrics: MetricsLog) -> None:
        """At the end of a run: wait for a running evaluation, then evaluate the final version."""
        if not self.enabled:
            return
        try:
            self._finish_all(status, metrics)
        except Exception as exc:  # the run's snapshots are saved; a failed evaluation only loses its score
            log.warning("final evaluation failed: %r", exc)
            status.last_eval = f"failed ({type(exc).__name__})"

    def _finish_all(self, status: Status, metrics: MetricsLog) -> None:
        if self._running is not None:
            version, updates, handle = self._running
            self._running = None
            self._finish(version, updates, self.backend.wait(handle), status, metrics)
        if status.last_snapshot not in ("-", self._last_version):
            self._start(status.last_snapshot)
            version, updates, handle = self._running  # type: ignore[misc]
            self._running = None
            self._finish(version, updates, self.backend.wait(handle), status, metrics)

    def _start(self, version: str) -> None:
        snap = self.store.get(version, components=list(policy_components(self.cfg.eval.policy)))
        weights = policy_weights(snap.state, self.cfg.eval.policy)
        seeds = self.cfg.eval.seeds()
        self._last_version = version
        updates = snap.manifest.learner_updates
        self._next = updates + self.every
        self._running = (version, updates, self.backend.start(weights, seeds))

    def _finish(self, version: str, updates: int, episodes: list[dict[str, float]], status: Status,
                metrics: MetricsLog) -> None:
        report = summarize(episodes, f"{self.store.uri}@{version}")
        self.reports.append(report)
        metrics.record("eval", updates, {
            "driving_score": report.driving_score, "route_completion": report.mean_route_completion,
            "return": report.mean_return, "collisions_per_km": report.collisions_per_km,
            "off_road_rate": report.off_road_rate, "mean_speed": report.mean_speed,
        })
        mark = ""
        if (report.driving_score, report.mean_return) > (self.best_score, self.best_return):
            self.best_score, self.best_return, self.best_version = report.driving_score, report.mean_return, version
            self.on_best(version, report.driving_score)
            mark = " best"
        status.last_eval = f"{version} score {report.driving_score:.2f}{mark}"
        log.info("evaluation of %s at %d updates: driving score %.3f%s", version, updates,
                 report.driving_score, mark)


class InlineEval:
    """`--local`: episodes run in this process when started; `result` hands them back."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def start(self, weights: dict[str, Any], seeds: list[int]) -> list[dict[str, float]]:
        self.worker.load(weights)
        return self.worker.run(seeds)

    def result(self, handle: list[dict[str, float]]) -> list[dict[str, float]]:
        return handle

    wait = result

    def close(self) -> None:
        pass


class RayEval:
    """Evaluation actors, created once (per run, or per `fleet evaluate`); episodes split across them."""

    def __init__(self, cfg: ExperimentConfig, workers: int | None = None) -> None:
        import ray

        from cluster.runtime.actors import EvaluatorActor

        # Spread over the nodes: Ray would otherwise pack them on the first node with room, whose simulators
        # (and, on a CARLA node, whose GPU) then run every episode while the other nodes idle.
        cls = ray.remote(num_cpus=1, resources=cfg.worker_resources(), scheduling_strategy="SPREAD")(EvaluatorActor)
        self.actors = [cls.remote(cfg, i) for i in range(max(cfg.eval.workers if workers is None else workers, 1))]

    def start(self, weights: dict[str, Any], seeds: list[int]) -> list[Any]:
        import ray

        wref = ray.put(weights)
        parts = [seeds[i::len(self.actors)] for i in range(len(self.actors))]
        return [a.run.remote(wref, part) for a, part in zip(self.actors, parts) if part]

    def result(self, refs: list[Any], timeout: float = 0) -> list[dict[str, float]] | None:
        import ray

        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            return None
        return _by_seed(ray.get(refs))

    def wait(self, refs: list[Any], timeout_s: float | None = 900.0) -> list[dict[str, float]]:
        """The episodes of `start`, sorted by seed; None as timeout waits as long as they take."""
        if timeout_s is None:
            import ray

            return _by_seed(ray.get(refs))
        out = self.result(refs, timeout=timeout_s)
        if out is None:
            raise TimeoutError(f"evaluation did not finish within {timeout_s:.0f}s (evaluation workers "
                               "not scheduled? they need one CPU each, plus the workers' custom resource)")
        return out

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def _by_seed(parts: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """The evaluators' episodes as one list, sorted by seed."""
    return sorted((ep for part in parts for ep in part), key=lambda ep: ep["seed"])
