"""The shared replay as a plain class (made a Ray actor only at wiring), and the workers' bounded sender.

The learner should not sample through the actor: on a 2-core machine, `ray.get`
of sampled 256-batches from the actor ran ~39 batches/s against >1,000 in
process. Instead it keeps a mirror, another ReplayMemory with the same config,
fed with `pull_new(cursor)`: the mirror sees the same chunks in the same order,
so it holds the same transitions and samples from the same distribution.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from learner.errors import FleetError
from learner.replay.batch import Batch
from learner.replay.chunks import Chunk
from learner.replay.memory import ReplayConfig, ReplayMemory

log = logging.getLogger(__name__)


class ReplayLagError(FleetError, RuntimeError):
    """A mirror asked for chunks the actor's log no longer holds."""


class ReplayActor:
    """Owns the shared ReplayMemory; keeps a bounded log of recent chunks for learner mirrors.

    Thread-safe: Ray actors with max_concurrency > 1 call it from several threads.
    """

    def __init__(self, cfg: ReplayConfig, vector_dim: int, gamma: float, files: Mapping[str, bytes] | None = None,
                 seed: int = 0, frames: int = 4) -> None:
        if files:
            self.memory = ReplayMemory.restore(cfg, vector_dim, gamma, files, frames=frames)
        else:
            self.memory = ReplayMemory(cfg, vector_dim, gamma, frames=frames, seed=seed)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._log: deque[Chunk] = deque()
        self._log_steps = 0
        # Cursor of the first logged chunk: a mirror restored from the same files starts at
        # memory.chunks_added.
        self._first = self.memory.chunks_added
        self.dropped_from_log = 0

    @property
    def cursor(self) -> int:
        """Cursor just past the newest chunk: what `pull_new` returns when there is nothing new."""
        return self._first + len(self._log)

    def add(self, chunk: Chunk) -> int:
        """Store a chunk; returns the steps accepted. Bad chunks raise ValueError and are not logged."""
        chunk = chunk.copy()  # do not pin the sender's object-store buffer in the log
        with self._lock:
            accepted = self.memory.add(chunk)
            self._log.append(chunk)
            self._log_steps += len(chunk)
            while self._log_steps > self.cfg.log_steps and len(self._log) > 1:
                self._log_steps -= len(self._log.popleft())
                self._first += 1
                self.dropped_from_log += 1
        return accepted

    def pull_new(self, cursor: int, max_chunks: int | None = None, strict: bool = True) -> tuple[list[Chunk], int]:
        """Chunks added since `cursor` (oldest first) and the cursor to pass next time.

        A mirror that fell further behind than the log holds raises ReplayLagError
        (strict) or, with strict=False, gets what is left and diverges from the actor.
        """
        with self._lock:
            head = self.cursor
            if cursor > head:
                raise ValueError(f"pull_new: cursor {cursor} is ahead of the replay ({head} chunks)")
            if cursor < self._first:
                msg = (f"replay mirror at chunk {cursor} fell behind the actor's log, which starts at chunk "
                       f"{self._first}: {self._first - cursor} chunks are gone. Pull more often or raise "
                       f"replay.log_steps ({self.cfg.log_steps}).")
                if strict:
                    raise ReplayLagError(msg)
                log.warning("%s Skipping ahead; the mirror now differs from the shared replay.", msg)
                cursor = self._first
            stop = head if max_chunks is None else min(head, cursor + max_chunks)
            chunks = [self._log[i - self._first] for i in range(cursor, stop)]
        return chunks, stop

    def sample(self, batch_size: int) -> Batch:
        """A batch from the actor's own rng (for comparison and tests; learners sample a local mirror)."""
        with self._lock:
            batch, _ = self.memory.sample(batch_size)
        return batch

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        with self._lock:
            self.memory.update_priorities(indices, td_abs)

    def export(self, previous: Mapping[str, str] | None = None) -> dict[str, bytes | str]:
        with self._lock:
            return self.memory.export(previous)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = self.memory.stats()
            out.update(cursor=self.cursor, log_chunks=len(self._log), log_steps=self._log_steps,
                       dropped_from_log=self.dropped_from_log)
        return out


class BoundedSender:
    """Worker-side backpressure: at most `max_in_flight` submissions pending; `send` waits on the oldest.

    `submit` is any callable that returns a Ray ObjectRef, e.g.
    `lambda chunk: replay.add.remote(chunk)`. Errors of a finished add are raised here.
    """

    def __init__(self, submit: Callable[[Chunk], Any], max_in_flight: int = 4, timeout_s: float = 300.0) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.submit = submit
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._refs: deque[Any] = deque()
        self.accepted = 0
        self.sent = 0
        self.waits = 0

    @property
    def in_flight(self) -> int:
        return len(self._refs)

    def _settle_oldest(self, timeout_s: float) -> None:
        import ray

        ref = self._refs[0]
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            raise TimeoutError(f"replay did not accept a chunk within {timeout_s:.0f}s; is the replay actor alive?")
        self._refs.popleft()
        self.accepted += int(ray.get(ref))

    def send(self, chunk: Chunk) -> None:
        """Submit a chunk, first waiting for the oldest submission if `max_in_flight` are pending."""
        while len(self._refs) >= self.max_in_flight:
            self.waits += 1
            self._settle_oldest(self.timeout_s)
        self._refs.append(self.submit(chunk))
        self.sent += 1

    def drain(self, timeout_s: float | None = None) -> int:
        """Wait for every pending submission; returns the steps the replay accepted in total."""
        while self._refs:
            self._settle_oldest(self.timeout_s if timeout_s is None else timeout_s)
        return self.accepted
