"""`fleet bench rollout [--workers N] [--json]`: collection rate of the running system vs N raw envs.

One invocation measures, in this order:
1. the raw env rate: one embedded env stepped in this process with warm-up actions
   (what `fleet bench env` measures), median of several runs;
2. the acting rate: the same loop plus the worker's policy forward pass on every
   step (one CPU thread), which no distribution can hide;
3. the system: a local Ray run (`RayRun`, the same wiring as `fleet train`) with N
   rollout workers, the replay actor, the learner updating and publishing weights,
   and the checkpoint actor. After the learner has published weights (workers act
   with the policy), env steps/s ingested by the learner are measured over several
   windows. Pacing to the replay ratio is lifted (`run.max_ahead_steps` huge) so the
   figure is the rollout capacity, not the CPU learner's update speed;
4. the raw env rate again, so drift on a noisy machine shows.

efficiency = system steps/s / (N x raw steps/s); efficiency_vs_acting uses the
acting rate instead. Defaults: N = cores - 1 (one core left for the learner).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.bench("rollout", "env steps/s collected by the running system vs N times the raw env rate", run)
    p.add_argument("--workers", type=int, default=None, help="rollout workers (default: cores - 1)")
    p.add_argument("--window-s", type=float, default=10.0, help="seconds per measured window")
    p.add_argument("--windows", type=int, default=5, help="measured windows; the median is reported")
    p.add_argument("--raw-steps", type=int, default=2000, help="env steps per raw-rate run")
    p.add_argument("--raw-repeats", type=int, default=3, help="raw-rate runs before and after the system")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the measured run (e.g. agent.batch_size=32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def acting_rate(steps: int, repeats: int, seed: int = 0) -> float:
    """Steps/s of one env plus a policy forward pass per step, one thread, median of `repeats`."""
    import numpy as np
    import torch

    from learner.networks import NetworkConfig, Policy
    from rollout_workers.envs.embedded import make_env

    torch.set_num_threads(1)
    env, policy = make_env(seed=seed), Policy(NetworkConfig())
    rng = np.random.default_rng(seed)
    obs, _ = env.reset()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            action = policy.act(obs["image"], obs["vector"], 0.1, rng)
            obs, _, term, trunc, _ = env.step(action)
            if term or trunc:
                obs, _ = env.reset()
        runs.append(steps / (time.perf_counter() - start))
    env.close()
    return statistics.median(runs)


def system_rate(workers: int, window_s: float, windows: int, overrides: dict) -> dict[str, object]:
    """Median env steps/s ingested by the learner of a real local Ray run, once the policy acts."""
    import ray

    from cluster.runtime import experiment
    from cluster.runtime.progress import MetricsLog, Status
    from cluster.runtime.ray_run import RayRun
    from cluster.runtime.ray_setup import init_ray

    base = {
        "run.name": "bench-rollout", "run.env": "embedded", "run.workers": workers,
        "run.total_env_steps": 10**9, "run.max_ahead_steps": 10**9,
        "learner.learning_starts": 1000, "learner.snapshot_every": 500, "learner.save_replay": False,
        "eval.every_updates": 0,
    }
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        base.update({"run.runs_dir": tmp, "run.store": str(Path(tmp) / "store")})
        cfg = experiment.load(None, {**base, **overrides})
        init_ray(num_cpus=max(os.cpu_count() or 1, workers + 1), log_to_driver=False)
        runner = RayRun(cfg, None)
        status, metrics = Status(total_env_steps=cfg.run.total_env_steps), MetricsLog(Path(tmp) / "metrics")
        try:
            runner.start()
            deadline = time.monotonic() + 600
            while True:  # until the workers act with published weights
                runner.poll(status, metrics)
                stats = ray.get(runner.learner.stats.remote())
                if stats.metrics.get("policy_version", 0) > 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the learner published no weights within 600 s")
            settle = time.monotonic() + 3.0
            while time.monotonic() < settle:
                runner.poll(status, metrics)
            rates = []
            for _ in range(windows):
                t0, s0 = time.monotonic(), status.env_steps
                while time.monotonic() - t0 < window_s:
                    runner.poll(status, metrics)
                rates.append((status.env_steps - s0) / (time.monotonic() - t0))
            updates = status.updates
            # No runner.finish(): with pacing lifted the learner owes thousands of updates, and its
            # catch-up (up to 10 minutes) measures nothing. The workers' loops end first, so that
            # close() below kills no running loop (Ray would print that on stdout, into the JSON).
            runner.stop_workers()
            runner.learner.stop.remote()
            ray.wait([runner.learner_run], timeout=120)
        finally:
            runner.close()
            metrics.close()
            if ray.is_initialized():
                ray.shutdown()
    return {"steps_per_s": statistics.median(rates), "windows_steps_per_s": [round(r, 1) for r in rates],
            "learner_updates": updates, "env_steps": status.env_steps}


def measure(workers: int, window_s: float, windows: int, raw_steps: int, raw_repeats: int,
            overrides: dict) -> dict[str, object]:
    from cluster.bench.env import measure as raw_measure

    raw_before = raw_measure(raw_steps, raw_repeats)["steps_per_s"]
    acting = acting_rate(raw_steps, raw_repeats)
    system = system_rate(workers, window_s, windows, overrides)
    raw_after = raw_measure(raw_steps, raw_repeats)["steps_per_s"]
    raw = statistics.fmean([raw_before, raw_after])
    return {
        "workers": workers,
        "efficiency": system["steps_per_s"] / (workers * raw),
        "efficiency_vs_acting": system["steps_per_s"] / (workers * acting),
        "system_steps_per_s": system["steps_per_s"],
        "system_windows_steps_per_s": system["windows_steps_per_s"],
        "raw_env_steps_per_s": raw,
        "raw_before_after": [round(raw_before, 1), round(raw_after, 1)],
        "acting_steps_per_s": acting,
        "learner_updates_during_run": system["learner_updates"],
    }


def run(args: argparse.Namespace) -> int:
    from cluster.cli.train import overrides as parse_overrides

    workers = args.workers if args.workers is not None else max((os.cpu_count() or 2) - 1, 1)
    if workers < 1 or args.windows < 1 or args.window_s <= 0:
        raise UserError("--workers and --windows must be >= 1 and --window-s > 0")
    over = parse_overrides(argparse.Namespace(set=args.set))
    result = measure(workers, args.window_s, args.windows, args.raw_steps, args.raw_repeats, over)
    result.update(cpu_count=os.cpu_count(), python=platform.python_version(),
                  load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"rollout with {workers} worker(s): {result['system_steps_per_s']:.0f} steps/s "
              f"(windows {result['system_windows_steps_per_s']}); raw env {result['raw_env_steps_per_s']:.0f} "
              f"steps/s (before/after {result['raw_before_after']}), with policy "
              f"{result['acting_steps_per_s']:.0f} steps/s\n"
              f"efficiency {result['efficiency']:.3f} (vs acting {result['efficiency_vs_acting']:.3f})")
    return 0
