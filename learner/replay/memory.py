"""Frame-deduplicating ring replay: each 84x84 frame stored once, stacks rebuilt by index at sample time.

Two rings: frames (capacity * (1 + frame_slack) slots) and steps (capacity
slots). Every frame and step gets a global id (a counter that never wraps);
slot = id % ring size. A step keeps the frame slots of its observation and next
observation stacks and the id of its stack's oldest frame, so a step whose
frames were overwritten is recognised and never sampled.

n-step targets are folded in as steps arrive (per stream, the steps whose
window is still open wait in `pending`), so sampling is a handful of gathers.
A step becomes sampleable once its window is complete: n steps seen, or the
episode ended (terminated: discount 0; truncated, or cut by an env failure,
a lost chunk or a rejected NaN step: bootstrap from the last step's next obs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from learner.replay.batch import Batch
from learner.replay.chunks import ACTION_DIM, FRAME_SHAPE, Chunk, validate_chunk
from learner.replay.sum_tree import SumTree

if TYPE_CHECKING:
    from learner.replay.segments import ExportPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = 1_000_000
    """Transitions (env steps) the replay holds; the oldest are overwritten."""
    frame_slack: float = 0.0625
    """Extra frame slots, as a fraction of capacity, for the K frames of each reset observation."""
    n_step: int = 1
    """Steps summed into each target: reward = sum gamma^k r_k, discount = gamma^n (0 if terminated)."""
    prioritized: bool = False
    """Proportional prioritized replay (sum tree) instead of uniform sampling."""
    alpha: float = 0.6
    """Priority exponent: P(i) ~ (|td_i| + eps)^alpha."""
    beta: float = 0.4
    """Importance-weight exponent at the start."""
    beta_final: float = 1.0
    """Importance-weight exponent reached after beta_anneal_samples batches."""
    beta_anneal_samples: int = 0
    """Batches over which beta moves linearly to beta_final (0 keeps beta constant)."""
    eps: float = 1e-6
    """Added to |td| so no transition gets priority zero."""
    log_steps: int = 65_536
    """Steps of recent chunks the replay actor keeps for learner mirrors (`pull_new`)."""
    segment_steps: int = 4_096
    """Ring slots per persisted Arrow segment; only segments changed since the last save are rewritten.
    Between two default snapshots (a few hundred to a few thousand steps) one or two segments change:
    a frame segment is 4,096 x 7 KB = 29 MB to encode and hash, where 16,384 made it 115 MB."""

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.n_step < 1 or self.segment_steps < 1:
            raise ValueError("capacity, n_step and segment_steps must be >= 1")
        if self.frame_slack < 0 or self.alpha < 0 or self.eps <= 0:
            raise ValueError("frame_slack and alpha must be >= 0 and eps > 0")


@dataclass
class _Stream:
    """What the replay remembers of one worker stream between its chunks."""

    seq: int = -1
    carry: list[int] = field(default_factory=list)  # global ids of the stream's last K frames
    in_episode: bool = False  # the stream's env episode is open and its frames are known
    episode: int = -1  # id of the open episode segment, -1 when none is open
    last: int = -1  # global id of the open segment's last step
    pending: list[list] = field(default_factory=list)  # [step id, steps summed, discounted sum]


class ReplayMemory:
    """Ring replay of transitions from many worker streams; `add(chunk)`, `sample(batch, rng)`."""

    def __init__(self, cfg: ReplayConfig, vector_dim: int, gamma: float, frames: int = 4, seed: int = 0) -> None:
        self.cfg, self.vector_dim, self.gamma, self.k = cfg, vector_dim, float(gamma), frames
        c = cfg.capacity
        self.frame_capacity = c + max(math.ceil(c * cfg.frame_slack), 2 * frames)
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
        self.ret = np.zeros(c, np.float32)
        self.discount = np.zeros(c, np.float32)
        self.boot = np.zeros(c, np.int64)
        self.complete = np.zeros(c, bool)
        self.tree = SumTree(c) if cfg.prioritized else None
        self.steps_written = 0
        self.frames_written = 0
        self.tail = 0
        self.episodes = 0
        self.chunks_added = 0
        self.steps_added = 0
        self.rejected_nonfinite = 0
        self.orphaned = 0
        self.max_priority = 1.0
        self.samples = 0
        self.streams: dict[int, _Stream] = {}
        self.rng = np.random.default_rng(seed)
        self._dirty: dict[str, set[int]] = {"steps": set(), "frames": set(), "prio": set()}
        self._exported: dict[str, str] = {}

    STEP_ARRAYS = ("obs_slots", "next_slots", "oldest_frame", "vector", "next_vector", "action", "reward",
                   "terminated", "truncated", "episode", "policy_version", "ret", "discount", "boot", "complete")

    def __len__(self) -> int:
        return self.steps_written - self.tail

    @property
    def nbytes(self) -> int:
        """Bytes of every allocated array (the rings at full capacity, the sum tree)."""
        arrays = [self.frames, *(getattr(self, n) for n in self.STEP_ARRAYS)]
        return sum(a.nbytes for a in arrays) + (self.tree.tree.nbytes if self.tree is not None else 0)

    def _mark(self, kind: str, slots: np.ndarray | range) -> None:
        seg = self.cfg.segment_steps
        if isinstance(slots, range):
            if len(slots):
                self._dirty[kind].update(range(slots.start // seg, (slots.stop - 1) // seg + 1))
        elif len(slots):
            self._dirty[kind].update(np.unique(np.asarray(slots) // seg).tolist())

    def _write_frames(self, frames: np.ndarray) -> int:
        start, n, fc = self.frames_written, len(frames), self.frame_capacity
        # Frames beyond one ring's worth would be overwritten within this very write.
        skip = max(0, n - fc)
        first = (start + skip) % fc
        split = min(n - skip, fc - first)
        self.frames[first:first + split] = frames[skip:skip + split]
        self.frames[: n - skip - split] = frames[skip + split:]
        self._mark("frames", range(first, first + split))
        self._mark("frames", range(0, n - skip - split))
        self.frames_written += n
        return start

    def add(self, chunk: Chunk) -> int:
        """Store a chunk's steps; returns how many were accepted (NaN/inf and orphaned steps are dropped)."""
        validate_chunk(chunk, self.vector_dim, self.k)
        st = self.streams.setdefault(chunk.stream, _Stream())
        if chunk.seq != st.seq + 1 and st.seq >= 0:
            log.warning("replay: stream %x jumped from chunk %d to %d; its open episode is cut there",
                        chunk.stream, st.seq, chunk.seq)
        continuous = chunk.seq == st.seq + 1 and st.seq >= 0
        if not continuous:
            self._close(st)
            st.carry = []
        frame0 = self._write_frames(chunk.frames)
        carry = np.asarray(st.carry, np.int64)
        lookup = np.concatenate([np.full(self.k - len(carry), -1, np.int64), carry,
                                 frame0 + np.arange(len(chunk.frames), dtype=np.int64)])
        obs_ids, next_ids = lookup[chunk.obs_frames + self.k], lookup[chunk.next_frames + self.k]
        finite = (np.isfinite(chunk.vector).all(1) & np.isfinite(chunk.next_vector).all(1)
                  & np.isfinite(chunk.action).all(1) & np.isfinite(chunk.reward))
        self.rejected_nonfinite += int((~finite).sum())
        known = (obs_ids >= 0).all(1) & (next_ids >= 0).all(1)

        # Which steps to keep, and which open a new episode segment (n-step sums never cross one).
        ended = (chunk.terminated | chunk.truncated).tolist()
        in_episode = continuous and st.in_episode  # frames and vectors of the env episode are known
        joinable = continuous and st.episode >= 0  # an open segment the next step can extend
        keep = np.zeros(len(chunk), bool)
        starts = np.zeros(len(chunk), bool)
        rows = zip(finite.tolist(), chunk.episode_start.tolist(), ended, known.tolist())
        for t, (ok, ep_start, end, frames_known) in enumerate(rows):
            if ep_start:
                in_episode, joinable = True, False
            elif not in_episode or not frames_known:
                self.orphaned += int(ok)
                joinable = False
                continue
            if ok:
                keep[t], starts[t] = True, not joinable
            joinable = ok and not end  # a rejected step cuts the segment; the episode goes on
            in_episode = not end
        st.in_episode = in_episode
        idx = np.flatnonzero(keep)
        n = len(idx)
        ids = self.steps_written + np.arange(n, dtype=np.int64)
        slots = ids % self.cfg.capacity
        self.steps_written += n
        o, nx = obs_ids[idx], next_ids[idx]
        self.obs_slots[slots] = o % self.frame_capacity
        self.next_slots[slots] = nx % self.frame_capacity
        self.oldest_frame[slots] = o.min(1)
        for name in ("vector", "next_vector", "action", "reward", "terminated", "truncated", "policy_version"):
            getattr(self, name)[slots] = getattr(chunk, name)[idx]
        self.complete[slots] = False
        self._mark("steps", slots)
        done = self._fold(st, ids, chunk, idx, starts[idx])
        if not joinable:
            self._close(st, done)
        if self.tree is not None:
            self.tree.update(slots, 0.0)
            self.tree.update(np.asarray(done, np.int64), self.max_priority ** self.cfg.alpha)
            self._mark("prio", slots)
        st.seq = chunk.seq
        st.carry = lookup[-self.k:].tolist() if (lookup[-self.k:] >= 0).all() else []
        self._advance_tail()
        self.chunks_added += 1
        self.steps_added += n
        return n

    def _fold(self, st: _Stream, ids: np.ndarray, chunk: Chunk, idx: np.ndarray, starts: np.ndarray) -> list[int]:
        """Fold the new steps into n-step targets; returns the slots whose window completed."""
        gamma, nstep, cap = self.gamma, self.cfg.n_step, self.cfg.capacity
        done: list[int] = []
        rewards = chunk.reward[idx].tolist()
        terms = chunk.terminated[idx].tolist()
        ends = (chunk.terminated[idx] | chunk.truncated[idx]).tolist()
        for i, step in enumerate(ids.tolist()):
            if starts[i]:
                self._close(st, done)
                self.episodes += 1
                st.episode = self.episodes - 1
            self.episode[step % cap] = st.episode
            st.pending.append([step, 0, 0.0])
            r = rewards[i]
            for p in st.pending:
                p[2] += gamma ** p[1] * r
                p[1] += 1
            if ends[i] or st.pending[0][1] == nstep:
                finished = st.pending if ends[i] else st.pending[:1]
                self._finish(finished, step, 0.0 if terms[i] else 1.0, done)
                st.pending = [] if ends[i] else st.pending[1:]
            st.last = step
            if ends[i]:
                st.episode, st.last = -1, -1
        return done

    def _finish(self, pending: list[list], boot: int, alive: float, done: list[int]) -> None:
        cap, low = self.cfg.capacity, self.steps_written - self.cfg.capacity
        for step, k, total in pending:
            if step < low:
                continue  # its slot already holds a newer step
            s = step % cap
            self.ret[s] = total
            self.discount[s] = self.gamma ** k * alive
            self.boot[s] = boot
            self.complete[s] = True
            done.append(s)
            self._mark("steps", [s])

    def _close(self, st: _Stream, done: list[int] | None = None) -> None:
        """End the stream's open episode segment where it stands: its steps bootstrap from the last one."""
        if st.pending:
            out: list[int] = [] if done is None else done
            self._finish(st.pending, st.last, 1.0, out)
            if done is None and self.tree is not None and out:
                self.tree.update(np.asarray(out), self.max_priority ** self.cfg.alpha)
                self._mark("prio", out)
        st.pending, st.episode, st.last = [], -1, -1

    def _advance_tail(self) -> None:
        """Move the sampling window past steps overwritten in the step ring or whose frames were overwritten."""
        start = self.tail
        self.tail = max(self.tail, self.steps_written - self.cfg.capacity)
        lowest_frame = self.frames_written - self.frame_capacity
        while self.tail < self.steps_written:
            block = np.arange(self.tail, min(self.tail + 256, self.steps_written))
            gone = self.oldest_frame[block % self.cfg.capacity] < lowest_frame
            if gone.all():
                self.tail = int(block[-1]) + 1
                continue
            self.tail = int(block[np.argmin(gone)])
            break
        if self.tree is not None and self.tail > start:
            dropped = np.arange(max(start, self.steps_written - self.cfg.capacity), self.tail) % self.cfg.capacity
            self.tree.update(dropped, 0.0)
            self._mark("prio", dropped)

    def _ids(self, slots: np.ndarray) -> np.ndarray:
        """Global step id now held by each ring slot."""
        cap = self.cfg.capacity
        base = max(self.steps_written - cap, 0)
        return base + (slots - base) % cap

    def valid(self, ids: np.ndarray) -> np.ndarray:
        """Whether each global step id can be sampled now."""
        ids = np.asarray(ids, np.int64)
        slots = ids % self.cfg.capacity
        return ((ids >= self.tail) & (ids < self.steps_written) & self.complete[slots]
                & (self.oldest_frame[slots] >= self.frames_written - self.frame_capacity))

    def beta(self) -> float:
        c = self.cfg
        if c.beta_anneal_samples <= 0:
            return c.beta
        return c.beta + (c.beta_final - c.beta) * min(1.0, self.samples / c.beta_anneal_samples)

    def sample_ids(self, batch_size: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Global step ids of a batch: uniform, or proportional to priority; never an unsampleable step."""
        rng = self.rng if rng is None else rng
        if len(self) == 0:
            raise ValueError("replay is empty: add chunks before sampling")
        ids = np.empty(batch_size, np.int64)
        todo = np.arange(batch_size)
        for _ in range(64):
            if self.tree is not None:
                if self.tree.total <= 0:
                    break
                ids[todo] = self._ids(self.tree.find(rng.random(len(todo)) * self.tree.total))
            else:
                ids[todo] = self.tail + rng.integers(0, len(self), len(todo))
            bad = ~self.valid(ids[todo])
            if self.tree is not None:
                bad |= self.tree.leaves[ids[todo] % self.cfg.capacity] <= 0
                # Zeroing a bad leaf and drawing again keeps draws proportional over the valid ones.
                self.tree.update(ids[todo][bad] % self.cfg.capacity, 0.0)
            todo = todo[bad]
            if not len(todo):
                return ids
        # Rejection keeps failing only when few steps are sampleable: draw from them directly.
        live = np.arange(self.tail, self.steps_written)
        ok = live[self.valid(live)]
        if self.tree is not None:
            ok = ok[self.tree.leaves[ok % self.cfg.capacity] > 0]
        if not len(ok):
            raise ValueError(f"replay has no sampleable transitions yet ({len(self)} stored, none complete)")
        if self.tree is None:
            ids[todo] = rng.choice(ok, len(todo))
        else:
            p = self.tree.leaves[ok % self.cfg.capacity]
            ids[todo] = rng.choice(ok, len(todo), p=p / p.sum())
        return ids

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> tuple[Batch, np.ndarray]:
        """A Batch of CPU tensors (uint8 images) and the global step ids sampled (for update_priorities)."""
        ids = self.sample_ids(batch_size, rng)
        s = ids % self.cfg.capacity
        b = self.boot[s] % self.cfg.capacity
        weight = None
        if self.tree is not None:
            p = self.tree.leaves[s]
            # (N P_i)^-beta / max_j (N P_j)^-beta over the batch: N and the total cancel.
            weight = torch.from_numpy((p.min() / p) ** self.beta()).float()
        self.samples += 1
        batch = Batch(
            image=torch.from_numpy(self.frames[self.obs_slots[s]]),
            vector=torch.from_numpy(self.vector[s]),
            action=torch.from_numpy(self.action[s]),
            reward=torch.from_numpy(self.ret[s]),
            discount=torch.from_numpy(self.discount[s]),
            next_image=torch.from_numpy(self.frames[self.next_slots[b]]),
            next_vector=torch.from_numpy(self.next_vector[b]),
            weight=weight,
        )
        return batch, ids

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """Set priorities (|td| + eps)^alpha of sampled ids; ids overwritten since sampling are skipped."""
        if self.tree is None:
            return
        ids = np.asarray(indices, np.int64)
        td = np.abs(np.asarray(td_abs, np.float64)).reshape(-1) + self.cfg.eps
        if ids.shape != td.shape:
            raise ValueError(f"update_priorities: {ids.shape[0]} indices but {td.shape[0]} td values")
        ok = self.valid(ids) & np.isfinite(td)
        if ok.any():
            self.max_priority = max(self.max_priority, float(td[ok].max()))
            slots = ids[ok] % self.cfg.capacity
            self.tree.update(slots, td[ok] ** self.cfg.alpha)
            self._mark("prio", slots)

    def stats(self) -> dict[str, Any]:
        return {"size": len(self), "steps_added": self.steps_added, "rejected_nonfinite": self.rejected_nonfinite,
                "orphaned": self.orphaned, "bytes": self.nbytes, "chunks": self.chunks_added,
                "episodes": self.episodes, "capacity": self.cfg.capacity}

    def export(self, previous: Mapping[str, str] | None = None) -> dict[str, bytes | str]:
        """Arrow IPC segments of the memory; see `learner.replay.segments.export`."""
        from learner.replay.segments import export

        return export(self, previous)

    def export_plan(self) -> ExportPlan:
        """The cut of an export whose encoding runs later, elsewhere; see `segments.ExportPlan`."""
        from learner.replay.segments import ExportPlan

        return ExportPlan(self)

    @classmethod
    def restore(cls, cfg: ReplayConfig, vector_dim: int, gamma: float, files: Mapping[str, bytes],
                frames: int = 4) -> ReplayMemory:
        """Rebuild a memory from `export` output (refs resolved to bytes); see `learner.replay.segments`."""
        from learner.replay.segments import restore

        return restore(cls(cfg, vector_dim, gamma, frames=frames), files)
