"""`fleet bench scale`: how far one learner node scales with rollout workers across Ray nodes.

It builds a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head with the
`learner` resource, and `--nodes - 1` worker nodes advertising `carla`; every node declares more
logical CPUs than the machine has, which Ray allows, so many actors can be placed) and measures:

1. The central ceiling. Producer actors on the worker nodes send distinct chunks of fresh frames,
   in the workers' format and sizes (`ChunkBuilder`, `--chunk-steps` steps, every frame once),
   as fast as they can, through the real replay actor into the real learner actor's memory. The
   learner does no updates. Counted: transitions that reached the learner's memory (sampleable),
   per second, over windows after a warm-up; and each process's CPU seconds per second.
2. Scaling with workers. For each N of `--workers` and each tick of `--tick-ms`: N real rollout
   workers (`WorkerActor`, with real policy inference on published weights) drive
   `rollout_workers.envs.tick` (a fixed wall-clock tick standing for a remote simulator), with
   the real replay and learner actors wired by `RayRun` as `fleet train` does. The learner's
   replay-ratio pacing is lifted and it does no updates (a GPU learner that keeps up); it
   publishes a new weight version every `--publish-s` seconds. Reported per point: system env
   steps/s (median of windows), scaling efficiency = rate / (N x one worker's rate measured in
   the same invocation), the time for a new version to reach all N workers, the policy lag
   (versions behind the newest when a step was taken), and CPU milliseconds per env step in each
   process kind (workers, replay actor, learner, Ray's raylets and GCS, the driver).

The cost model beside it: the policy forward pass at batch 1 on one thread (ms per step) and the
tick env's own CPU per step, measured in this process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.bench("scale", "ingest ceiling of one learner node, and env steps/s with N workers over Ray nodes", run)
    p.add_argument("--nodes", type=int, default=3, help="Ray nodes: the learner's head plus NODES-1 worker nodes")
    p.add_argument("--workers", default="1,2,4,8,16,32", help="comma-separated worker counts")
    p.add_argument("--tick-ms", default="100", help="comma-separated simulator ticks (ms), e.g. 100,50")
    p.add_argument("--window-s", type=float, default=15.0, help="seconds per measured window")
    p.add_argument("--windows", type=int, default=3, help="windows per point; the median is reported")
    p.add_argument("--publish-s", type=float, default=2.0, help="seconds between new weight versions")
    p.add_argument("--producers", type=int, default=2, help="chunk producers for the ceiling")
    p.add_argument("--chunk-steps", default="64,256", help="comma-separated chunk sizes for the ceiling")
    p.add_argument("--backlog-steps", type=int, default=16384,
                   help="ceiling producers wait while more steps than this are logged and not pulled (0: never)")
    p.add_argument("--part", choices=["both", "ceiling", "scaling"], default="both")
    p.add_argument("--paths", default="replay,refs",
                   help="ceiling data paths: replay (the runtime's), refs (references through a log; a variant)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the scaling runs (e.g. worker.weight_sync_every=10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="folder for scale.json, scale.md and scale.png")


# ---------------------------------------------------------------- processes and their CPU


def _cpu_s(pids: dict[str, list[int]]) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for kind, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        out[kind] = total
    return out


def _ray_pids(cluster: Any) -> dict[str, list[int]]:
    """Raylets (with their object stores) and the GCS of every node of a cluster_utils cluster."""
    from ray._private import ray_constants

    raylets, gcs = [], []
    for node in cluster.list_all_nodes():
        for kind, infos in node.all_processes.items():
            for info in infos:
                if kind == ray_constants.PROCESS_TYPE_RAYLET:
                    raylets.append(info.process.pid)
                elif kind == ray_constants.PROCESS_TYPE_GCS_SERVER:
                    gcs.append(info.process.pid)
    return {"raylets": raylets, "gcs": gcs}


def _pid(actor: Any) -> int:
    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=300))


def _start_cluster(nodes: int, per_node: int) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    from cluster.runtime import loopback_ray

    # Every node on 127.0.0.1, so every listener of the cluster is on loopback (cluster/runtime/loopback_ray.py).
    loopback_ray.install(default_to_loopback=True)

    # Logical CPUs: more than this machine has, so every actor of a point can be placed (they wait on a
    # tick or on each other most of the time); object stores kept small so three fit in memory.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "resources": {"learner": 1}, "object_store_memory": 512 * 2**20})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per_node + 2, resources={"carla": per_node}, object_store_memory=512 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


# ---------------------------------------------------------------- 1. the central ceiling


class ChunkProducer:
    """Sends distinct chunks of fresh frames, in the workers' format, as fast as the central path takes them.

    The chunks are a worker stream's (built by `ChunkBuilder` from the tick env): the first two as
    built, then the second over and over with the next sequence number and new frames (a copy of its
    frames, each stamped with a counter), which continues the same episode. Making a chunk so costs a
    copy of its frames, not an env step and a `ChunkBuilder.add_step` per step: the producers stand for
    workers on other machines, and their own cost is not the central path's.
    """

    def __init__(self, stream: int, replay_name: str, chunk_steps: int, vector_dim: int, max_in_flight: int,
                 refs: bool = False, max_backlog_steps: int = 0) -> None:
        import numpy as np
        import ray

        from learner.common.chunks import ChunkBuilder
        from learner.replay import BoundedSender
        from rollout_workers.envs.tick import TickEnv

        replay = ray.get_actor(replay_name)
        self.replay, self.max_backlog_steps, self.paused_s = replay, max_backlog_steps, 0.0
        if refs:  # the chunk stays in this node's object store; the log gets a reference (in a list: unresolved)
            self.sender = BoundedSender(lambda chunk: replay.add.remote([ray.put(chunk)], len(chunk)), max_in_flight)
        else:
            self.sender = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight)
        builder, env = ChunkBuilder(vector_dim, chunk_steps=chunk_steps, stream=stream), TickEnv(
            stream, tick_s=0.0, episode_steps=10**9)
        obs, _ = env.reset()
        builder.begin_episode(obs)
        action = np.zeros(2, dtype=np.float32)
        self.first: list[Any] = []
        while len(self.first) < 2:  # one endless episode
            obs, reward, terminated, truncated, _ = env.step(action)
            builder.add_step(action, reward, terminated, truncated, obs, 1)
            if builder.ready():
                self.first.append(builder.flush())
        self.template = self.first[1]
        self.counter = 0

    def _fresh(self, seq: int) -> Any:
        import dataclasses

        import numpy as np

        frames = self.template.frames.copy()
        n = frames.shape[0]
        stamps = np.arange(self.counter, self.counter + n, dtype=np.uint64)
        frames[:, 0, :8] = stamps.view(np.uint8).reshape(n, 8)
        self.counter += n
        return dataclasses.replace(self.template, seq=seq, frames=frames)

    def _pace(self, end: float) -> None:
        """Wait while the consumer has more than `max_backlog_steps` logged and not pulled (0: never wait),
        as the runtime's workers wait while the learner is behind: a producer that outruns the path only
        fills a buffer."""
        import ray

        if self.max_backlog_steps <= 0:
            return
        start = time.monotonic()
        while ray.get(self.replay.backlog_steps.remote()) > self.max_backlog_steps and time.monotonic() < end:
            time.sleep(0.01)  # each ask costs this producer and the replay actor CPU: not too often
        self.paused_s += time.monotonic() - start

    def stats(self) -> dict[str, Any]:
        return {"paused_s": self.paused_s, "sent": self.sender.sent}

    def run(self, seconds: float) -> int:
        for chunk in self.first:
            self.sender.send(chunk)
        steps, seq, end = sum(len(c) for c in self.first), self.first[-1].seq + 1, time.monotonic() + seconds
        while time.monotonic() < end:
            self._pace(end)
            self.sender.send(self._fresh(seq))
            steps += len(self.template)
            seq += 1
        self.sender.drain()
        return steps


class RefLog:
    """A variant of the replay actor for the ceiling's `refs` path: it logs references to chunks the
    producers put in their own object stores, never the chunks, so a chunk crosses the network once
    (producer node -> learner node) and is copied by no actor in between. Not the runtime's design
    (yet): measured here to say what it would change."""

    def __init__(self) -> None:
        self._log: list[Any] = []
        self._backlog = 0
        """Steps behind the references in the log (handed out with them)."""
        self._first = 0

    def add(self, refs: list[Any], steps: int) -> int:
        self._log.extend(refs)
        self._backlog += steps
        return steps

    def backlog_steps(self) -> int:
        return self._backlog

    def pull_new(self, cursor: int) -> tuple[list[Any], int]:
        """One consumer: what it has not had yet, dropped from the log once handed out (frees the objects)."""
        refs, self._log, self._backlog = self._log, [], 0
        self._first += len(refs)
        return refs, self._first


class RefIngest:
    """The learner's ingestion for the `refs` path: the real `Learner`, fed with the chunks it fetches."""

    def __init__(self, cfg: Any, log_name: str) -> None:
        import ray

        from learner.learner import Learner

        self.log = ray.get_actor(log_name)
        self.learner = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner, seed=0)
        self._stop = False

    def run(self) -> int:
        import ray

        cursor = 0
        while not self._stop:
            refs, cursor = ray.get(self.log.pull_new.remote(cursor))
            if refs:
                self.learner.ingest(ray.get(refs))
                del refs  # the last reference: the producers' object stores free the chunks
            else:
                time.sleep(0.005)
        return self.learner.env_steps

    def stop(self) -> None:
        self._stop = True

    def stats(self) -> Any:
        return self.learner.stats()


