"""Where metrics go: TensorBoard and Parquet under runs/<name>/, and the live progress line."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class MetricsLog:
    """Scalars to TensorBoard at once, and to Parquet part files (one row per record).

    Rows are written out every `flush_rows` rows or `flush_s` seconds, so a long run holds a bounded
    number in memory and a killed one loses at most that much.
    """

    def __init__(self, run_dir: Path, flush_rows: int = 5_000, flush_s: float = 300.0) -> None:
        from tensorboardX import SummaryWriter

        self.run_dir = run_dir
        (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self._rows: list[dict[str, Any]] = []
        self._parts = len(list((run_dir / "metrics").glob("part-*.parquet")))
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._flushed_at = time.monotonic()

    def record(self, kind: str, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.tb.add_scalar(f"{kind}/{key}", value, step)
        self._rows.append({"time": time.time(), "kind": kind, "step": step, **values})
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        self.tb.flush()
        if not self._rows:
            return
        keys = sorted({k for r in self._rows for k in r})
        table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in self._rows])
        pq.write_table(table, self.run_dir / "metrics" / f"part-{self._parts:05d}.parquet")
        self._parts += 1
        self._rows.clear()

    def close(self) -> None:
        self.flush()
        self.tb.close()


def render(status: Status) -> Any:
    """The live panel of `status` (rich renderables)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    steps_s, upd_s = status.rates()
    eta = status.eta_s()
    eta_text = "-" if eta is None else f"{int(eta // 60)}:{int(eta % 60):02d}"
    pct = 100.0 * status.env_steps / max(status.total_env_steps, 1)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(status.total_env_steps, 1), completed=min(status.env_steps,
                                                                                   status.total_env_steps), width=40),
                Text(f"{status.env_steps:,}/{status.total_env_steps:,} env steps ({pct:.0f}%)  ETA {eta_text}"))
    grid = Table.grid(padding=(0, 2))
    grid.add_row("updates", f"{status.updates:,} ({upd_s:,.1f}/s)", "env steps/s", f"{steps_s:,.0f}")
    grid.add_row("replay", f"{status.replay_size:,}", "policy lag", f"{status.policy_lag:.1f}")
    grid.add_row("episodes", f"{status.episodes} (return {status.mean_return:.1f})", "snapshot", status.last_snapshot)
    grid.add_row("evaluation", status.last_eval, "elapsed", _clock(time.monotonic() - status.started))
    if status.env_failures or status.worker_restarts:
        grid.add_row("env failures", str(status.env_failures), "worker restarts", str(status.worker_restarts))
    return Panel(Group(Text(status.phase, style="bold"), bar, grid), title="fleet train", expand=False)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def read_metrics(run_dir: Path) -> pa.Table:
    """All metric rows of a run (parts may have different columns)."""
    parts = sorted((run_dir / "metrics").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


@dataclass
class Status:
    """What the progress line shows; filled by the runtime."""

    total_env_steps: int
    env_steps: int = 0
    """Env steps the learner has taken in."""
    collected: int = 0
    """Env steps the rollout workers have reported collecting (ahead of `env_steps` under Ray)."""
    updates: int = 0
    replay_size: int = 0
    policy_lag: float = 0.0
    last_snapshot: str = "-"
    last_eval: str = "-"
    steps_ahead: int = 0
    """Env steps the workers are ahead of what the replay ratio has consumed (they pause past a bound)."""
    phase: str = "starting"
    """What the run is doing now, in words (warm-up, learning, waiting for the learner, catching up, ...)."""
    env_failures: int = 0
    worker_restarts: int = 0
    workers_paused_s: float = 0.0
    """Seconds the rollout workers were held back for the learner (replay-ratio pacing)."""
    episodes: int = 0
    mean_return: float = float("nan")
    snapshot_block_ms: float | None = None
    """Median time a snapshot held the learner's loop (state copy and hand-over to the writer)."""
    started: float = field(default_factory=time.monotonic)
    _last: tuple[float, int, int] = (0.0, 0, 0)
    _window: list[tuple[float, int]] = field(default_factory=list)

    def eta_s(self, now: float | None = None, window_s: float = 120.0) -> float | None:
        """Seconds to the step budget at the env-step rate of the last `window_s` (None until known)."""
        now = time.monotonic() if now is None else now
        self._window.append((now, self.env_steps))
        while len(self._window) > 2 and now - self._window[1][0] >= window_s:
            self._window.pop(0)
        (t0, s0), remaining = self._window[0], self.total_env_steps - self.env_steps
        if remaining <= 0:
            return 0.0
        rate = (self.env_steps - s0) / (now - t0) if now > t0 else 0.0
        return remaining / rate if rate > 0 else None

    def rates(self) -> tuple[float, float]:
        now = time.monotonic()
        t0, s0, u0 = self._last if self._last[0] else (self.started, 0, 0)
        dt = max(now - t0, 1e-9)
        rates = ((self.env_steps - s0) / dt, (self.updates - u0) / dt)
        self._last = (now, self.env_steps, self.updates)
        return rates

    def line(self) -> str:
        steps_s, upd_s = self.rates()
        pct = 100.0 * self.env_steps / max(self.total_env_steps, 1)
        eta = self.eta_s()
        eta_text = "eta -" if eta is None else f"eta {int(eta // 60)}:{int(eta % 60):02d}"
        return (
            f"[{self.phase}] "
            f"env {self.env_steps:,}/{self.total_env_steps:,} ({pct:.0f}%) {eta_text} | upd {self.updates:,} | "
            f"{steps_s:,.0f} steps/s | {upd_s:,.1f} upd/s | replay {self.replay_size:,} | "
            f"lag {self.policy_lag:.1f} | episodes {self.episodes} (return {self.mean_return:.1f}) | "
            f"snapshot {self.last_snapshot} | eval {self.last_eval}"
            + (f" | env failures {self.env_failures}" if self.env_failures else "")
            + (f" | worker restarts {self.worker_restarts}" if self.worker_restarts else "")
        )


class Progress:
    """The live view of a run, refreshed from its own thread so it never goes silent, in any phase
    (the learner catching up, a final snapshot, an evaluation).

    On a terminal: a rich live panel (phase, progress bar with ETA, rates, replay, snapshot,
    evaluation) redrawn `refresh_per_s` times a second. Otherwise (`ray job logs`, CI, a pipe): one
    plain line every `every_s` seconds on stdout. `start(status)` begins, `stop()` ends it.
    """

    def __init__(self, every_s: float, quiet: bool = False, live: bool | None = None,
                 console: Any = None, refresh_per_s: float = 2.0) -> None:
        self.every_s = every_s
        self.quiet = quiet
        self.live = sys.stdout.isatty() if live is None else live
        self.console = console
        self.refresh_per_s = refresh_per_s
        self._next = 0.0
        self._status: Status | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def start(self, status: Status) -> None:
        """Show `status` until stop(): the caller only keeps its fields current."""
        if self.quiet or self._status is not None:
            return
        self._status = status
        self._stop.clear()
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=lambda: render(status), console=self.console or Console(),
                              refresh_per_second=self.refresh_per_s, transient=False)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._lines, name="progress", daemon=True)
            self._thread.start()

    def _lines(self) -> None:
        while not self._stop.is_set():
            self.maybe_print(self._status, force=True)
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        if self._status is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._live is not None:
            self._live.stop()  # draws the last frame
            self._live = None
        else:
            self.maybe_print(self._status, force=True)
        self._status = None

    def maybe_print(self, status: Status | None, force: bool = False) -> None:
        """A plain line, at most every `every_s` unless forced (while started, the thread prints)."""
        now = time.monotonic()
        if self.quiet or status is None or (not force and (now < self._next or self._status is not None)):
            return
        self._next = now + self.every_s
        print(status.line(), flush=True)

    def summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        """Write summary.json and learning.png, then tell the person how it went and what to do next."""
        plot = learning_plot(run_dir)
        if plot is not None:
            summary["learning_plot"] = str(plot)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if self.quiet:
            return
        sys.stdout.write(summary_text(summary, run_dir))
        sys.stdout.flush()


