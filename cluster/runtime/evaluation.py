"""Evaluation of a stored snapshot on parallel evaluation workers (or in-process)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from checkpoint_store.fs import redact
from checkpoint_store.store import SnapshotStore
from cluster.runtime.envs import make_factory
from cluster.runtime.experiment import ExperimentConfig, for_evaluation, load
from cluster.runtime.ray_setup import init_ray
from cluster.runtime.resume import Resume
from learner.common.errors import UserError
from learner.networks import POLICY_COMPONENTS, Policy
from rollout_workers.evaluation import EvalReport, EvaluationWorker, summarize


def evaluate_snapshot(ref: str, workers: int, episodes: int, seed: int | None = None,
                      local: bool = False, address: str | None = None,
                      base: ExperimentConfig | None = None, overrides: dict[str, Any] | None = None,
                      say: Callable[[str], None] = print) -> EvalReport:
    """Policy-only load of `URI[@version]`, then `episodes` deterministic episodes on held-out seeds.

    What runs comes from `base` (the user's config; default: the packaged one), never from the
    snapshot's manifest (see `experiment.for_evaluation`)."""
    cfg, weights, label = load_for_evaluation(ref, base, overrides, say)
    first = cfg.eval.seed if seed is None else seed
    seeds = [first + i for i in range(episodes)]
    workers = min(workers, episodes)  # a local Ray is started with one logical CPU per worker: no idle ones
    if local or workers <= 1:
        worker = EvaluationWorker(make_factory(cfg, 0), cfg.network)
        worker.load(weights)
        return summarize(worker.run(seeds), label)
    return summarize(_on_ray(cfg, weights, seeds, workers, address), label)


def video_of_snapshot(ref: str, path: Path, seed: int | None = None, base: ExperimentConfig | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One deterministic episode of the snapshot's policy as an animated GIF (rollout_workers.video)."""
    from rollout_workers.video import record_episode

    cfg, weights, _ = load_for_evaluation(ref, base, overrides, lambda note: None)
    policy = Policy(cfg.network)
    policy.load_components(weights)
    env = make_factory(cfg, 0)(cfg.eval.seed if seed is None else seed)
    try:
        if not hasattr(env, "overview"):
            raise UserError(f"--video draws the embedded simulator's top-down view; env {cfg.run.env!r} has none")
        return record_episode(env, lambda obs: policy.act(obs["image"], obs["vector"]),
                              cfg.eval.seed if seed is None else seed, path)
    finally:
        env.close()


def load_for_evaluation(ref: str, base: ExperimentConfig | None, overrides: dict[str, Any] | None,
                        say: Callable[[str], None], components: Sequence[str] = POLICY_COMPONENTS,
                        ) -> tuple[ExperimentConfig, dict[str, Any], str]:
    """The evaluation config, the weights of `components` and a `uri@version` label of snapshot `ref`.

    Loads only those components (by default the policy's); a reader never creates the store location."""
    where = Resume.parse(ref)
    snap = SnapshotStore(where.uri, create=False).get(where.version, components=list(components))
    cfg, notes = for_evaluation(snap.manifest.config, base or load(None, overrides), overrides)
    for note in notes:
        say(note)
    weights = {name: snap.state[name] for name in components}
    return cfg, weights, f"{redact(where.uri)}@{snap.manifest.version}"


def _on_ray(cfg: ExperimentConfig, weights: dict[str, Any], seeds: list[int], workers: int,
            address: str | None = None) -> list[dict[str, float]]:
    """On evaluation actors. The cluster is `address`, else $RAY_ADDRESS, else a local instance: never the
    address the snapshot was trained on, which may be long gone."""
    import os

    import ray

    from cluster.runtime.periodic_eval import RayEval

    if not seeds:
        return []
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or None
        init_ray(address, num_cpus=max(os.cpu_count() or 1, workers),
                 resources={k: float(workers) for k in cfg.worker_resources()},
                 allow_without_auth=cfg.run.allow_ray_without_auth)
    try:
        evaluators = RayEval(cfg, workers=min(workers, len(seeds)))
        try:
            return evaluators.wait(evaluators.start(weights, seeds), timeout_s=None)
        finally:
            evaluators.close()
    finally:
        if started:
            ray.shutdown()
