"""Process and port helpers shared by tests that start servers."""

from __future__ import annotations

from pathlib import Path

from checkpoint_store.local_s3 import free_ports

__all__ = ["alive", "free_ports"]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count: PID 1 here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
