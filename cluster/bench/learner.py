"""`fleet bench learner [--batch B] [--device cpu|cuda] [--json]`: TD3 updates/s against the hardware.

One invocation measures, interleaved (A B C A B C ...) so drift on a noisy machine hits all alike:
- `updates_per_s`: the runtime's update path, `Learner.step` sampling from its replay memory
  (filled with synthetic chunks) and running `TD3Agent.update`, in this process as fleet sets up a
  learner's (`fleet` preloads learner/common/mkl_amd.py's library; a Learner applies learner/common/heap.py);
- `reference_updates_per_s`: a plain eager transcription of the same TD3 update (`reference_update`,
  torch's default Adam, the actor's CNN copied after every update), on batches sampled outside the
  timed loop, in a process of its own with torch's defaults (no preload, glibc's default heap, the
  same torch threads); `speedup` is the ratio. What a user of plain torch would get;
- `same_process_reference_updates_per_s`: the same reference in this process, so it shares the
  process-wide settings; `same_process_speedup` is what the update code alone gains;
- `flops_per_update`: counted from the layer shapes of one update (torch's FLOP counter: every conv
  and matmul of the critic step, and of the actor step once per `policy_freq` updates);
- `peak_gflops`: the better of a large fp32 matmul (`peak_matmul_gflops`) and a large fp32
  convolution (`peak_conv_gflops`) on the same device and threads, in this process. Both are
  needed: on AMD CPUs with AVX-512 MKL runs its AVX2 matmul kernels unless learner/common/mkl_amd.py's
  library is loaded, while oneDNN's convolutions use AVX-512 (docs/benchmarks.md, "The machine's
  peak");
- `efficiency`: achieved GFLOP/s of the runtime path over `peak_gflops`;
- `page_faults_per_update`: minor page faults per timed update of each path, in its process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from cluster.cli import Commands
from learner.common.errors import UserError
from learner.td3_reference import reference_update


def register(cli: Commands) -> None:
    p = cli.bench("learner", "TD3 updates/s of the runtime path vs a plain eager reference, FLOPs, "
                  "efficiency against the measured matmul or convolution peak", run)
    p.add_argument("--batch", type=int, default=64, help="transitions per update")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--updates", type=int, default=50, help="updates per timed round (rounds under a second are noisy)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per path; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core, the learner's default)")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="seconds of the peak measurements (half matmul, half convolution)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


class PlainReference:
    """`reference_update` in a child process with torch's defaults, one timed round per request."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from learner.common import mkl_amd

        env = {**os.environ, mkl_amd.ENV: "0", "LD_PRELOAD": " ".join(mkl_amd.other_preloads())}
        code = "from cluster.bench.learner import plain_reference_main; plain_reference_main()"
        # Its own session: a Ctrl-C here reaches the bench, which then ends the child.
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise self._exited()
        return json.loads(line)

    def _exited(self) -> UserError:
        return UserError(f"the reference process exited (code {self.proc.wait()}); its errors are above")

    def round(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("round\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._exited() from None
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def plain_reference_main() -> None:
    """The child of PlainReference: builds the reference agent and batches without a Learner (no
    learner/common/heap.py settings), then times `updates` reference updates for each "round" line."""
    import numpy as np
    import torch

    from cluster.bench.replay import make_chunks
    from learner.common import mkl_amd
    from learner.networks import NetworkConfig
    from learner.replay import ReplayConfig, ReplayMemory
    from learner.td3 import TD3Agent, TD3Config

    spec = json.loads(sys.argv[1])
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the protocol's channel; stray prints go to stderr
    sys.stdout = sys.stderr
    torch.set_num_threads(spec["threads"])
    cfg = TD3Config(batch_size=spec["batch"], device=spec["device"], fused_adam=False, cuda_graphs=False)
    agent = TD3Agent(cfg, NetworkConfig())
    memory = ReplayMemory(ReplayConfig(capacity=20_000), NetworkConfig().vector_dim, cfg.gamma, seed=0)
    for chunk in make_chunks(5_000):
        memory.add(chunk)
    rng = np.random.default_rng(0)
    batches = [memory.sample(spec["batch"], rng)[0].to(agent.device) for _ in range(8)]
    print(json.dumps({"mkl_avx512": mkl_amd.active()}), file=replies, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        ups, faults = timed_updates(agent.device, spec["updates"],
                                    lambda i: reference_update(agent, batches[i % len(batches)]))
        print(json.dumps({"updates_per_s": ups, "faults": faults}), file=replies, flush=True)


def timed_updates(device: Any, updates: int, update: Callable[[int], Any]) -> tuple[float, int]:
    """`update(i)` for i < updates: updates/s, and this process's minor page faults meanwhile."""
    _sync(device)
    minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for i in range(updates):
        update(i)
    _sync(device)
    seconds = time.perf_counter() - start
    return updates / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt


def flops_per_update(agent: Any, batch: Any) -> int:
    """FLOPs of `policy_freq` updates (one actor step among them), divided by policy_freq."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(agent.cfg.policy_freq):
            agent.update(batch)
    return int(counter.get_total_flops() / agent.cfg.policy_freq)


def peak_gflops(device: Any, seconds: float = 2.0) -> dict[str, float]:
    """Best GFLOP/s over a few timed bursts of a 2048^3 fp32 matmul and of a 3x3 fp32 convolution
    (batch 32, 256 -> 256 channels, 28x28, channels_last: what oneDNN runs fastest; its 22 MB output
    stays under glibc's mmap threshold, so the timing is not of page faults); `peak` is the better."""
    import torch
    import torch.nn.functional as F

    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    memory_format = torch.channels_last
    x = torch.randn(32, 256, 28, 28, device=device).contiguous(memory_format=memory_format)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=memory_format)
    conv_flops = 2 * 32 * 256 * 256 * 9 * 26 * 26

    def best(op: Any, flops: int) -> float:
        op()  # warm-up: oneDNN primitive creation, cuBLAS handles
        result = 0.0
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            _sync(device)
            start = time.perf_counter()
            for _ in range(4):
                op()
            _sync(device)
            result = max(result, 4 * flops / (time.perf_counter() - start) / 1e9)
        return result

    with torch.no_grad():
        matmul = best(lambda: a @ b, 2 * n ** 3)
        conv = best(lambda: F.conv2d(x, w), conv_flops)
    return {"matmul": matmul, "conv": conv, "peak": max(matmul, conv)}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, lcfg: Any, plain: PlainReference) -> dict[str, Any]:
    import numpy as np
    import torch

    from cluster.bench.replay import make_chunks
    from learner.common import mkl_amd
    from learner.learner import Learner
    from learner.networks import NetworkConfig
    from learner.replay import ReplayConfig
    from learner.td3 import TD3Config

    agent_cfg = TD3Config(batch_size=args.batch, device=args.device)
    learner = Learner(agent_cfg, NetworkConfig(), ReplayConfig(capacity=20_000), lcfg)
    chunks = make_chunks(5_000)
    learner.ingest(chunks)
    learner.env_steps = 10**9  # the ratio never holds the timed loop back
    # The yardstick: torch's default Adam and eager updates, not the runtime's fused Adam and CUDA graphs.
    reference_cfg = dataclasses.replace(agent_cfg, fused_adam=False, cuda_graphs=False)
    reference = Learner(reference_cfg, NetworkConfig(), ReplayConfig(capacity=20_000), lcfg).agent
    rng = np.random.default_rng(0)
    batches = [learner.memory.sample(args.batch, rng)[0].to(reference.device) for _ in range(8)]
    device = reference.device
    faults = {"runtime": 0, "reference": 0, "same_process_reference": 0}

    def timed(path: str, update: Callable[[int], Any]) -> float:
        ups, added = timed_updates(device, args.updates, update)
        faults[path] += added
        return ups

    def runtime_round() -> float:
        return timed("runtime", lambda i: learner.step(lambda: []))

    def same_process_round() -> float:
        return timed("same_process_reference", lambda i: reference_update(reference, batches[i % len(batches)]))

    def plain_round() -> float:
        r = plain.round()
        faults["reference"] += r["faults"]
        return float(r["updates_per_s"])

    runtime_round(), same_process_round(), plain_round()  # warm-up: allocator, oneDNN primitive caches
    faults = dict.fromkeys(faults, 0)
    ours, ref, same = [], [], []
    for _ in range(args.rounds):
        ours.append(runtime_round())
        ref.append(plain_round())
        same.append(same_process_round())
    flops = flops_per_update(reference, batches[0])
    peaks = peak_gflops(device, args.peak_seconds)
    peak = peaks["peak"]
    ups, ref_ups, same_ups = statistics.median(ours), statistics.median(ref), statistics.median(same)
    return {
        "batch": args.batch, "device": str(device), "threads": torch.get_num_threads(),
        "updates_per_s": round(ups, 2), "reference_updates_per_s": round(ref_ups, 2),
        "speedup": round(ups / ref_ups, 3),
        "same_process_reference_updates_per_s": round(same_ups, 2),
        "same_process_speedup": round(ups / same_ups, 3), "flops_per_update": flops,
        "achieved_gflops": round(ups * flops / 1e9, 1), "peak_gflops": round(peak, 1),
        "peak_matmul_gflops": round(peaks["matmul"], 1), "peak_conv_gflops": round(peaks["conv"], 1),
        "efficiency": round(ups * flops / 1e9 / peak, 3),
        "mkl_avx512": {"runtime": mkl_amd.active(), "reference": plain.info["mkl_avx512"]},
        "page_faults_per_update": {k: round(v / (args.rounds * args.updates), 1) for k, v in faults.items()},
        "rounds": {"updates_per_s": [round(x, 2) for x in ours], "reference_updates_per_s": [round(x, 2) for x in ref],
                   "same_process_reference_updates_per_s": [round(x, 2) for x in same]},
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from learner.learner import LearnerConfig

    if args.batch < 1 or args.updates < 1 or args.rounds < 1:
        raise UserError("--batch, --updates and --rounds must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")
    lcfg = LearnerConfig(replay_ratio=1.0, learning_starts=0, snapshot_every=0, log_every=10**9,
                         publish_every=10**9, updates_per_call=1, torch_threads=args.threads)
    torch.set_num_threads(lcfg.threads())
    plain = PlainReference({"batch": args.batch, "device": args.device, "threads": lcfg.threads(),
                            "updates": args.updates})
    try:
        result = measure(args, lcfg, plain)
    finally:
        plain.close()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<37} {value}")
    return 0
