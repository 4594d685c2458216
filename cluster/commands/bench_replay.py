"""`fleet bench replay`: bytes per transition, ingest and sampling speed of the replay memory."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from cluster.cli import Commands

if TYPE_CHECKING:
    from learner.replay import ReplayConfig

log = logging.getLogger(__name__)

VECTOR_DIM = 23
BATCH = 256


def register(cli: Commands) -> None:
    p = cli.bench("replay", "replay memory: bytes/transition at 1M, ingest steps/s, sample batches/s", run)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=5, help="repeats per figure; medians are reported")
    p.add_argument("--capacity", type=int, default=50_000, help="ring capacity for the speed figures")
    p.add_argument("--no-actor", action="store_true", help="skip sampling through a Ray actor")


def make_chunks(steps: int, chunk_steps: int = 64, seed: int = 0) -> list[Any]:
    """One worker's chunks: episodes of ~500 steps with shifting frame stacks."""
    from learner.replay import ChunkBuilder

    rng = np.random.default_rng(seed)
    builder = ChunkBuilder(VECTOR_DIM, chunk_steps=chunk_steps, stream=seed + 1)
    pool = rng.integers(0, 256, (64, 84, 84), dtype=np.uint8)  # fresh frames cost the bench, not the replay
    chunks, image = [], None
    for t in range(steps):
        if image is None:
            image = pool[rng.integers(64, size=4)]
            builder.begin_episode({"image": image, "vector": rng.standard_normal(VECTOR_DIM).astype(np.float32)})
        nimg = np.concatenate([image[1:], pool[t % 64][None]])
        end = t % 500 == 499
        builder.add_step(rng.uniform(-1, 1, 2), float(rng.standard_normal()), end, False,
                         {"image": nimg, "vector": rng.standard_normal(VECTOR_DIM).astype(np.float32)}, 1)
        image = None if end else nimg
        if builder.ready():
            chunks.append(builder.flush())
    last = builder.flush()
    return chunks + ([last] if last is not None else [])


def bytes_per_transition(prioritized: bool) -> float:
    from learner.replay import ReplayConfig, ReplayMemory

    cap = 1_000_000
    mem = ReplayMemory(ReplayConfig(capacity=cap, prioritized=prioritized), VECTOR_DIM, 0.99)
    return mem.nbytes / cap  # arrays allocated with np.zeros: counted in full, paged in lazily


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from learner.replay import ReplayConfig, ReplayMemory

    cfg = ReplayConfig(capacity=args.capacity)
    chunks = make_chunks(args.capacity + args.capacity // 2)  # wraps the ring once
    steps = sum(len(c) for c in chunks)
    out: dict[str, Any] = {
        "bytes_per_transition": round(bytes_per_transition(False), 1),
        "bytes_per_transition_prioritized": round(bytes_per_transition(True), 1),
    }
    ingest, sample, mem = [], [], None
    for _ in range(args.repeats):
        mem = ReplayMemory(cfg, VECTOR_DIM, 0.99)
        t = time.perf_counter()
        for c in chunks:
            mem.add(c)
        ingest.append(steps / (time.perf_counter() - t))
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        n, t = 100, time.perf_counter()
        for _ in range(n):
            mem.sample(BATCH, rng)
        sample.append(n / (time.perf_counter() - t))
    out["ingest_per_s"] = round(statistics.median(ingest))
    out["sample_batches_per_s"] = round(statistics.median(sample), 1)
    if not args.no_actor:
        out["actor_sample_batches_per_s"] = round(actor_sampling(cfg, chunks, args.repeats), 1)
    out.update(batch=BATCH, capacity=args.capacity, repeats=args.repeats, python=platform.python_version(),
               cpus=os.cpu_count(), torch_threads=torch.get_num_threads())
    return out


def actor_sampling(cfg: ReplayConfig, chunks: list[Any], repeats: int) -> float:
    import ray

    from cluster.runtime import init_ray
    from learner.replay import ReplayActor

    started = not ray.is_initialized()
    if started:
        init_ray(num_cpus=2, log_to_driver=False)
    try:
        actor = ray.remote(ReplayActor).remote(cfg, VECTOR_DIM, 0.99)
        ray.get([actor.add.remote(c) for c in chunks[-(cfg.capacity // 64):]])
        ray.get(actor.sample.remote(BATCH))
        rates = []
        for _ in range(repeats):
            n, t = 20, time.perf_counter()
            for _ in range(n):
                ray.get(actor.sample.remote(BATCH))
            rates.append(n / (time.perf_counter() - t))
        ray.kill(actor)
        return statistics.median(rates)
    finally:
        if started:
            ray.shutdown()


def run(args: argparse.Namespace) -> int:
    out = measure(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"bytes per transition (1M capacity): {out['bytes_per_transition']:,.0f} "
          f"({out['bytes_per_transition_prioritized']:,.0f} prioritized)")
    print(f"ingest:          {out['ingest_per_s']:,} steps/s")
    print(f"sample (in process, batch {BATCH}): {out['sample_batches_per_s']:,.1f} batches/s")
    if "actor_sample_batches_per_s" in out:
        print(f"sample (through a Ray actor):   {out['actor_sample_batches_per_s']:,.1f} batches/s")
    print(f"medians of {out['repeats']} repeats, capacity {out['capacity']:,}, Python {out['python']}, "
          f"{out['cpus']} CPUs")
    return 0
