"""Test doubles for the replay tests: worker streams over a frame-stacking fake env, and a naive reference.

The reference keeps every transition whole (obs stack, next obs stack, ...), as
the float32 buffer of the replaced system did, and computes n-step targets by
walking the list. No tests live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.replay import Chunk, ChunkBuilder

V = 5


@dataclass
class Transition:
    obs_image: np.ndarray
    obs_vector: np.ndarray
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    next_image: np.ndarray
    next_vector: np.ndarray
    segment: int


@dataclass
class FakeStream:
    """One worker: a fake env that stacks frames like gymnasium's FrameStack, and its ChunkBuilder."""

    sid: int
    rng: np.random.Generator
    chunk_steps: int = 8
    p_keyframe: float = 0.0
    builder: ChunkBuilder = field(init=False)
    unflushed: list[Transition] = field(default_factory=list)
    history: list[Transition] = field(default_factory=list)
    obs: dict[str, np.ndarray] | None = None
    segment: int = -1

    def __post_init__(self) -> None:
        self.builder = ChunkBuilder(V, chunk_steps=self.chunk_steps, stream=self.sid)

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, (84, 84), dtype=np.uint8)

    def reset(self, segment: int) -> None:
        if self.rng.random() < 0.5:  # FrameStack style: the first frame repeated
            image = np.stack([self._frame()] * 4)
        else:
            image = np.stack([self._frame() for _ in range(4)])
        self.obs = {"image": image, "vector": self.rng.standard_normal(V).astype(np.float32)}
        self.builder.begin_episode(self.obs)
        self.segment = segment

    def step(self, terminated: bool = False, truncated: bool = False, reward: float | None = None) -> None:
        assert self.obs is not None
        img = self.obs["image"]
        if self.rng.random() < self.p_keyframe:
            nimg = np.stack([self._frame() for _ in range(4)])
        else:
            nimg = np.concatenate([img[1:], self._frame()[None]])
        nxt = {"image": nimg, "vector": self.rng.standard_normal(V).astype(np.float32)}
        action = self.rng.uniform(-1, 1, 2).astype(np.float32)
        r = float(np.float32(self.rng.standard_normal() if reward is None else reward))
        self.builder.add_step(action, r, terminated, truncated, nxt, policy_version=3)
        self.unflushed.append(Transition(img, self.obs["vector"], action, r, terminated, truncated, nimg,
                                         nxt["vector"], self.segment))
        self.obs = None if terminated or truncated else nxt

    def abandon(self) -> None:
        """The env failed mid-episode."""
        self.builder.truncate_episode()
        if self.unflushed and self.unflushed[-1].segment == self.segment and self.obs is not None:
            self.unflushed[-1].truncated = True
        self.obs = None

    def flush(self) -> tuple[Chunk | None, list[Transition]]:
        chunk = self.builder.flush()
        if chunk is None:
            return None, []
        assert len(chunk) == len(self.unflushed)
        out, self.unflushed = self.unflushed, []
        self.history.extend(out)
        return chunk, out


def naive_target(history: list[Transition], j: int, n: int, gamma: float) -> tuple[bool, float, float, Transition]:
    """(complete, n-step reward, discount, bootstrap transition) of history[j] from what was sent so far."""
    total, k, last, closed = 0.0, 0, history[j], False
    for tr in history[j:]:
        if tr.segment != history[j].segment:
            closed = True
            break
        total += gamma ** k * tr.reward
        k += 1
        last = tr
        if tr.terminated or tr.truncated or k == n:
            break
    complete = k == n or last.terminated or last.truncated or closed
    return complete, total, 0.0 if last.terminated else gamma ** k, last


def episode_chunks(steps: int, chunk_steps: int = 64, seed: int = 0, p_end: float = 0.002,
                   vector_dim: int = V) -> list[Chunk]:
    """Chunks of one stream of random episodes with shifting frame stacks (for benchmarks and bulk tests)."""
    rng = np.random.default_rng(seed)
    builder = ChunkBuilder(vector_dim, chunk_steps=chunk_steps, stream=seed + 1)
    chunks: list[Chunk] = []
    image = None
    for _ in range(steps):
        if image is None:
            image = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
            builder.begin_episode({"image": image, "vector": rng.standard_normal(vector_dim).astype(np.float32)})
        nimg = np.concatenate([image[1:], rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)])
        end = rng.random() < p_end
        builder.add_step(rng.uniform(-1, 1, 2), float(rng.standard_normal()), end, False,
                         {"image": nimg, "vector": rng.standard_normal(vector_dim).astype(np.float32)}, 1)
        image = None if end else nimg
        if builder.ready():
            chunks.append(builder.flush())
    last = builder.flush()
    return chunks + ([last] if last is not None else [])