def _base_config(tmp: str, name: str, overrides: dict[str, Any]) -> Any:
    from cluster.runtime import experiment

    base = {"run.name": name, "run.runs_dir": tmp, "run.store": str(Path(tmp) / name / "store"),
            "run.total_env_steps": 10**9, "run.max_ahead_steps": 10**9, "run.worker_resource": "carla",
            "run.learner_resource": "learner", "run.collect_steps": 20, "learner.learning_starts": 10**12,
            "learner.snapshot_every": 0, "learner.save_replay": False, "eval.every_updates": 0,
            "replay.capacity": 200_000}
    return experiment.load(None, {**base, **overrides})


def ceiling(cluster: Any, tmp: str, producers: int, chunk_steps: int, window_s: float, windows: int,
            path: str = "replay", max_backlog_steps: int = 0) -> dict[str, Any]:
    """`path`: 'replay', the runtime's (chunks through the replay actor, pulled by the learner actor), or
    'refs' (producers put chunks in their own object store; a log of references in between)."""
    import ray

    from cluster.runtime.actors import LearnerActor
    from cluster.runtime.ray_run import replay_actor_class

    name = f"ceiling-{path}-{chunk_steps}"
    # A log of 262,144 steps (1.8 GB at most): producers outrun the learner by design here, with no pacing.
    cfg = _base_config(tmp, name, {"worker.chunk_steps": chunk_steps, "replay.log_steps": 262_144})
    on_head = {"learner": 0.5}
    if path == "replay":
        replay = replay_actor_class().options(name=f"{name}-replay", resources=on_head).remote(
            cfg.replay, cfg.network.vector_dim)
        learner = ray.remote(num_cpus=1, max_concurrency=8)(LearnerActor).options(
            name=f"{name}-learner", resources=on_head).remote(cfg, replay, None)
    else:
        replay = ray.remote(num_cpus=0, max_concurrency=1)(RefLog).options(
            name=f"{name}-replay", resources=on_head).remote()
        learner = ray.remote(num_cpus=1, max_concurrency=4)(RefIngest).options(
            name=f"{name}-learner", resources=on_head).remote(cfg, f"{name}-replay")
    producer_cls = ray.remote(num_cpus=1, resources={"carla": 1})(ChunkProducer)
    prods = [producer_cls.options(scheduling_strategy="SPREAD").remote(
        1000 + i, f"{name}-replay", chunk_steps, cfg.network.vector_dim, cfg.worker.max_in_flight, path == "refs",
        max_backlog_steps) for i in range(producers)]
    pids = {"producers": [_pid(p) for p in prods], "replay": [_pid(replay)], "learner": [_pid(learner)],
            "driver": [os.getpid()], **_ray_pids(cluster)}
    loop = learner.run.remote()
    warm = 5.0
    runs = [p.run.remote(warm + windows * window_s + 2.0) for p in prods]
    time.sleep(warm)
    rates, cpu = [], []
    for _ in range(windows):
        s0, c0, t0 = ray.get(learner.stats.remote()).env_steps, _cpu_s(pids), time.monotonic()
        time.sleep(window_s)
        s1, c1, t1 = ray.get(learner.stats.remote()).env_steps, _cpu_s(pids), time.monotonic()
        rates.append((s1 - s0) / (t1 - t0))
        cpu.append({k: (c1[k] - c0[k]) / (t1 - t0) for k in pids})
    sent = sum(ray.get(runs, timeout=600))
    paused = [ray.get(p.stats.remote())["paused_s"] for p in prods]
    learner.stop.remote()
    ray.get(loop, timeout=300)
    stats = ray.get(learner.stats.remote())
    for actor in [*prods, learner, replay]:
        ray.kill(actor)
    load = {k: statistics.median(c[k] for c in cpu) for k in pids}
    # The process nearest its one core (an actor runs one Python thread), or the machine's cores.
    busiest = max(("producers", "replay", "learner"), key=lambda k: load[k] / max(len(pids[k]), 1))
    return {"path": path, "chunk_steps": chunk_steps, "producers": producers,
            "sampleable_steps_per_s": statistics.median(rates), "windows_steps_per_s": [round(r) for r in rates],
            "max_backlog_steps": max_backlog_steps, "producers_paused_s": [round(x, 1) for x in paused],
            "steps_sent": sent, "steps_in_memory": stats.env_steps, "dropped_steps": stats.dropped_steps,
            "cpu_cores": {k: round(v, 3) for k, v in load.items()},
            "cpu_cores_total": round(sum(load.values()), 3),
            "busiest_process": busiest, "busiest_process_cores": round(load[busiest] / max(len(pids[busiest]), 1), 3)}


