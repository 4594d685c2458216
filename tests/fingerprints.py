"""Fingerprints of what the code computes, for a restructuring that must not change it (issue 29).

`python tests/fingerprints.py OUT.json [--manifest]` writes, on this machine:
- the replay: the ids and batches sampled from a fixed memory (uniform and prioritized), and the bytes
  of its export;
- the TD3 update: the agent's whole state after ten updates from a fixed seed, for both encoders;
- the command line: `fleet --help`, every command's `--help`, `fleet bench`'s commands' `--help` and
  `fleet config --keys`;
- with `--manifest`: the manifest of a short fixed-seed `fleet train --local` (MANIFEST_RUN), less what
  two identical runs do not share (save time, the version's writer suffix, timings, temp paths).

Run it at the base commit before any move and again after; `--compare BASE.json NEW.json` prints what
differs. Floating-point results depend on the CPU's instruction set, so compare runs on one machine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _arrays_sha(obj: Any) -> str:
    """sha256 over the arrays of a batch-like object (its fields in name order)."""
    import torch

    items = vars(obj) if hasattr(obj, "__dict__") else {f: getattr(obj, f) for f in obj._fields}
    parts = []
    for name in sorted(items):
        v = items[name]
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            parts += [name.encode(), str(v.dtype).encode(), str(v.shape).encode(), np.ascontiguousarray(v).tobytes()]
    return _sha(*parts)


def replay() -> dict[str, Any]:
    from test_replay_support import episode_chunks

    from learner.networks import NetworkConfig
    from learner.replay.memory import ReplayConfig, ReplayMemory
    from learner.replay.segments import SegmentExporter

    out: dict[str, Any] = {}
    for prioritized in (False, True):
        cfg = ReplayConfig(capacity=2_000, prioritized=prioritized, segment_steps=512)
        memory = ReplayMemory(cfg, NetworkConfig().vector_dim, gamma=0.95)
        for chunk in episode_chunks(3_000, chunk_steps=64, seed=5, p_end=0.01, vector_dim=NetworkConfig().vector_dim):
            memory.add(chunk)
        rng = np.random.default_rng(11)
        ids = [memory.sample_ids(32, rng).tolist() for _ in range(3)]
        batches = []
        for _ in range(3):
            batch, idx = memory.sample(32, rng)
            batches.append(_arrays_sha(batch))
            ids.append(np.asarray(idx).tolist())
        files = SegmentExporter(memory).export()
        key = "prioritized" if prioritized else "uniform"
        out[key] = {"ids": _sha(json.dumps(ids).encode()), "batches": batches,
                    "export": {name: _sha(v if isinstance(v, bytes) else v.encode()) for name, v in sorted(files.items())},
                    "stats": memory.stats()}
    return out


def _walk(prefix: str, value: Any, parts: list[bytes]) -> None:
    """Every tensor and value of a nested state, with its path, in a fixed order."""
    import torch

    if isinstance(value, dict):
        for k in sorted(value, key=str):
            _walk(f"{prefix}.{k}", value[k], parts)
    elif isinstance(value, torch.Tensor):
        parts.extend([prefix.encode(), value.detach().contiguous().numpy().tobytes()])
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(f"{prefix}[{i}]", v, parts)
    else:
        parts.extend([prefix.encode(), repr(value).encode()])


def td3() -> dict[str, str]:
    from test_td3 import make_batch

    from learner.td3 import TD3Agent, TD3Config

    out = {}
    for encoder in ("own", "critic"):
        agent = TD3Agent(TD3Config(device="cpu", seed=7, actor_encoder=encoder))
        for i in range(10):
            agent.update(make_batch(i, n=8))
        parts: list[bytes] = []
        _walk("", agent.state(), parts)
        out[encoder] = _sha(*parts)
    return out


def cli() -> dict[str, str]:
    fleet = [str(Path(sys.executable).parent / "fleet")]

    def run(*args: str) -> str:
        done = subprocess.run([*fleet, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "COLUMNS": "100",
                                   "PYTHONPATH": str(ROOT)})
        return done.stdout + done.stderr

    out = {"fleet --help": run("--help"), "fleet config --keys": run("config", "--keys")}
    for command in _commands(out["fleet --help"]):
        out[f"fleet {command} --help"] = run(command, "--help")
    for command in _commands(out["fleet --help"]):
        for sub in _commands(out[f"fleet {command} --help"]):
            out[f"fleet {command} {sub} --help"] = run(command, sub, "--help")
    return out


def _commands(help_text: str) -> list[str]:
    """The subcommands an argparse help lists: the words at 4 spaces' indent under "positional arguments"."""
    import re

    lines = help_text.split("positional arguments:")[-1].split("options:")[0].splitlines()
    return [m.group(1) for line in lines if (m := re.match(r"^    (\w[\w-]*)", line))]


