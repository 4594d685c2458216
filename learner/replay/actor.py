"""The replay's ingestion point as a plain class (made a Ray actor only at wiring), and the workers' bounded sender.

Workers push chunks here; the learner pulls them (`pull_new(cursor)`) into the one
replay memory of the run, which it samples from and which its snapshots save. The
actor holds no memory of its own, only a bounded log of recent chunks: sampling
through an actor is slow (on a 2-core machine `ray.get` of 256-batches ran ~39
batches/s against >1,000 in process), and a second full copy would double the
replay's RAM (7.8 GB per million transitions) and save priorities the learner
never told it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from learner.common.chunks import Chunk, validate_chunk
from learner.common.errors import FleetError
from learner.replay.memory import ReplayConfig

log = logging.getLogger(__name__)


class Pulled(NamedTuple):
    """What `ReplayActor.pull_new` hands a consumer: the chunks since its cursor, and the cursor to pass next."""

    chunks: list[Chunk]
    cursor: int


class ReplayLagError(FleetError, RuntimeError):
    """A consumer asked for chunks the actor's log no longer holds."""


class ReplayActor:
    """Validates and logs the chunks workers send, in arrival order, for the learner to pull.

    Thread-safe: Ray actors with max_concurrency > 1 call it from several threads.
    `first_cursor` is the chunk count of a restored replay (`segments.saved_chunks`), so the
    learner's restored memory and this log agree on where new chunks start.
    """

    def __init__(self, cfg: ReplayConfig, vector_dim: int, frames: int = 4, first_cursor: int = 0) -> None:
        self.cfg, self.vector_dim, self.k = cfg, vector_dim, frames
        self._lock = threading.Lock()
        self._log: deque[Chunk] = deque()
        self._log_steps = 0
        self._first = first_cursor
        """Cursor of the oldest logged chunk."""
        self.dropped_from_log = 0
        self.steps_added = 0
        self._consumed = first_cursor
        """Cursor the consumer last pulled up to: the chunks from here on wait in the log for it."""

    @property
    def cursor(self) -> int:
        """Cursor just past the newest chunk: what `pull_new` returns when there is nothing new."""
        return self._first + len(self._log)

    def add(self, chunk: Chunk) -> int:
        """Log a chunk; returns its steps. Malformed chunks raise ValueError and are not logged
        (the learner's memory still drops non-finite and orphaned steps, and counts them)."""
        validate_chunk(chunk, self.vector_dim, self.k)
        chunk = chunk.copy()  # do not pin the sender's object-store buffer in the log
        with self._lock:
            self._log.append(chunk)
            self._log_steps += len(chunk)
            self.steps_added += len(chunk)
            while self._log_steps > self.cfg.log_steps and len(self._log) > 1:
                self._log_steps -= len(self._log.popleft())
                self._first += 1
                self.dropped_from_log += 1
        return len(chunk)

    def pull_new(self, cursor: int, max_chunks: int | None = None, strict: bool = True) -> Pulled:
        """Chunks added since `cursor` (oldest first) and the cursor to pass next time.

        A consumer that fell further behind than the log holds raises ReplayLagError
        (strict) or, with strict=False, gets what is left and misses the chunks in between.
        """
        with self._lock:
            head = self.cursor
            if cursor > head:
                raise ValueError(f"pull_new: cursor {cursor} is ahead of the replay ({head} chunks)")
            if cursor < self._first:
                msg = (f"replay consumer at chunk {cursor} fell behind the actor's log, which starts at chunk "
                       f"{self._first}: {self._first - cursor} chunks are gone. Pull more often or raise "
                       f"replay.log_steps ({self.cfg.log_steps}).")
                if strict:
                    raise ReplayLagError(msg)
                log.warning("%s Skipping ahead; those chunks are lost to this consumer.", msg)
                cursor = self._first
            stop = head if max_chunks is None else min(head, cursor + max_chunks)
            chunks = [self._log[i - self._first] for i in range(cursor, stop)]
            self._consumed = max(self._consumed, stop)
        return Pulled(chunks, stop)

    def backlog_steps(self) -> int:
        """Steps logged that the consumer has not pulled yet: what a producer paces itself by."""
        with self._lock:
            start = max(self._consumed, self._first) - self._first
            return sum(len(self._log[i]) for i in range(start, len(self._log)))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"cursor": self.cursor, "steps_added": self.steps_added, "log_chunks": len(self._log),
                    "log_steps": self._log_steps, "dropped_from_log": self.dropped_from_log,
                    "consumed_cursor": self._consumed}


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
