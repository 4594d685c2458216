"""Evaluation of a stored snapshot on parallel evaluation workers (or in-process)."""

from __future__ import annotations

from typing import Any

from checkpoint_store.store import SnapshotStore
from cluster.envs import make_factory
from cluster.experiment import from_manifest
from cluster.runtime import Resume
from learner.networks import POLICY_COMPONENTS
from rollout_workers.evaluation import EvalReport, EvaluationWorker, summarize


def evaluate_snapshot(ref: str, workers: int, episodes: int, seed: int | None = None,
                      local: bool = False, address: str | None = None) -> EvalReport:
    """Policy-only load of `URI[@version]`, then `episodes` deterministic episodes on held-out seeds."""
    where = Resume.parse(ref)
    store = SnapshotStore(where.uri)
    snap = store.get(where.version, components=list(POLICY_COMPONENTS))
    cfg = from_manifest(snap.manifest.config)
    weights = {name: snap.state[name] for name in POLICY_COMPONENTS}
    first = cfg.eval.seed if seed is None else seed
    seeds = [first + i for i in range(episodes)]
    label = f"{where.uri}@{snap.manifest.version}"
    if local or workers <= 1:
        worker = EvaluationWorker(make_factory(cfg, 0), cfg.network)
        worker.load(weights)
        return summarize(worker.run(seeds), label)
    return summarize(_on_ray(cfg, weights, seeds, workers, address), label)


def _on_ray(cfg: Any, weights: dict[str, Any], seeds: list[int], workers: int,
            address: str | None = None) -> list[dict[str, float]]:
    """On evaluation actors. The cluster is `address`, else $RAY_ADDRESS, else a local instance: never the
    address the snapshot was trained on, which may be long gone."""
    import os

    import ray

    from cluster.actors import EvaluatorActor

    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or None
        custom = {k: float(workers) for k in cfg.worker_resources()} if address is None else {}
        ray.init(address=address, include_dashboard=False,
                 **({"num_cpus": max(os.cpu_count() or 1, workers), "resources": custom} if address is None else {}))
    try:
        cls = ray.remote(num_cpus=1, resources=cfg.worker_resources())(EvaluatorActor)
        actors = [cls.remote(cfg, i) for i in range(min(workers, len(seeds)))]
        wref = ray.put(weights)
        parts = [seeds[i::len(actors)] for i in range(len(actors))]
        results = ray.get([a.run.remote(wref, part) for a, part in zip(actors, parts)])
        for a in actors:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
    return sorted((ep for part in results for ep in part), key=lambda ep: ep["seed"])
