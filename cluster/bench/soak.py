"""`fleet bench soak [--minutes M] [--sample-s S] [--workers N] [--out DIR] [--json]`: memory over a long run.

Runs `cluster.runtime.training.train` on the embedded env under a local Ray started here, for a wall-clock
budget, with snapshots, periodic evaluation and a small replay, while a thread samples the resident
memory (VmRSS from /proc) of every process of this Ray instance -- the run's actors, the driver, the
raylet, the GCS -- and the object store's bytes in use. Afterwards each series gets a slope over the
second half of the run (the replay is full by then) and a verdict. The verdict's slope is Theil-Sen
(the median of the slopes between every two samples): a sample that happens to land on a transient peak
-- a snapshot's replay export, a batch in flight in the object store -- does not read as a trend, while
a steady leak does. The least-squares slope is reported beside it.

The object store figures come from the raylet's `FormatGlobalMemoryInfo` RPC (what `ray memory
--stats-only` prints; `ray._private.internal_api.get_memory_info_reply`), which needs no dashboard.
Actor processes are found as children of this instance's raylet whose title is `ray::<ClassName>`;
the named rollout workers are told apart by asking each for its pid. A restarted actor (new pid)
starts a new series.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster.cli import Commands
from learner.common import procfs
from learner.common.errors import UserError

log = logging.getLogger(__name__)

ACTOR_CLASSES = ("LearnerActor", "ReplayActor", "WorkerActor", "CheckpointWriter", "EvaluatorActor")
GROWTH_PCT_PER_H = 5.0
"""A series grows when its second-half slope exceeds this share of its second-half median per hour ..."""
GROWTH_FLOOR_MB_PER_H = 5.0
"""... and this many MB per hour (so a few MB of noise on a small process is not a trend)."""


def register(cli: Commands) -> None:
    p = cli.bench("soak", "a long embedded-env run under Ray: memory of every actor and the object store over "
                  "time, slope and verdict per process", run)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock length of the training run")
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between memory samples")
    p.add_argument("--workers", type=int, default=2, help="rollout workers (run.workers)")
    p.add_argument("--out", help="folder for samples.csv, soak.json, soak.png and the run (default runs/soak-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set replay.capacity=50000 (YAML value syntax)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--analyse", metavar="DIR", help="no run: analyse the samples an earlier soak left in DIR")


@dataclass(frozen=True)
class Trend:
    """Growth of one memory series; slope over the second half of the run."""

    samples: int
    start_mb: float
    end_mb: float
    median_mb: float
    """Median over the second half."""
    slope_mb_per_h: float
    """Theil-Sen: the median of the pairwise slopes (the verdict's)."""
    ls_slope_mb_per_h: float
    """Least squares, for comparison (pulled by single peaks)."""
    relative_growth: float
    """Median of the last quarter over the median of the second quarter, minus one."""
    threshold_mb_per_h: float
    verdict: str
    """'flat', 'GROWS', or 'too short' (under 4 samples in the second half)."""


def trend(times_s: list[float], values_mb: list[float], run_start_s: float, run_end_s: float,
          pct_per_h: float = GROWTH_PCT_PER_H, floor_mb_per_h: float = GROWTH_FLOOR_MB_PER_H) -> Trend:
    """Slope and verdict of one series sampled at `times_s` within the run [run_start_s, run_end_s]."""
    if not values_mb:
        raise ValueError("trend of an empty series")
    mid = run_start_s + (run_end_s - run_start_s) / 2
    half = [(t, v) for t, v in zip(times_s, values_mb) if t >= mid]
    span = run_end_s - run_start_s

    def quarter(k: int) -> list[float]:
        lo, hi = run_start_s + span * k / 4, run_start_s + span * (k + 1) / 4
        return [v for t, v in zip(times_s, values_mb) if lo <= t <= hi]

    q2, q4 = quarter(1), quarter(3)
    rel = statistics.median(q4) / statistics.median(q2) - 1 if q2 and q4 and statistics.median(q2) > 0 else 0.0
    median = statistics.median(v for _, v in half) if half else values_mb[-1]
    threshold = max(pct_per_h / 100 * median, floor_mb_per_h)
    if len(half) < 4:
        slope, ls_slope, verdict = 0.0, 0.0, "too short"
    else:
        ts = [t for t, _ in half]
        mt, mv = statistics.fmean(ts), statistics.fmean(v for _, v in half)
        var = sum((t - mt) ** 2 for t in ts)
        ls_slope = 3600 * sum((t - mt) * (v - mv) for t, v in half) / var if var > 0 else 0.0
        pairs = [(vb - va) / (tb - ta) for i, (ta, va) in enumerate(half) for tb, vb in half[i + 1:] if tb > ta]
        slope = 3600 * statistics.median(pairs) if pairs else 0.0
        verdict = "GROWS" if slope > threshold else "flat"
    return Trend(len(half), values_mb[0], values_mb[-1], median, slope, ls_slope, rel, threshold, verdict)


class Monitor(threading.Thread):
    """Samples memory of this Ray instance's processes every `every_s` until stopped."""

    def __init__(self, run_name: str, workers: int, every_s: float, dump_at_s: float | None = None,
                 dump_path: Path | None = None) -> None:
        import ray
        from ray._private.internal_api import get_state_from_address

        super().__init__(name="soak-monitor", daemon=True)
        node = ray._private.worker._global_node
        self.raylet = node.all_processes["raylet"][0].process.pid
        self.system = {"driver": os.getpid(), "raylet": self.raylet,
                       "gcs_server": node.all_processes["gcs_server"][0].process.pid}
        self.state = get_state_from_address(node.address)
        self.session_dir = Path(node.get_session_dir_path())
        self.address = node.address
        self.run_name, self.workers, self.every_s = run_name, workers, every_s
        # Once, late in the run: every object in the store with its owner and reference kind (`ray memory`).
        self.dump_at_s, self.dump_path = dump_at_s, dump_path
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.store: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()
        self._named: dict[int, str] = {}

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.sample()
            except Exception as exc:  # a failed sample costs that sample, not the soak
                self.errors.append(f"{time.monotonic() - self.t0:.0f}s: {exc!r}")
                log.warning("soak sample failed: %r", exc)
            self._stop_event.wait(self.every_s)

    def _name_workers(self) -> None:
        import ray

        for i in range(self.workers):
            name = f"{self.run_name}-worker-{i}"
            try:
                pid = ray.get(ray.get_actor(name).__ray_call__.remote(lambda _self: os.getpid()), timeout=10)
            except (ValueError, ray.exceptions.RayError) as exc:  # not up yet, or restarting
                log.debug("no pid for %s: %r", name, exc)
                continue
            self._named[pid] = f"worker-{i}"

    def sample(self) -> None:
        from ray._private.internal_api import get_memory_info_reply

        t = round(time.monotonic() - self.t0, 1)
        procs = dict(self.system)
        counts: dict[str, int] = {}
        kids = {pid: title for pid, title in procfs.children(self.raylet).items()
                if title.startswith("ray::") and title[5:].split(".")[0].split(" ")[0] in ACTOR_CLASSES}
        if any(title.startswith("ray::WorkerActor") and pid not in self._named for pid, title in kids.items()):
            self._name_workers()
        for pid, title in sorted(kids.items()):
            cls = title[5:].split(".")[0].split(" ")[0]
            if pid in self._named:
                label = self._named[pid]
            else:
                label = {"LearnerActor": "learner", "ReplayActor": "replay", "CheckpointWriter": "checkpoint",
                         "EvaluatorActor": "evaluator", "WorkerActor": "worker-?"}[cls]
                counts[label] = counts.get(label, 0) + 1
                label += f"-{counts[label] - 1}" if label == "evaluator" else ""
            procs[label if label not in procs else f"{label}.{pid}"] = pid
        for label, pid in procs.items():
            mem = procfs.rss_mb(pid)
            if mem is not None:
                self.rows.append({"t_s": t, "process": label, "pid": pid, "rss_mb": round(mem[0], 2),
                                  "anon_mb": round(mem[1], 2)})
        st = get_memory_info_reply(self.state, timeout_seconds=30).store_stats
        if self.dump_path is not None and self.dump_at_s is not None and t >= self.dump_at_s:
            from ray._private.internal_api import memory_summary

            self.dump_path.write_text(f"t_s = {t}\n" + memory_summary(address=self.address, units="MB",
                                                                          line_wrap=False))
            self.dump_at_s = None
        self.store.append({"t_s": t, "used_mb": st.object_store_bytes_used / 2**20,
                           "capacity_mb": st.object_store_bytes_avail / 2**20, "objects": st.num_local_objects,
                           "spilled_mb": st.spilled_bytes_total / 2**20,
                           "fallback_mb": st.object_store_bytes_fallback / 2**20})

    def store_full_errors(self) -> list[str]:
        """Lines of this Ray session's logs that name ObjectStoreFullError."""
        hits = []
        for path in sorted((self.session_dir / "logs").rglob("*")):
            if path.is_file():
                with open(path, errors="replace") as f:
                    hits += [f"{path.name}: {line.strip()[:200]}" for line in f if "ObjectStoreFullError" in line]
        return hits


def soak_config(args: argparse.Namespace, out: Path) -> Any:
    from cluster.cli.train import overrides
    from cluster.runtime import experiment

    base: dict[str, Any] = {
        "run.env": "embedded", "run.workers": args.workers, "run.total_env_steps": 10**9,
        "run.max_minutes": args.minutes, "run.name": "soak", "run.runs_dir": str(out / "runs"),
        "run.progress_every_s": 30.0,
        # Small enough to be full within the first third of a 30-minute run on 2 cores (about 13 env
        # steps/s once updates start), so the second half measures a full replay; the replay actor's
        # chunk log (kept for the learner to pull, 65,536 steps by default) likewise.
        "replay.capacity": 6_000, "replay.log_steps": 4_096,
        "learner.snapshot_every": 300, "eval.every_updates": 1_000, "eval.workers": 1, "eval.episodes": 2,
    }
    base.update(overrides(args))
    return experiment.load(None, base)


def series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Samples grouped per (process, pid): a restarted actor is a new series."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(f"{r['process']} (pid {r['pid']})", []).append(r)
    return out


def progress_series(run_dir: Path, t0_wall: float) -> dict[str, list[tuple[float, int]]]:
    """(seconds since start, value) of learner updates and env steps, from the run's metric rows."""
    from cluster.runtime.progress import read_metrics

    try:
        rows = read_metrics(run_dir).to_pylist()
    except (OSError, ValueError) as exc:
        log.warning("no metrics in %s: %r", run_dir, exc)
        return {"updates": [], "env_steps": []}
    pick = lambda kind: [(round(r["time"] - t0_wall, 1), int(r["step"])) for r in rows if r["kind"] == kind]  # noqa: E731
    return {"updates": pick("learner"), "env_steps": pick("episode")}


def plot(path: Path, per: dict[str, list[dict[str, Any]]], store: list[dict[str, Any]],
         prog: dict[str, list[tuple[float, int]]], steady_end_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    for key, rs in per.items():
        axes[0].plot([r["t_s"] / 60 for r in rs], [r["rss_mb"] for r in rs], label=key)
    axes[0].set_ylabel("RSS (MB)")
    axes[0].legend(fontsize=7, loc="upper left", ncol=2)
    axes[1].plot([s["t_s"] / 60 for s in store], [s["used_mb"] for s in store])
    axes[1].set_ylabel("object store used (MB)")
    for name, pts in prog.items():
        axes[2].plot([t / 60 for t, _ in pts], [v for _, v in pts], label=name)
    axes[2].set_ylabel("count")
    axes[2].set_xlabel("minutes (dotted: end of the analysed window, the run's wall-clock budget)")
    for ax in axes:
        ax.axvline(steady_end_s / 60, color="grey", linestyle=":")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.analyse:
        return analyse(Path(args.analyse), args.json)
    import ray

    from cluster.runtime.ray_setup import init_ray
    from cluster.runtime.training import train

    if args.minutes <= 0 or args.sample_s <= 0 or args.workers < 1:
        raise UserError("--minutes and --sample-s must be > 0, --workers >= 1")
    out = Path(args.out or time.strftime("runs/soak-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = soak_config(args, out)
    evaluators = cfg.eval.workers if cfg.eval.every_updates > 0 else 0
    # Logical CPUs for the learner, every worker and evaluator, even on 2 cores (they share them).
    init_ray(num_cpus=max(os.cpu_count() or 1, cfg.run.workers + 1 + evaluators))
    monitor = Monitor(cfg.run.name, cfg.run.workers, args.sample_s,
                      dump_at_s=60 * args.minutes - 1.5 * args.sample_s, dump_path=out / "ray_memory.txt")
    t0_wall = time.time()
    monitor.start()
    train_start = time.monotonic() - monitor.t0
    error = None
    try:
        summary = train(cfg, quiet=args.json)
    except Exception as exc:  # reported with the figures gathered so far
        summary, error = {}, repr(exc)
        log.exception("soak run failed")
    finally:
        train_end = time.monotonic() - monitor.t0
        monitor.stop()
        monitor.join(timeout=120)
    monitor.sample()  # after the final snapshot
    store_errors = monitor.store_full_errors() + (["driver: " + error] if error and "ObjectStoreFull" in error else [])
    ray.shutdown()

    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["t_s", "process", "pid", "rss_mb", "anon_mb"])
        w.writeheader()
        w.writerows(monitor.rows)
    with open(out / "object_store.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(monitor.store[0]))
        w.writeheader()
        w.writerows(monitor.store)
    meta = {
        "minutes": args.minutes, "sample_s": args.sample_s, "workers": cfg.run.workers,
        "replay_capacity": cfg.replay.capacity, "replay_log_steps": cfg.replay.log_steps,
        "train_start_s": round(train_start, 1), "train_end_s": round(train_end, 1),
        "steady_end_s": round(train_start + 60 * args.minutes, 1),
        "env_steps": summary.get("env_steps"), "learner_updates": summary.get("learner_updates"),
        "worker_restarts": summary.get("worker_restarts"), "interrupted": summary.get("interrupted"),
        "error": error, "object_store_full_errors": len(store_errors), "object_store_full_lines": store_errors[:20],
        "sample_errors": monitor.errors, "progress": progress_series(cfg.run_dir(), t0_wall),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    return analyse(out, args.json)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: v if k == "process" else int(v) if k == "pid" else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]


def all_processes(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Memory of every sampled process added up at each sample, over the whole run (shutdown included).

    Anonymous memory is each process's own heap (a replay memory's arrays are counted where they
    live); resident memory also counts the object store's shared pages in every process that maps
    them, so its sum overstates.
    """
    at: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        at.setdefault(r["t_s"], []).append(r)
    anon = {t: sum(r["anon_mb"] for r in rs) for t, rs in at.items()}
    peak_t = max(anon, key=anon.__getitem__)
    return {"peak_anon_mb": round(anon[peak_t], 1), "peak_at_s": peak_t,
            "peak_rss_mb": round(max(sum(r["rss_mb"] for r in rs) for rs in at.values()), 1),
            "end_anon_mb": round(anon[max(anon)], 1)}


def analyse(out: Path, as_json: bool = False) -> int:
    """Slopes and verdicts of the samples in `out`; writes soak.json and soak.png, prints the table.

    The window runs from the first sample that saw the learner to the end of the run's wall-clock budget:
    the shutdown after it (workers stopped, the learner's catch-up, the final snapshot) is another regime
    and only shows as each series' `after_mb`.
    """
    if not (out / "run.json").exists():
        raise UserError(f"{out}: no run.json (not a soak output folder)")
    meta = json.loads((out / "run.json").read_text())
    rows, st = _read_csv(out / "samples.csv"), _read_csv(out / "object_store.csv")
    end = meta["steady_end_s"]
    start = min((r["t_s"] for r in rows if r["process"] == "learner"), default=meta["train_start_s"])
    window = [r for r in rows if r["t_s"] <= end]
    per = series(window)
    trends = {key: trend([r["t_s"] for r in rs], [r["rss_mb"] for r in rs], start, end) for key, rs in per.items()}
    # VmRSS also counts the object store's shared pages a process has touched; RssAnon is its own heap.
    anon = {key: trend([r["t_s"] for r in rs], [r["anon_mb"] for r in rs], start, end) for key, rs in per.items()}
    after = {key: rs[-1]["rss_mb"] for key, rs in series(rows).items()}
    st_win = [s for s in st if s["t_s"] <= end]
    store_trend = trend([s["t_s"] for s in st_win], [s["used_mb"] for s in st_win], start, end)
    plot(out / "soak.png", series(rows), st, meta["progress"], end)
    result = {
        **{k: v for k, v in meta.items() if k != "progress"}, "out": str(out),
        "window_s": [start, end], "analysed_from_s": start + (end - start) / 2,
        "threshold": f"GROWS if slope > max({GROWTH_PCT_PER_H}% of the second-half median per hour, "
                     f"{GROWTH_FLOOR_MB_PER_H} MB/h)",
        "processes": {k: dict(asdict(v), after_mb=after[k]) for k, v in trends.items()},
        "processes_anon": {k: asdict(v) for k, v in anon.items()},
        "object_store": dict(asdict(store_trend), capacity_mb=st[-1]["capacity_mb"],
                             max_mb=max(s["used_mb"] for s in st), after_mb=st[-1]["used_mb"],
                             max_objects=max(s["objects"] for s in st),
                             spilled_mb=st[-1]["spilled_mb"], fallback_mb=st[-1]["fallback_mb"]),
    }
    result["all_processes"] = all_processes(rows)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    if as_json:
        print(json.dumps(result))
    else:
        print(f"\nsoak: {meta['minutes']:g} min, {meta['env_steps']} env steps, {meta['learner_updates']} updates; "
              f"window {start:.0f}-{end:.0f}s, slopes over t >= {result['analysed_from_s']:.0f}s; "
              f"{result['threshold']}")
        print(f"{'process':<26} {'start MB':>8} {'end MB':>8} {'after':>7} {'slope MB/h':>10} {'(LS)':>7} "
              f"{'q4/q2':>7} {'verdict':<9} {'anon end':>8} {'anon MB/h':>9} {'(LS)':>7} anon verdict")
        for key, tr in [*trends.items(), ("object store (used)", store_trend)]:
            an = anon.get(key)
            last = after.get(key, st[-1]["used_mb"])
            print(f"{key:<26} {tr.start_mb:>8.1f} {tr.end_mb:>8.1f} {last:>7.1f} {tr.slope_mb_per_h:>10.1f} "
                  f"{tr.ls_slope_mb_per_h:>7.1f} {tr.relative_growth:>+7.1%} {tr.verdict:<9}"
                  + (f" {an.end_mb:>8.1f} {an.slope_mb_per_h:>9.1f} {an.ls_slope_mb_per_h:>7.1f} {an.verdict}"
                     if an else ""))
        tot = result["all_processes"]
        print(f"all processes together: peak {tot['peak_anon_mb']:,.0f} MB anonymous (own heaps) at "
              f"{tot['peak_at_s']:.0f} s, peak {tot['peak_rss_mb']:,.0f} MB resident")
        print(f"ObjectStoreFullError: {meta['object_store_full_errors']}; samples, plot, JSON in {out}")
    return 1 if meta["error"] or meta["object_store_full_errors"] else 0
