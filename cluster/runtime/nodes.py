"""The nodes of a Ray cluster as a run sees them: which can see the store, which were lost.

A run survives losing a node of rollout workers (Ray restarts them where their resources remain) but not
losing the learner's node: the learner holds the run's replay memory and optimizer state, and only the
store keeps a copy (its latest snapshot). `--resume auto` continues from there (docs/cluster.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from checkpoint_store.fs import Root, redact
from learner.common.errors import FleetError, StoreError

log = logging.getLogger(__name__)

SHARED_MARK = "probes/shared-"
"""Prefix of the file a run writes in a local store to see whether every node reads the same folder."""


class NodeLost(FleetError):
    """A node the run cannot go on without was lost (the learner's): the run stops with this one line,
    exit status 1. Not the user's doing, but the user acts on it (`--resume auto`)."""

    exit_code = 1


def is_local_store(uri: str) -> bool:
    """A store on a path of the machine that opens it (no scheme, or file://)."""
    return "://" not in uri or uri.lower().startswith("file://")


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def describe(node: dict[str, Any]) -> str:
    """A node as a person finds it: address, host name, and the start of its id (nodes of one machine
    share the address)."""
    return (f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')}, "
            f"node {node.get('NodeID', '?')[:8]})")


def _read_mark(uri: str, name: str) -> str:
    """On one node: the content of `name` in the store `uri` as this node opens it, or why not."""
    try:
        return Root(uri, create=False).read(name).decode()
    except Exception as exc:  # noqa: BLE001 - every failure means the same here: this node does not see it
        return f"unreadable: {type(exc).__name__}"


def check_store_shared(uri: str, timeout_s: float = 120.0) -> None:
    """Refuse a local-path store that some alive node cannot see (one line, exit 2).

    Whichever node runs the checkpoint writer (Ray restarts it anywhere) writes there and the driver
    reads it back, so every node must resolve `uri` to one shared folder. Shown, not assumed: this
    process writes a fresh mark file in the store, and a zero-CPU task pinned to each alive node reads it
    back through the same path resolution the writer uses (`~` and relative paths resolve per node). One
    node, an s3:// or gs:// store: nothing to check. A node that joins later is not checked.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if not is_local_store(uri) or len(nodes) < 2:
        return
    root = Root(uri, create=True)
    name, nonce = f"{SHARED_MARK}{uuid.uuid4().hex}", uuid.uuid4().hex
    root.write_atomic(name, nonce.encode())
    try:
        read = ray.remote(num_cpus=0, max_retries=0)(_read_mark)
        refs = {read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(uri, name): n for n in nodes}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        blind = []
        for ref, node in refs.items():
            try:
                seen = ray.get(ref) if ref in ready else "no answer"
            except Exception as exc:  # noqa: BLE001 - a node lost meanwhile cannot be shown to share it
                seen = f"failed: {type(exc).__name__}"
            if seen != nonce:
                blind.append(describe(node))
    finally:
        root.delete(name)
    if blind:
        raise StoreError(
            f"the snapshot store {redact(uri)} is a local path, and this cluster's node(s) {', '.join(blind)} "
            f"do not see the file written there: use an s3:// or gs:// store, or a path every node shares "
            f"(the same NFS mount on each)")
    log.info("store %s: %d nodes read the same folder", redact(uri), len(nodes))


class NodeWatch:
    """Nodes alive at the start of a run (or joined since) that Ray now reports dead, each once."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._known: dict[str, dict[str, Any]] = {}
        self._checked = 0.0
        self._unreported: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self._refresh()

    def _refresh(self) -> None:
        import ray

        self._checked = time.monotonic()
        for node in ray.nodes():
            nid = node["NodeID"]
            if node.get("Alive"):
                self._known[nid] = node
            elif nid in self._known:
                lost = self._known.pop(nid)
                self.lost.append(lost)
                self._unreported.append(lost)

    def poll(self, force: bool = False) -> list[dict[str, Any]]:
        """Nodes lost and not returned before (at most one GCS query every `every_s`, unless `force`)."""
        if force or time.monotonic() - self._checked >= self.every_s:
            self._refresh()
        out, self._unreported = self._unreported, []
        return out

    def is_dead(self, node_id: str) -> bool:
        """Whether Ray reports `node_id` dead now (asks the GCS)."""
        self._refresh()
        return any(n["NodeID"] == node_id for n in self.lost)
