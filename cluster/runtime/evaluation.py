"""Evaluation of a stored snapshot on parallel evaluation workers (or in-process)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from checkpoint_store.fs import redact
from checkpoint_store.store import SnapshotStore
from cluster.runtime.envs import make_factory
from cluster.runtime.experiment import ExperimentConfig, for_evaluation, load
from cluster.runtime.ray_setup import init_ray
from cluster.runtime.resume import Resume
from learner.common.errors import UserError
from learner.networks import Policy, policy_components, policy_weights
from rollout_workers.evaluation import EvalReport, EvaluationWorker, summarize


def evaluate_snapshot(ref: str, workers: int, episodes: int, seed: int | None = None,
                      local: bool = False, address: str | None = None,
                      base: ExperimentConfig | None = None, overrides: dict[str, Any] | None = None,
                      say: Callable[[str], None] = print, final: bool = False) -> EvalReport:
    """Policy-only load of `URI[@version]`, then `episodes` deterministic episodes on the validation seeds
    (the test seeds with `final`) of the config's env.

    What runs comes from `base` (the user's config; default: the packaged one), never from the
    snapshot's manifest (see `experiment.for_evaluation`)."""
    cfg, weights, label = load_for_evaluation(ref, base, overrides, say)
    seeds = _seeds(cfg, episodes, seed, final)
    return summarize(_episodes([cfg], weights, seeds, workers, local, address)[0], label)


LEVEL_COMPLETION = 0.9
"""The learning level: route completion the deterministic policy must reach ..."""
LEVEL_RETURN_FRACTION = 0.8
"""... with at least this fraction of the scripted driver's mean return on the same episodes."""


def at_level(route_completion: float, mean_return: float, scripted_return: float) -> bool:
    return route_completion >= LEVEL_COMPLETION and mean_return >= LEVEL_RETURN_FRACTION * scripted_return


def layout_config(cfg: ExperimentConfig, layout: str) -> ExperimentConfig:
    """`cfg` with the embedded simulator on one road layout."""
    return replace(cfg, embedded=replace(cfg.embedded, layouts=(layout,)))


def scripted_references(cfg: ExperimentConfig, layouts: Sequence[str], episodes: int, seed: int | None = None,
                        final: bool = False) -> dict[str, dict[str, float]]:
    """The scripted driver (`scripted_reference`) on each layout, on the seeds `evaluate_layouts` drives
    (`seed`, when given, is the first validation seed): what a policy's figures there are held against."""
    from cluster.runtime.run import scripted_reference

    if seed is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, seed=seed))
    return {name: scripted_reference(layout_config(cfg, name), episodes, final=final) for name in layouts}


def evaluate_layouts(ref: str, layouts: Sequence[str], workers: int, episodes: int, seed: int | None = None,
                     local: bool = False, address: str | None = None, base: ExperimentConfig | None = None,
                     overrides: dict[str, Any] | None = None, say: Callable[[str], None] = print,
                     final: bool = False) -> tuple[dict[str, EvalReport], dict[str, dict[str, float]]]:
    """`evaluate_snapshot` on each road layout of the embedded simulator apart: the same `episodes` seeds on
    every layout, one report per layout (training and held-out layouts are never averaged together here),
    and the scripted driver's figures on the same episodes (`scripted_references`), on the same config: the
    snapshot's simulator parameters with the user's `--set` over them."""
    cfg, weights, label = load_for_evaluation(ref, base, overrides, say)
    if cfg.run.env != "embedded":
        raise UserError(f"road layouts are the embedded simulator's; env {cfg.run.env!r} has none")
    seeds = _seeds(cfg, episodes, seed, final)
    cfgs = [layout_config(cfg, name) for name in layouts]
    runs = _episodes(cfgs, weights, seeds, workers, local, address)
    reports = {name: summarize(eps, f"{label} on {name}") for name, eps in zip(layouts, runs)}
    return reports, scripted_references(cfg, layouts, episodes, seed=seed, final=final)