def summary_text(summary: dict[str, Any], run_dir: Path) -> str:
    """The end-of-run report a person reads: outcome, evaluation beside the reference, where, next."""
    minutes = summary.get("wall_s", 0.0) / 60
    head = "Run interrupted" if summary.get("interrupted") else "Run failed" if summary.get("error") else "Run finished"
    lines = [f"\n{head}: {summary.get('run')} in {minutes:.1f} min, {summary.get('env_steps', 0):,} env steps, "
             f"{summary.get('learner_updates', 0):,} updates, {summary.get('episodes', 0):,} training episodes"]
    if summary.get("error"):
        lines.append(f"  error: {summary['error']}")
    final, ref = summary.get("final_eval"), summary.get("scripted_reference")
    if final:
        lines.append(f"  final evaluation ({final['episodes']} validation episodes): route completion "
                     f"{final['route_completion']:.2f}, driving score {final['driving_score']:.2f}, "
                     f"mean speed {final['mean_speed']:.1f} m/s, return {final['mean_return']:.1f}")
        if ref:
            lines.append(f"  scripted driver, same episodes:  route completion {ref['route_completion']:.2f}, "
                         f"mean speed {ref['mean_speed']:.1f} m/s, return {ref['mean_return']:.1f}")
    else:
        lines.append(f"  mean return of the last training episodes: {summary.get('mean_return_last_episodes')}"
                     " (no evaluation ran: eval.every_updates is 0)")
    if summary.get("best"):
        best = summary["best"]
        lines.append(f"  use: {summary.get('store', '')}@best = {best['version']}, the best of the evaluated snapshots "
                     f"on the validation episodes (driving score {best['driving_score']:.2f}"
                     + (f", return {best['mean_return']:.1f})" if best.get("mean_return") is not None else ")"))
    health = [f"{k.replace('_', ' ')} {summary[k]}" for k in ("env_failures", "worker_restarts") if summary.get(k)]
    for lost in summary.get("node_losses") or []:
        on = [f"worker(s) {', '.join(map(str, lost['workers']))}"] if lost.get("workers") else []
        health.append(f"node {lost['node']} lost at {lost['at_env_steps']:,} env steps"
                      + (f" ({', '.join(on + lost.get('actors', []))} on it)" if on or lost.get("actors") else ""))
    if summary.get("workers_paused_s"):
        health.append(f"workers waited {summary['workers_paused_s']:.0f} s for the learner")
    if summary.get("snapshot_block_ms_median") is not None:
        health.append(f"snapshots held the learner {summary['snapshot_block_ms_median']} ms (median)")
    if health:
        lines.append("  " + ", ".join(health))
    store = summary.get("store", "")
    lines += ["  where:",
              f"    run folder     {run_dir}  (summary.json, metrics/*.parquet, tb/, ray.log)",
              f"    snapshots      {store}  (final {summary.get('final_snapshot')})"
              if summary.get("final_snapshot_stored", True) else
              f"    snapshots      {store}  (final snapshot NOT stored; last complete version "
              f"{summary.get('last_stored_version', '-')})"]
    if summary.get("learning_plot"):
        lines.append(f"    learning curve {summary['learning_plot']}")
    if summary.get("placement_text"):
        lines.append("  placement:")
        lines += [f"    {line}" for line in summary["placement_text"]]
    lines += ["  next:",
              f"    fleet evaluate --snapshot '{store}@latest' --video      # watch it drive",
              f"    fleet train --resume '{store}'                          # train on from the latest snapshot",
              f"    tensorboard --logdir {run_dir / 'tb'}", ""]
    return "\n".join(lines) + "\n"