MANIFEST_RUN = ["train", "--local", "--steps", "600", "--set", "run.seed=3", "--set", "run.workers=1",
                "--set", "learner.learning_starts=200", "--set", "agent.batch_size=16",
                "--set", "learner.snapshot_every=100", "--set", "learner.snapshot_every_s=0",
                "--set", "worker.weight_sync_s=1000000", "--set", "eval.every_updates=0",
                "--set", "learner.torch_threads=1", "--set", "worker.chunk_max_age_s=1000000"]
"""A short local run that depends on no clock: snapshots, weight asks and chunks by count, one thread."""


def manifest(tmp: Path) -> dict[str, Any]:
    """The latest manifest of a fixed-seed local run, without what differs between two identical runs:
    the version's writer suffix, the save time, timings among the metrics, the run's own paths, and the
    worker's random stream id in the replay's header (so the header's hash, and the manifest's checksum over
    every file's hash, are taken again over the header with each stream named by its index)."""
    fleet = [str(Path(sys.executable).parent / "fleet")]
    store, runs = tmp / "store", tmp / "runs"
    done = subprocess.run([*fleet, *MANIFEST_RUN, "--set", f"run.store={store}", "--set", f"run.runs_dir={runs}",
                           "--set", "run.name=fingerprint"], capture_output=True, text=True, timeout=1800, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    latest = (store / "refs" / "latest").read_text().strip()
    body = json.loads((store / "versions" / f"{latest}.json").read_text())
    body["version"] = body["version"][:9]
    body.pop("created", None)
    header = body.get("files", {}).get("replay/header.json")
    if header is not None:
        blob = store / "blobs" / "sha256" / header["sha256"][:2] / header["sha256"]
        data = json.loads(blob.read_text())
        for i, stream in enumerate(data.get("streams", [])):
            stream["stream"] = i
        header["sha256"] = _sha(json.dumps(data, sort_keys=True).encode())
        header.pop("size", None)
        body.pop("checksum", None)
    body["metrics"] = {k: v for k, v in body.get("metrics", {}).items()
                       if not any(t in k for t in ("_ms", "_s", "per_s", "seconds", "time"))}
    text = json.dumps(body, sort_keys=True).replace(str(tmp), "TMP")
    return {"body": json.loads(text), "sha256": _sha(text.encode())}


def compare(base: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    if isinstance(base, dict) and isinstance(new, dict):
        diffs = []
        for k in sorted(set(base) | set(new)):
            if k not in base or k not in new:
                diffs.append(f"{path}/{k}: only in {'new' if k in new else 'base'}")
            else:
                diffs += compare(base[k], new[k], f"{path}/{k}")
        return diffs
    return [] if base == new else [f"{path}: differs"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        base, new = (json.loads(Path(p).read_text()) for p in argv[1:3])
        diffs = compare(base, new)
        print("\n".join(diffs) if diffs else "identical")
        return 1 if diffs else 0
    import tempfile

    result: dict[str, Any] = {"replay": replay(), "td3": td3(), "cli": cli()}
    if "--manifest" in argv:
        with tempfile.TemporaryDirectory(prefix="fingerprint-") as tmp:
            result["manifest"] = manifest(Path(tmp))
    Path(argv[0]).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