def _seeds(cfg: ExperimentConfig, episodes: int, seed: int | None, final: bool) -> list[int]:
    if seed is not None:
        if final:
            raise UserError("--final evaluates on the test seeds (eval.test_seed); it takes no --seed")
        return [seed + i for i in range(episodes)]
    return cfg.eval.seeds(episodes, final=final)


def _episodes(cfgs: Sequence[ExperimentConfig], weights: dict[str, Any], seeds: list[int], workers: int,
              local: bool, address: str | None) -> list[list[dict[str, float]]]:
    """The episodes of `seeds` under each config, in this process or on evaluation actors (one Ray for all)."""
    workers = min(workers, len(seeds))  # a local Ray is started with one logical CPU per worker: no idle ones
    if local or workers <= 1:
        out = []
        for cfg in cfgs:
            worker = EvaluationWorker(make_factory(cfg, 0), cfg.network)
            worker.load(weights)
            out.append(worker.run(seeds))
        return out
    return _on_ray(cfgs, weights, seeds, workers, address)


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
                        say: Callable[[str], None], components: Sequence[str] | None = None,
                        ) -> tuple[ExperimentConfig, dict[str, Any], str]:
    """The evaluation config, weights and a `uri@version` label of snapshot `ref`.

    The weights are those of `components`, by name; by default the policy that the config's `eval.policy`
    names, as `Policy` weights. Only those are read; a reader never creates the store location."""
    where = Resume.parse(ref)
    store = SnapshotStore(where.uri, create=False)
    manifest = store.manifest(where.version)
    cfg, notes = for_evaluation(manifest.config, base or load(None, overrides), overrides)
    for note in notes:
        say(note)
    names = list(components) if components is not None else list(policy_components(cfg.eval.policy))
    if components is None and (missing := [n for n in names if n not in manifest.components]):
        raise UserError(f"snapshot {redact(where.uri)}@{manifest.version} holds no {cfg.eval.policy} actor "
                        f"(no {', '.join(missing)}); evaluate the actor it has with --set eval.policy=online")
    snap = store.get(manifest.version, components=names)  # the resolved version: `latest` may move meanwhile
    weights = ({name: snap.state[name] for name in names} if components is not None
               else policy_weights(snap.state, cfg.eval.policy))
    return cfg, weights, f"{redact(where.uri)}@{snap.manifest.version}"


def _on_ray(cfgs: Sequence[ExperimentConfig], weights: dict[str, Any], seeds: list[int], workers: int,
            address: str | None = None) -> list[list[dict[str, float]]]:
    """On evaluation actors. The cluster is `address`, else $RAY_ADDRESS, else a local instance: never the
    address the snapshot was trained on, which may be long gone."""
    import os

    import ray

    from cluster.runtime.periodic_eval import RayEval

    if not seeds:
        return [[] for _ in cfgs]
    cfg = cfgs[0]
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or None
        init_ray(address, num_cpus=max(os.cpu_count() or 1, workers),
                 resources={k: float(workers) for k in cfg.worker_resources()},
                 allow_without_auth=cfg.run.allow_ray_without_auth)
    try:
        out = []
        for each in cfgs:
            evaluators = RayEval(each, workers=min(workers, len(seeds)))
            try:
                out.append(evaluators.wait(evaluators.start(weights, seeds), timeout_s=None))
            finally:
                evaluators.close()
        return out
    finally:
        if started:
            ray.shutdown()


TEST_SET_LOG = "test-set-uses.jsonl"


def record_test_use(runs_dir: Path, what: dict[str, Any]) -> int:
    """Append one use of the test set (`--final`) to <runs_dir>/test-set-uses.jsonl; returns how many uses it
    now holds. The test seeds and held-out layouts are for reporting only: every look at them is on record."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / TEST_SET_LOG
    with path.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **what}) + "\n")
    return sum(1 for line in path.read_text().splitlines() if line.strip())