def learning_plot(run_dir: Path) -> Path | None:
    """runs/<name>/learning.png: training-episode returns against env steps, and the periodic
    evaluations' route completion and driving score against updates. None when nothing was recorded."""
    try:
        table = read_metrics(run_dir)
    except (ValueError, OSError):
        return None
    rows = table.to_pylist()
    episodes = [(r["step"], r["return"]) for r in rows if r.get("kind") == "episode" and r.get("return") is not None]
    evals = [(r["step"], r.get("route_completion"), r.get("driving_score")) for r in rows if r.get("kind") == "eval"]
    if not episodes and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.set(xlabel="env steps", ylabel="return", title="training episodes (with exploration noise)")
    if episodes:
        steps, returns = zip(*episodes)
        ax1.plot(steps, returns, ".", alpha=0.4, label="training episode")
        k = max(1, len(returns) // 20)
        smooth = [sum(returns[max(0, i - k):i + 1]) / len(returns[max(0, i - k):i + 1]) for i in range(len(returns))]
        ax1.plot(steps, smooth, "-", label=f"mean of last {k + 1}")
        ax1.legend(loc="lower right")
    ax2.set(xlabel="learner updates", ylabel="fraction", ylim=(-0.02, 1.02), title="evaluation (deterministic)")
    if evals:
        upd, completion, score = zip(*evals)
        ax2.plot(upd, completion, "o-", label="route completion")
        ax2.plot(upd, score, "s--", label="driving score")
        ax2.legend(loc="lower right")
    else:
        ax2.text(0.5, 0.5, "no evaluation during this run\n(eval.every_updates = 0)", ha="center", va="center",
                 transform=ax2.transAxes)
    fig.tight_layout()
    path = run_dir / "learning.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
