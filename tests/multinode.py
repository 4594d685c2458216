"""A local multi-node Ray cluster (`ray.cluster_utils.Cluster`) for tests that add and lose nodes.

Every node is a raylet of this machine with its own logical resources; the tests declare more logical
CPUs than this machine has cores (the actors mostly wait on each other, and Ray only counts them).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def local_cluster(monkeypatch: pytest.MonkeyPatch, head: dict[str, Any],
                  *others: dict[str, Any]) -> Iterator[tuple[Any, list[Any]]]:
    """(cluster, [head, *other nodes]), the driver connected to the head.

    The nodes' processes inherit this process's environment: PYTHONPATH names this checkout, so the
    workers import its code (and `tests.env_double`), also for a `fleet train` subprocess's actors.
    Cluster writes (and on shutdown deletes) <ray temp dir>/ray_current_cluster, which other people's
    `ray.init(address="auto")` on this machine read: that, and the sockets, go to a short private dir.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if ray.is_initialized():
        ray.shutdown()
    # Ray waits 30 s for a new GCS to report its port; a machine loaded by the suite's earlier tests may need more.
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "90")
    cluster = Cluster()
    try:
        try:
            nodes = [cluster.add_node(**{"include_dashboard": False, **head})]
        except RuntimeError as exc:  # the GCS did not start: say why (its own log), and what else ran then
            raise RuntimeError(f"{exc}\n{_start_diagnosis(Path(tmp))}") from exc
        nodes += [cluster.add_node(**spec) for spec in others]
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _start_diagnosis(tmp: Path, lines: int = 20) -> str:
    """The tails of the head's GCS logs under `tmp`, and the busiest processes of the machine."""
    import subprocess

    parts = []
    for log in sorted(tmp.glob("ray/session_*/logs/gcs_server*")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    ps = subprocess.run(["ps", "-eo", "pid,pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    parts.append("--- busiest processes\n" + "\n".join(line[:200] for line in ps.stdout.splitlines()[:12]))
    return "\n".join(parts) or "(no GCS log)"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """The first true value of `predicate()`, polled every `every` s for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
    return value


def actor_state(name: str) -> str:
    """Ray's state of the named actor of this job (ALIVE, PENDING_CREATION, RESTARTING, DEAD)."""
    import ray
    from ray._private.state import state

    return str(state.actor_table(ray.get_actor(name)._actor_id.hex()).get("State"))


def join(thread: threading.Thread, timeout: float) -> None:
    """Join `thread`; past `timeout` fail with where it is stuck (its stack), not only that it is."""
    thread.join(timeout=timeout)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame else "?"
        raise AssertionError(f"the run did not end within {timeout}s; it is at:\n{stack}")
