"""`fleet bench replay`: bytes per transition, ingest and sampling speed of the replay memory, and
(`--export-steps N`) what two consecutive snapshots of a full N-step replay encode and send."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from cluster.cli import Commands

log = logging.getLogger(__name__)

VECTOR_DIM = 23
BATCH = 256


def register(cli: Commands) -> None:
    p = cli.bench("replay", "replay memory: bytes/transition at 1M, ingest steps/s, sample batches/s", run)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=5, help="repeats per figure; medians are reported")
    p.add_argument("--capacity", type=int, default=50_000, help="ring capacity for the speed figures")
    p.add_argument("--export-steps", type=int, default=0, metavar="N",
                   help="also fill an N-step replay and time two consecutive exports (a snapshot's replay "
                        "files): the second encodes only what changed in between")
    p.add_argument("--between-steps", type=int, default=500,
                   help="steps added between the two exports (default: the default run's 250 updates "
                        "between snapshots at replay ratio 0.5)")


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
    if args.export_steps:
        out["export"] = export_figures(args.export_steps, args.between_steps, args.repeats)
    out.update(batch=BATCH, capacity=args.capacity, repeats=args.repeats, python=platform.python_version(),
               cpus=os.cpu_count(), torch_threads=torch.get_num_threads())
    return out


def export_figures(steps: int, between: int, repeats: int) -> dict[str, Any]:
    """Two consecutive exports of a full `steps`-step replay, `between` steps apart; medians of `repeats`.

    Each repeat fills a fresh memory, exports it (the first snapshot: every segment) and, with those
    files stored, adds `between` steps and exports again: the second encodes the changed segments and
    refers to the rest. Bytes are what the export encodes and hands on (to Ray, then the writer).
    """
    from learner.replay import ReplayConfig, ReplayMemory
    from learner.replay.segments import SegmentExporter

    chunks = make_chunks(steps + between)
    split = 1 + next(i for i, total in enumerate(itertools.accumulate(len(c) for c in chunks)) if total >= steps)
    first_s, second_s, first_b, second_b = [], [], [], []
    for _ in range(repeats):
        mem = ReplayMemory(ReplayConfig(capacity=steps), VECTOR_DIM, 0.99)
        exporter = SegmentExporter(mem)
        for c in chunks[:split]:
            mem.add(c)
        t = time.perf_counter()
        plan = exporter.plan()
        plan.encode({})
        first_s.append(time.perf_counter() - t)
        first_b.append(plan.encoded_bytes)
        for c in chunks[split:]:
            mem.add(c)
        t = time.perf_counter()
        plan = exporter.plan()
        plan.encode(None)  # the first export's files count as stored
        second_s.append(time.perf_counter() - t)
        second_b.append(plan.encoded_bytes)
    med = statistics.median
    return {"replay_steps": steps, "between_steps": between, "segment_steps": ReplayConfig().segment_steps,
            "first_mb": round(med(first_b) / 2**20, 1), "second_mb": round(med(second_b) / 2**20, 1),
            "first_s": round(med(first_s), 3), "second_s": round(med(second_s), 3),
            "bytes_ratio": round(med(b / a for a, b in zip(first_b, second_b)), 4),
            "time_ratio": round(med(b / a for a, b in zip(first_s, second_s)), 4)}


def run(args: argparse.Namespace) -> int:
    out = measure(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"bytes per transition (1M capacity): {out['bytes_per_transition']:,.0f} "
          f"({out['bytes_per_transition_prioritized']:,.0f} prioritized)")
    print(f"ingest:          {out['ingest_per_s']:,} steps/s")
    print(f"sample (in process, batch {BATCH}): {out['sample_batches_per_s']:,.1f} batches/s")
    if "export" in out:
        e = out["export"]
        print(f"export of a full {e['replay_steps']:,}-step replay: first {e['first_mb']:,.1f} MB in "
              f"{e['first_s']:.2f} s; after {e['between_steps']:,} more steps, the second "
              f"{e['second_mb']:,.1f} MB in {e['second_s']:.3f} s "
              f"({100 * e['bytes_ratio']:.1f}% of the bytes, {100 * e['time_ratio']:.1f}% of the time)")
    print(f"medians of {out['repeats']} repeats, capacity {out['capacity']:,}, Python {out['python']}, "
          f"{out['cpus']} CPUs")
    return 0
