"""The seams between the parts, named: what crosses each, and in which shape.

A rollout worker steps an env made by an env factory (`MakeEnv`), pushes each chunk it fills into a
`ChunkSink` and asks a `WeightsPoll` for newer `Weights`. The learner takes chunks from a
`ChunkSource`, publishes `Weights` (its `weights_if_newer` is a `WeightSource`) and hands each snapshot
to a `SnapshotSink`. Whether each seam is a function call in one process (`fleet train --local`) or a
Ray actor call (the default) is the runtime's wiring (cluster/runtime/); the parts on either side do not
know. A run itself is `cluster.runtime.run.Run`, which `LocalRun` and `RayRun` implement.

Types only (and the one value type, `Weights`): nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import gymnasium as gym
    import torch

    from learner.common.chunks import Chunk

ChunkSink = Callable[["Chunk"], None]
"""Where a worker's full chunks go: the replay actor's bounded sender (Ray), a list (one process), a memory."""

ChunkSource = Callable[[], "list[Chunk]"]
"""Where the learner's new chunks come from: the chunks sent since the last call, possibly none."""

PolicyParams = dict[str, dict[str, "torch.Tensor"]]
"""The policy's state dicts by component (`actor`, `actor_cnn`): what a worker needs to act."""


@dataclass(frozen=True)
class Weights:
    """A published policy: its version (1, 2, ... in publishing order) and its parameters."""

    version: int
    params: PolicyParams


WeightSource = Callable[[int], "Weights | None"]
"""The newest published weights when newer than the version given, else None (cheap to poll)."""


class WeightsPoll(Protocol):
    """A worker's way to newer weights: called with the version it acts with. A poll whose answer comes
    later (a Ray call in flight) says so with `in_flight`, and the worker calls it again every step until
    it has the answer; a plain `WeightSource` answers at once."""

    def __call__(self, version: int) -> Weights | None: ...


SnapshotState = dict[str, Any]
"""A snapshot's state tree: every network, optimizer, counter and generator, and the learner's own."""

SnapshotMeta = dict[str, Any]
"""A snapshot's metadata: `learner_updates`, `env_steps`, `metrics`; the runtime adds `config`."""

SnapshotSink = Callable[[SnapshotState, SnapshotMeta], None]
"""Takes a snapshot the learner just took and returns at once; the store's writer does the I/O."""

FileValue = bytes | str
"""A snapshot file: its bytes, or "sha256:<hex>", a reference to a blob the store already holds."""

ReplayFiles = Mapping[str, FileValue]
"""A snapshot's replay files by name (`FileValue`s): the memory's segments changed since the last stored
version as bytes, the others as references."""

MakeEnv = Callable[[int], "gym.Env"]
"""Builds an env that obeys the contract (rollout_workers/contract.py) from a seed: an env factory."""
