"""Reading Linux's /proc: the one parser for process state, groups, children and memory.

Standard library only, so that the CARLA server's watchdog (`rollout_workers/carla/watchdog.py`, run by file path in
an isolated interpreter) can use it too.
"""

from __future__ import annotations

import os


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None when gone.

    The command name is parenthesised and may itself contain spaces or parentheses, so the fields
    start after the last ')'. Index 0 is the state, 1 the ppid, 2 the process group, 19 the start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def status(pid: int | str) -> dict[str, str]:
    """/proc/PID/status as a dict ({} when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int, exclude: int | None = None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    out = []
    for pid in pids():
        fields = stat_fields(pid)
        if pid != exclude and fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(pid)
    return out


def children(parent: int) -> dict[int, str]:
    """pid -> command line of the direct children of `parent`."""
    out = {}
    for pid in pids():
        fields = stat_fields(pid)
        if fields is None or int(fields[1]) != parent:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return out


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, RssAnon) of a process in MB, or None when it is gone."""
    st = status(pid)
    if "VmRSS" not in st:
        return None

    def mb(key: str) -> float:
        return float(st.get(key, "0 kB").split()[0]) / 1024

    return mb("VmRSS"), mb("RssAnon")