# ---------------------------------------------------------------- 2. scaling with workers


def _versions(workers: list[Any]) -> list[int]:
    import ray

    return ray.get([w.__ray_call__.remote(lambda s: s.worker.policy_version) for w in workers], timeout=120)


def _collected(workers: list[Any]) -> int:
    """Env steps the workers have taken, to the step (the learner sees them a chunk at a time: at a 100 ms
    tick one worker's 64-step chunk arrives every 6.4 s, too coarse for a window)."""
    import ray

    return sum(ray.get([w.__ray_call__.remote(lambda s: s.worker.total_steps) for w in workers], timeout=120))


def _publish(learner: Any) -> int:
    import ray

    def publish(self: Any) -> int:
        self.learner.publish()
        return int(self.learner.policy_version)

    return int(ray.get(learner.__ray_call__.remote(publish), timeout=120))


def _take_lags(learner: Any) -> list[float]:
    import ray

    def take(self: Any) -> list[float]:
        lags, self.learner._lags = list(self.learner._lags), []
        return lags

    return ray.get(learner.__ray_call__.remote(take), timeout=120)


def scaling_point(cluster: Any, tmp: str, workers: int, tick_ms: int, window_s: float, windows: int,
                  publish_s: float, overrides: dict[str, Any]) -> dict[str, Any]:
    import ray

    from cluster.runtime.progress import MetricsLog, Status
    from cluster.runtime.ray_run import RayRun

    name = f"scale-{tick_ms}ms-{workers}w"
    cfg = _base_config(tmp, name, {"run.env": "rollout_workers.envs.tick:make", "run.workers": workers,
                                   **overrides})
    runner = RayRun(cfg, None)
    status, metrics = Status(total_env_steps=cfg.run.total_env_steps), MetricsLog(Path(tmp) / name / "metrics")
    try:
        runner.start()  # joins the connected cluster, as `fleet train` inside a job does
        pids = {"workers": [_pid(w) for w in runner.workers], "replay": [_pid(runner.replay)],
                "learner": [_pid(runner.learner)], "driver": [os.getpid()], **_ray_pids(cluster)}
        version = _publish(runner.learner)
        deadline = time.monotonic() + 300
        while min(_versions(runner.workers)) < version:  # every worker acts with the policy
            runner.poll(status, metrics)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers did not all receive weights within 300 s")
        settle = time.monotonic() + 3.0
        while time.monotonic() < settle:
            runner.poll(status, metrics)
        _take_lags(runner.learner)
        rates, cpu, reach, steps = [], [], [], []
        for _ in range(windows):
            s0, c0, t0 = _collected(runner.workers), _cpu_s(pids), time.monotonic()
            published = time.monotonic()
            version = _publish(runner.learner)
            reached = None
            next_publish = published + publish_s
            while time.monotonic() - t0 < window_s:
                runner.poll(status, metrics)
                if reached is None and min(_versions(runner.workers)) >= version:
                    reached = time.monotonic() - published
                if reached is not None and time.monotonic() >= next_publish:
                    _publish(runner.learner)
                    next_publish = time.monotonic() + publish_s
            s1, c1, t1 = _collected(runner.workers), _cpu_s(pids), time.monotonic()
            rates.append((s1 - s0) / (t1 - t0))
            steps.append(s1 - s0)
            cpu.append({k: (c1[k] - c0[k]) for k in pids})
            reach.append(reached)
        lags = _take_lags(runner.learner)
        runner.stop_workers()  # the workers flush their last chunks: every step taken reaches the learner
        collected = _collected(runner.workers)
        time.sleep(2.0)  # the learner pulls the last chunks from the replay actor
        runner.learner.stop.remote()
        ray.wait([runner.learner_run], timeout=120)
        ingested = ray.get(runner.learner.stats.remote()).env_steps
    finally:
        runner.close()
        metrics.close()
    total_steps = max(sum(steps), 1)
    ms_per_step = {k: round(1000 * sum(c[k] for c in cpu) / total_steps, 3) for k in pids}
    known = [r for r in reach if r is not None]
    return {"workers": workers, "tick_ms": tick_ms, "steps_per_s": statistics.median(rates),
            "windows_steps_per_s": [round(r, 1) for r in rates],
            "weight_reach_all_s": round(statistics.median(known), 2) if known else None,
            "weight_reach_all_s_windows": [None if r is None else round(r, 2) for r in reach],
            "policy_lag_versions": round(statistics.fmean(lags), 3) if lags else None,
            "cpu_ms_per_step": ms_per_step, "cpu_ms_per_step_total": round(sum(ms_per_step.values()), 3),
            "placement_nodes": len(set(runner.placement.get("workers", []))),
            "steps_taken": collected, "steps_in_learner": ingested}


