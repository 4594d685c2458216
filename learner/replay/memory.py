"""Frame-deduplicating ring replay: each 84x84 frame stored once, stacks rebuilt by index at sample time.

`ReplayMemory` takes a worker's chunk through three parts, one module each:
- `rings`: the frame and step rings, and which steps can be sampled;
- `nstep`: n-step targets folded in as steps arrive, per worker stream, so
  sampling is a handful of gathers;
- `priorities`: proportional prioritization over a sum tree (optional).
What it decides itself is which steps of a chunk to keep: steps with a NaN or
inf are rejected, and steps whose frames are unknown (a stream that jumped or
restarted mid-episode) are orphaned; either cuts the episode segment there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from learner.common.chunks import Chunk, validate_chunk
from learner.replay.batch import Batch
from learner.replay.nstep import NStepFolder, Stream
from learner.replay.priorities import Priorities
from learner.replay.rings import Rings

log = logging.getLogger(__name__)


class Sample(NamedTuple):
    """What `ReplayMemory.sample` returns: the batch, and the global step ids it was drawn from (for
    `update_priorities`)."""

    batch: Batch
    ids: np.ndarray


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
    """Steps of recent chunks the replay actor keeps for the learner to pull (`pull_new`)."""
    segment_steps: int = 4_096
    """Ring slots per persisted Arrow segment; only segments changed since the last save are rewritten.
    Between two default snapshots (a few hundred to a few thousand steps) one or two segments change:
    a frame segment is 4,096 x 7 KB = 29 MB to encode and hash, where 16,384 made it 115 MB."""

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.n_step < 1 or self.segment_steps < 1:
            raise ValueError("capacity, n_step and segment_steps must be >= 1")
        if self.frame_slack < 0 or self.alpha < 0 or self.eps <= 0:
            raise ValueError("frame_slack and alpha must be >= 0 and eps > 0")


class ReplayMemory:
    """Ring replay of transitions from many worker streams; `add(chunk)`, `sample(batch, rng)`.

    Its parts: `rings` (frame and step storage, the sampling window), `nstep` (n-step targets
    per stream) and `priorities` (None for uniform sampling). `add` takes a chunk through them.
    """

    def __init__(self, cfg: ReplayConfig, vector_dim: int, gamma: float, frames: int = 4, seed: int = 0) -> None:
        self.cfg, self.vector_dim, self.gamma, self.k = cfg, vector_dim, float(gamma), frames
        self.rings = Rings(cfg.capacity, cfg.frame_slack, frames, vector_dim, cfg.segment_steps)
        self.nstep = NStepFolder(self.rings, self.gamma, cfg.n_step)
        self.priorities = (Priorities(self.rings, cfg.alpha, cfg.eps, cfg.beta, cfg.beta_final,
                                      cfg.beta_anneal_samples) if cfg.prioritized else None)
        self.chunks_added = 0
        self.steps_added = 0
        self.rejected_nonfinite = 0
        self.orphaned = 0
        self.samples = 0
        self.rng = np.random.default_rng(seed)
        self._device_frames: torch.Tensor | None = None
        self._mirrored = 0  # frames_written when the device copy was last brought up to date

    def __len__(self) -> int:
        return len(self.rings)

    @property
    def nbytes(self) -> int:
        """Bytes of every allocated array (the rings at full capacity, the sum tree)."""
        return self.rings.nbytes + (self.priorities.nbytes if self.priorities is not None else 0)

    def _close(self, st: Stream) -> None:
        done = self.nstep.close(st)
        if self.priorities is not None and done:
            self.priorities.admit(done)

    def add(self, chunk: Chunk) -> int:
        """Store a chunk's steps; returns how many were accepted (NaN/inf and orphaned steps are dropped)."""
        validate_chunk(chunk, self.vector_dim, self.k)
        rings = self.rings
        st = self.nstep.streams.setdefault(chunk.stream, Stream())
        if chunk.seq != st.seq + 1 and st.seq >= 0:
            log.warning("replay: stream %x jumped from chunk %d to %d; its open episode is cut there",
                        chunk.stream, st.seq, chunk.seq)
        continuous = chunk.seq == st.seq + 1 and st.seq >= 0
        if not continuous:
            self._close(st)
            st.carry = []
        frame0 = rings.write_frames(chunk.frames)
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
        ids, slots = rings.claim_steps(n)
        o, nx = obs_ids[idx], next_ids[idx]
        rings.obs_slots[slots] = o % rings.frame_capacity
        rings.next_slots[slots] = nx % rings.frame_capacity
        rings.oldest_frame[slots] = o.min(1)
        for name in ("vector", "next_vector", "action", "reward", "terminated", "truncated", "policy_version"):
            getattr(rings, name)[slots] = getattr(chunk, name)[idx]
        rings.complete[slots] = False
        rings.mark("steps", slots)
        done = self.nstep.fold(st, ids, chunk.reward[idx].tolist(), chunk.terminated[idx].tolist(),
                               (chunk.terminated[idx] | chunk.truncated[idx]).tolist(), starts[idx])
        if not joinable:
            self.nstep.close(st, done)
        if self.priorities is not None:
            self.priorities.zero(slots)
            self.priorities.admit(done)
        st.seq = chunk.seq
        st.carry = lookup[-self.k:].tolist() if (lookup[-self.k:] >= 0).all() else []
        dropped = rings.advance_tail()
        if self.priorities is not None and len(dropped):
            self.priorities.zero(dropped)
        self.chunks_added += 1
        self.steps_added += n
        return n

    def valid(self, ids: np.ndarray) -> np.ndarray:
        """Whether each global step id can be sampled now."""
        return self.rings.valid(ids)

    def beta(self) -> float:
        return self.cfg.beta if self.priorities is None else self.priorities.beta(self.samples)

    def sample_ids(self, batch_size: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Global step ids of a batch: uniform, or proportional to priority; never an unsampleable step."""
        rng = self.rng if rng is None else rng
        rings, prio = self.rings, self.priorities
        if len(self) == 0:
            raise ValueError("replay is empty: add chunks before sampling")
        ids = np.empty(batch_size, np.int64)
        todo = np.arange(batch_size)
        for _ in range(64):
            if prio is not None:
                drawn = prio.draw(len(todo), rng)
                if drawn is None:
                    break
                ids[todo] = drawn
            else:
                ids[todo] = rings.tail + rng.integers(0, len(self), len(todo))
            bad = ~rings.valid(ids[todo])
            if prio is not None:
                bad = prio.reject(ids[todo], bad)
            todo = todo[bad]
            if not len(todo):
                return ids
        # Rejection keeps failing only when few steps are sampleable: draw from them directly.
        live = np.arange(rings.tail, rings.steps_written)
        ok = live[rings.valid(live)]
        if prio is not None:
            ok = prio.nonzero(ok)
        if not len(ok):
            raise ValueError(f"replay has no sampleable transitions yet ({len(self)} stored, none complete)")
        ids[todo] = rng.choice(ok, len(todo)) if prio is None else prio.choose(ok, len(todo), rng)
        return ids

    def keep_frames_on(self, device: torch.device) -> None:
        """Also hold the frame ring on `device` and gather image stacks there: on a GPU a batch then
        crosses the bus as frame indices, not as 2 x B x 28 KB of images. The copy is brought up to
        date, new frames only, when a batch is sampled. A 1M-step replay takes about 7.4 GB of it."""
        r = self.rings
        self._device_frames = torch.zeros((r.frame_capacity, *r.frames.shape[1:]), dtype=torch.uint8, device=device)
        self._mirrored = 0

    def drop_device_frames(self) -> None:
        """Free the device copy of the frame ring (sampling reads the host ring again)."""
        self._device_frames, self._mirrored = None, 0

    def _images(self, slots: np.ndarray) -> torch.Tensor:
        """Stacked frames of the given frame slots (B, K), from the device copy when there is one."""
        r, dev = self.rings, self._device_frames
        if dev is None:
            return torch.from_numpy(r.frames[slots])
        n = min(r.frames_written - self._mirrored, r.frame_capacity)
        if n > 0:  # the frames written since the last batch, in at most two runs of ring slots
            first = (r.frames_written - n) % r.frame_capacity
            split = min(n, r.frame_capacity - first)
            dev[first:first + split].copy_(torch.from_numpy(r.frames[first:first + split]))
            dev[:n - split].copy_(torch.from_numpy(r.frames[:n - split]))
            self._mirrored = r.frames_written
        return dev[torch.from_numpy(slots.astype(np.int64)).to(dev.device)]

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> Sample:
        """A Batch of CPU tensors (uint8 images; on the device with `keep_frames_on`) and the global
        step ids sampled (for update_priorities)."""
        ids = self.sample_ids(batch_size, rng)
        r = self.rings
        s = ids % r.capacity
        b = r.boot[s] % r.capacity
        weight = None if self.priorities is None else self.priorities.weights(s, self.samples)
        self.samples += 1
        batch = Batch(
            image=self._images(r.obs_slots[s]),
            vector=torch.from_numpy(r.vector[s]),
            action=torch.from_numpy(r.action[s]),
            reward=torch.from_numpy(r.ret[s]),
            discount=torch.from_numpy(r.discount[s]),
            next_image=self._images(r.next_slots[b]),
            next_vector=torch.from_numpy(r.next_vector[b]),
            weight=weight,
        )
        return Sample(batch, ids)

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """Set priorities (|td| + eps)^alpha of sampled ids; ids overwritten since sampling are skipped."""
        if self.priorities is None:
            return
        ids = np.asarray(indices, np.int64)
        td = np.abs(np.asarray(td_abs, np.float64)).reshape(-1) + self.cfg.eps
        if ids.shape != td.shape:
            raise ValueError(f"update_priorities: {ids.shape[0]} indices but {td.shape[0]} td values")
        self.priorities.update(ids, td)

    def stats(self) -> dict[str, Any]:
        return {"size": len(self), "steps_added": self.steps_added, "rejected_nonfinite": self.rejected_nonfinite,
                "orphaned": self.orphaned, "bytes": self.nbytes, "chunks": self.chunks_added,
                "episodes": self.nstep.episodes, "capacity": self.cfg.capacity}
