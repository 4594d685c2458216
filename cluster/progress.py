"""Where metrics go: TensorBoard and Parquet under runs/<name>/, and the live progress line."""

from __future__ import annotations

import json
import sys
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
    env_failures: int = 0
    worker_restarts: int = 0
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
            f"env {self.env_steps:,}/{self.total_env_steps:,} ({pct:.0f}%) {eta_text} | upd {self.updates:,} | "
            f"{steps_s:,.0f} steps/s | {upd_s:,.1f} upd/s | replay {self.replay_size:,} | "
            f"lag {self.policy_lag:.1f} | episodes {self.episodes} (return {self.mean_return:.1f}) | "
            f"snapshot {self.last_snapshot} | eval {self.last_eval}"
            + (f" | env failures {self.env_failures}" if self.env_failures else "")
            + (f" | worker restarts {self.worker_restarts}" if self.worker_restarts else "")
        )


class Progress:
    """Prints a status line every `every_s` seconds (stdout, so `ray job logs -f` shows it)."""

    def __init__(self, every_s: float, quiet: bool = False) -> None:
        self.every_s = every_s
        self.quiet = quiet
        self._next = 0.0

    def maybe_print(self, status: Status, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now < self._next):
            return
        self._next = now + self.every_s
        print(status.line(), flush=True)

    def summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if self.quiet:
            return
        out = sys.stdout
        out.write("\nRun finished\n")
        for key, value in summary.items():
            if isinstance(value, dict) and key != "placement":
                value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
            out.write(f"  {key:<22} {value}\n")
        out.flush()