def cost_model(tick_ms: int) -> dict[str, float]:
    """In this process, one thread: the policy forward pass at batch 1, and the tick env's own CPU."""
    import numpy as np
    import torch

    from learner.networks import NetworkConfig, Policy
    from rollout_workers.envs.tick import TickEnv

    torch.set_num_threads(1)
    policy, rng, env = Policy(NetworkConfig()), np.random.default_rng(0), TickEnv(0, tick_s=0.0)
    obs, _ = env.reset()
    for _ in range(20):
        policy.act(obs["image"], obs["vector"], 0.1, rng)
    n = 300
    c0 = time.process_time()
    for _ in range(n):
        policy.act(obs["image"], obs["vector"], 0.1, rng)
    act_ms = 1000 * (time.process_time() - c0) / n
    c0 = time.process_time()
    for _ in range(n):
        obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    env_ms = 1000 * (time.process_time() - c0) / n
    return {"policy_forward_ms": round(act_ms, 3), "tick_env_cpu_ms": round(env_ms, 3),
            "tick_ms": tick_ms}


# ---------------------------------------------------------------- the command


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from exc
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers")
    return values


def _machine() -> dict[str, Any]:
    """CPU model and the flags every figure must name (AVX-512 or AVX2 only), from one read of /proc/cpuinfo."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        info = {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    return {"cpu_model": info.get("model name", platform.processor()), "cores": os.cpu_count(),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags, "python": platform.python_version()}


def report_md(result: dict[str, Any]) -> str:
    lines = [f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
             f"{'AVX-512' if result['machine']['avx512f'] else 'AVX2 only'}; {result['nodes']} Ray nodes.", ""]
    if result.get("ceiling"):
        lines += ["| path | chunk steps | producers | sampleable steps/s | windows | busiest (cores) | "
                  "CPU cores by process |", "|---|---|---|---|---|---|---|"]
        for c in result["ceiling"]:
            lines.append(f"| {c['path']} | {c['chunk_steps']} | {c['producers']} | {c['sampleable_steps_per_s']:,.0f} | "
                         f"{c['windows_steps_per_s']} | {c['busiest_process']} ({c['busiest_process_cores']}) | "
                         f"{c['cpu_cores']} |")
        lines.append("")
    for tick, points in result.get("scaling", {}).items():
        lines += [f"Tick {tick} ms:", "",
                  "| workers | steps/s | efficiency | weights reach all (s) | policy lag (versions) | "
                  "CPU ms/step: workers, replay, learner, raylets, gcs, driver |", "|---|---|---|---|---|---|"]
        for p in points:
            c = p["cpu_ms_per_step"]
            lines.append(f"| {p['workers']} | {p['steps_per_s']:.1f} | {p['efficiency']:.3f} | "
                         f"{p['weight_reach_all_s']} | {p['policy_lag_versions']} | {c['workers']}, {c['replay']}, "
                         f"{c['learner']}, {c['raylets']}, {c['gcs']}, {c['driver']} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for tick, points in result.get("scaling", {}).items():
        ns = [p["workers"] for p in points]
        ax[0].plot(ns, [p["steps_per_s"] for p in points], "o-", label=f"{tick} ms tick")
        ax[0].plot(ns, [n * points[0]["steps_per_s"] / points[0]["workers"] for n in ns], ":", color="grey")
        ax[1].plot(ns, [p["efficiency"] for p in points], "o-", label=f"{tick} ms tick")
    ax[0].set(xscale="log", yscale="log", xlabel="rollout workers", ylabel="env steps/s (dotted: linear)")
    ax[1].set(xscale="log", xlabel="rollout workers", ylabel="scaling efficiency", ylim=(0, 1.1))
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import ray

    from cluster.cli.train import overrides as parse_overrides

    workers, ticks, chunks = _ints(args.workers, "--workers"), _ints(args.tick_ms, "--tick-ms"), _ints(
        args.chunk_steps, "--chunk-steps")
    if args.nodes < 2 or args.windows < 1 or args.window_s <= 0 or args.producers < 1:
        raise UserError("--nodes must be >= 2 (a head and a worker node), --windows and --producers >= 1, "
                        "--window-s > 0")
    over = parse_overrides(argparse.Namespace(set=args.set))
    per_node = max(math.ceil(max(workers) / (args.nodes - 1)), args.producers)
    result: dict[str, Any] = {"machine": _machine(), "nodes": args.nodes, "logical_cpus_per_worker_node": per_node + 2,
                              "window_s": args.window_s, "windows": args.windows, "publish_s": args.publish_s,
                              "overrides": over}
    say = (lambda *a: None) if args.json else print
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        cluster = _start_cluster(args.nodes, per_node)
        try:
            if args.part in ("both", "ceiling"):
                result["ceiling"] = []
                for path in [x for x in args.paths.split(",") if x]:
                    if path not in ("replay", "refs"):
                        raise UserError(f"--paths: unknown path {path!r} (replay, refs)")
                for path, steps in [(x, n) for x in args.paths.split(",") if x for n in chunks]:
                    c = ceiling(cluster, tmp, args.producers, steps, args.window_s, args.windows, path,
                                args.backlog_steps)
                    result["ceiling"].append(c)
                    say(f"ceiling, {path} path, chunks of {steps}: {c['sampleable_steps_per_s']:,.0f} sampleable steps/s "
                        f"{c['windows_steps_per_s']}; busiest {c['busiest_process']} at "
                        f"{c['busiest_process_cores']} cores; CPU {c['cpu_cores']}")
            if args.part in ("both", "scaling"):
                result["scaling"], result["cost_model"] = {}, {}
                for tick in ticks:
                    # The workers' env reads its tick from the job's environment.
                    ray.shutdown()
                    ray.init(address=cluster.address, log_to_driver=False,
                             runtime_env={"env_vars": {"FLEET_TICK_MS": str(tick)}})
                    result["cost_model"][str(tick)] = cost_model(tick)
                    points = []
                    for n in workers:
                        p = scaling_point(cluster, tmp, n, tick, args.window_s, args.windows, args.publish_s, over)
                        points.append(p)
                        say(f"tick {tick} ms, {n} workers: {p['steps_per_s']:.1f} steps/s {p['windows_steps_per_s']}, "
                            f"weights reach all in {p['weight_reach_all_s']} s, lag {p['policy_lag_versions']}, "
                            f"CPU ms/step {p['cpu_ms_per_step']}")
                    one = next((p["steps_per_s"] / p["workers"] for p in points if p["workers"] == 1),
                               points[0]["steps_per_s"] / points[0]["workers"])
                    for p in points:
                        p["efficiency"] = p["steps_per_s"] / (p["workers"] * one)
                    result["scaling"][str(tick)] = points
        finally:
            ray.shutdown()
            cluster.shutdown()
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "scale.md").write_text(report_md(result) + "\n")
        if result.get("scaling"):
            plot(result, out / "scale.png")
    if args.json:
        print(json.dumps(result))
    else:
        print(report_md(result))
    return 0
