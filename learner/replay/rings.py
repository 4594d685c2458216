"""The two rings a replay memory stores transitions in, and which of their slots can be sampled.

Frames (84x84 uint8, each stored once) live in a ring of `capacity * (1 + frame_slack)` slots;
steps in a ring of `capacity` slots. Every frame and step gets a global id, a counter that never
wraps; slot = id % ring size. A step keeps the frame slots of its observation and next-observation
stacks and the id of its stack's oldest frame, so a step whose frames were overwritten is
recognised and never sampled.
"""

from __future__ import annotations

import math

import numpy as np

from learner.common.chunks import ACTION_DIM, FRAME_SHAPE


class Rings:
    """Frame and step rings, the sampling window [tail, steps_written), and the segments written since
    the last export (`dirty`, by kind: "steps", "frames", "prio")."""

    STEP_ARRAYS = ("obs_slots", "next_slots", "oldest_frame", "vector", "next_vector", "action", "reward",
                   "terminated", "truncated", "episode", "policy_version", "ret", "discount", "boot", "complete")

    def __init__(self, capacity: int, frame_slack: float, frames: int, vector_dim: int, segment_steps: int) -> None:
        c = self.capacity = capacity
        self.segment_steps = segment_steps
        self.frame_capacity = c + max(math.ceil(c * frame_slack), 2 * frames)
        # np.zeros maps untouched pages lazily, so a 1M ring costs memory only as it fills.
        self.frames = np.zeros((self.frame_capacity, *FRAME_SHAPE), np.uint8)
        self.obs_slots = np.zeros((c, frames), np.int32)
        self.next_slots = np.zeros((c, frames), np.int32)
        self.oldest_frame = np.zeros(c, np.int64)
        self.vector = np.zeros((c, vector_dim), np.float32)
        self.next_vector = np.zeros((c, vector_dim), np.float32)
        self.action = np.zeros((c, ACTION_DIM), np.float32)
        self.reward = np.zeros(c, np.float32)
        self.terminated = np.zeros(c, bool)
        self.truncated = np.zeros(c, bool)
        self.episode = np.zeros(c, np.int64)
        self.policy_version = np.zeros(c, np.int64)
        # The n-step target of each step (`NStepFolder`): summed reward, discount, the step whose next
        # observation it bootstraps from, and whether its window is complete (only then is it sampled).
        self.ret = np.zeros(c, np.float32)
        self.discount = np.zeros(c, np.float32)
        self.boot = np.zeros(c, np.int64)
        self.complete = np.zeros(c, bool)
        self.steps_written = 0
        self.frames_written = 0
        self.tail = 0
        self.dirty: dict[str, set[int]] = {"steps": set(), "frames": set(), "prio": set()}

    def __len__(self) -> int:
        return self.steps_written - self.tail

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in ("frames", *self.STEP_ARRAYS))

    def mark(self, kind: str, slots: np.ndarray | range | list[int]) -> None:
        """Note the segments of `slots` as changed since the last export."""
        seg = self.segment_steps
        if isinstance(slots, range):
            if len(slots):
                self.dirty[kind].update(range(slots.start // seg, (slots.stop - 1) // seg + 1))
        elif len(slots):
            self.dirty[kind].update(np.unique(np.asarray(slots) // seg).tolist())

    def write_frames(self, frames: np.ndarray) -> int:
        """Append frames to the frame ring; returns the global id of the first."""
        start, n, fc = self.frames_written, len(frames), self.frame_capacity
        # Frames beyond one ring's worth would be overwritten within this very write.
        skip = max(0, n - fc)
        first = (start + skip) % fc
        split = min(n - skip, fc - first)
        self.frames[first:first + split] = frames[skip:skip + split]
        self.frames[: n - skip - split] = frames[skip + split:]
        self.mark("frames", range(first, first + split))
        self.mark("frames", range(0, n - skip - split))
        self.frames_written += n
        return start

    def claim_steps(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Global ids and ring slots of `n` new steps (the caller fills them)."""
        ids = self.steps_written + np.arange(n, dtype=np.int64)
        self.steps_written += n
        return ids, ids % self.capacity

    def advance_tail(self) -> np.ndarray:
        """Move the sampling window past steps overwritten in the step ring or whose frames were
        overwritten; returns the slots of the steps it dropped (their priorities go to zero)."""
        start, cap = self.tail, self.capacity
        self.tail = max(self.tail, self.steps_written - cap)
        lowest_frame = self.frames_written - self.frame_capacity
        while self.tail < self.steps_written:
            block = np.arange(self.tail, min(self.tail + 256, self.steps_written))
            gone = self.oldest_frame[block % cap] < lowest_frame
            if gone.all():
                self.tail = int(block[-1]) + 1
                continue
            self.tail = int(block[np.argmin(gone)])
            break
        if self.tail <= start:
            return np.zeros(0, np.int64)
        return np.arange(max(start, self.steps_written - cap), self.tail) % cap

    def ids(self, slots: np.ndarray) -> np.ndarray:
        """Global step id now held by each ring slot."""
        base = max(self.steps_written - self.capacity, 0)
        return base + (slots - base) % self.capacity

    def valid(self, ids: np.ndarray) -> np.ndarray:
        """Whether each global step id can be sampled now."""
        ids = np.asarray(ids, np.int64)
        slots = ids % self.capacity
        return ((ids >= self.tail) & (ids < self.steps_written) & self.complete[slots]
                & (self.oldest_frame[slots] >= self.frames_written - self.frame_capacity))
