"""`fleet bench env [--json] [--steps N] [--repeats R]`: raw embedded-simulator steps/s, one process.

Counts everything a rollout worker pays per step except the policy: physics,
traffic, the 84x84 frame, the vector, and the resets of finished episodes. Actions
are the warm-up distribution (throttle-biased random), so episodes are short and
resets frequent: a pessimistic mix. The env is built (and the track raster
painted) before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.bench("env", "embedded simulator steps/s in one process, random warm-up actions, resets included",
                  run)
    p.add_argument("--steps", type=int, default=3000, help="env steps per run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--seed", type=int, default=0, help="env and action seed")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU core (Linux)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def measure(steps: int, repeats: int, seed: int = 0) -> dict[str, object]:
    """Steps/s of `repeats` runs of `steps` steps each, plus episodes and resets seen."""
    import numpy as np

    from rollout_workers.envs.embedded import make_env
    from rollout_workers.exploration import ExplorationConfig, warmup_action

    env = make_env(seed=seed)
    rng = np.random.default_rng(seed)
    cfg = ExplorationConfig()
    env.reset()
    for _ in range(50):  # warm caches and code paths before timing
        _, _, term, trunc, _ = env.step(warmup_action(rng, cfg))
        if term or trunc:
            env.reset()
    runs, episodes = [], 0
    for _ in range(repeats):
        env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(warmup_action(rng, cfg))
            if term or trunc:
                env.reset()
                episodes += 1
        runs.append(steps / (time.perf_counter() - start))
    env.close()
    return {
        "steps_per_s": statistics.median(runs),
        "runs_steps_per_s": [round(r, 1) for r in runs],
        "steps": steps,
        "repeats": repeats,
        "episodes": episodes,
        "mean_episode_steps": steps * repeats / max(episodes, 1),
    }


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.repeats < 1:
        raise UserError("--steps and --repeats must be >= 1")
    if args.cpu is not None:
        if not hasattr(os, "sched_setaffinity"):
            raise UserError("--cpu needs Linux (os.sched_setaffinity)")
        os.sched_setaffinity(0, {args.cpu})
    result = measure(args.steps, args.repeats, args.seed)
    result.update(
        cpu_count=os.cpu_count(),
        pinned_cpu=args.cpu,
        load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        python=platform.python_version(),
        machine=platform.machine(),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"embedded env: {result['steps_per_s']:.0f} steps/s (median of {args.repeats} runs of "
              f"{args.steps} steps; runs {result['runs_steps_per_s']}; {result['episodes']} episodes, "
              f"1-min load average {result['load_avg_1m']})")
    return 0
