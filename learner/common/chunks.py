"""What a rollout worker sends to the replay: chunks of steps in which every frame travels once.

A worker's frames form one stream: the K frames of each reset observation, then
the one new frame of each step (all K frames of a step whose next observation
is not the previous stack shifted by one, which a frame-stacking env never
produces but an odd one might). Every stack the env emitted is therefore the
last K frames of the stream at some point, and a step names its observation and
next observation stacks by frame position. Positions count from the chunk's
first frame; -1 .. -K name the stream's last frames sent in earlier chunks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

FRAME_SHAPE = (84, 84)
ACTION_DIM = 2


@dataclass(frozen=True, eq=False)
class Chunk:
    """Steps of one worker's stream, in order. Plain numpy fields: it travels through Ray's object store."""

    stream: int
    """Id of the ChunkBuilder (worker stream) that made it."""
    seq: int
    """0, 1, 2, ... per stream; a gap tells the replay that a chunk was lost."""
    frames: np.ndarray
    """uint8 (F, 84, 84): the stream's new frames, in order."""
    obs_frames: np.ndarray
    """int32 (T, K): frame positions of each step's observation stack, oldest first."""
    next_frames: np.ndarray
    """int32 (T, K): frame positions of each step's next observation stack."""
    vector: np.ndarray
    """float32 (T, V): observation vectors."""
    next_vector: np.ndarray
    """float32 (T, V): next observation vectors."""
    action: np.ndarray
    """float32 (T, 2)."""
    reward: np.ndarray
    """float32 (T,)."""
    terminated: np.ndarray
    """bool (T,)."""
    truncated: np.ndarray
    """bool (T,)."""
    episode_start: np.ndarray
    """bool (T,): the step is the first of an episode (its obs is the env's reset observation)."""
    policy_version: np.ndarray
    """int64 (T,): version of the policy that chose the action."""

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    def copy(self) -> Chunk:
        """A chunk owning its arrays (not views into a Ray object store buffer)."""
        return Chunk(**{f.name: (np.array(v) if isinstance(v := getattr(self, f.name), np.ndarray) else v)
                        for f in fields(self)})


PER_STEP = ("obs_frames", "next_frames", "vector", "next_vector", "action", "reward", "terminated", "truncated",
            "episode_start", "policy_version")


def validate_chunk(chunk: Chunk, vector_dim: int, frames: int) -> None:
    """Raise ValueError naming the first field whose type, dtype or shape is wrong."""
    if not isinstance(chunk, Chunk):
        raise ValueError(f"chunk: expected a Chunk, got {type(chunk).__name__}")
    # T is the length most per-step fields agree on, so the odd field out is the one named.
    lengths = [a.shape[0] for name in PER_STEP if isinstance(a := getattr(chunk, name), np.ndarray) and a.ndim]
    n = max(set(lengths), key=lengths.count) if lengths else -1
    f = chunk.frames.shape[0] if isinstance(chunk.frames, np.ndarray) and chunk.frames.ndim == 3 else -1
    want = {
        "frames": (np.uint8, (f, *FRAME_SHAPE)),
        "obs_frames": (np.int32, (n, frames)),
        "next_frames": (np.int32, (n, frames)),
        "vector": (np.float32, (n, vector_dim)),
        "next_vector": (np.float32, (n, vector_dim)),
        "action": (np.float32, (n, ACTION_DIM)),
        "reward": (np.float32, (n,)),
        "terminated": (np.bool_, (n,)),
        "truncated": (np.bool_, (n,)),
        "episode_start": (np.bool_, (n,)),
        "policy_version": (np.int64, (n,)),
    }
    for name, (dtype, shape) in want.items():
        arr = getattr(chunk, name)
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != shape or -1 in shape:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            shown = tuple("T" if s == n and i == 0 and name != "frames" else s for i, s in enumerate(shape))
            raise ValueError(f"chunk.{name}: expected {np.dtype(dtype).name} array of shape {shown}, got {got}")
    for name in ("obs_frames", "next_frames"):
        pos = getattr(chunk, name)
        if pos.size and (pos.min() < -frames or pos.max() >= f):
            raise ValueError(f"chunk.{name}: frame positions must lie in [-{frames}, {f}), "
                             f"got [{pos.min()}, {pos.max()}]")
    ended = chunk.terminated | chunk.truncated
    if n > 1 and np.any(ended[:-1] & ~chunk.episode_start[1:]):
        t = int(np.flatnonzero(ended[:-1] & ~chunk.episode_start[1:])[0]) + 1
        raise ValueError(f"chunk.episode_start: step {t} follows an episode end but does not start an episode")


class _Step(NamedTuple):
    """One env step as the builder buffers it until the next flush."""

    obs_end: int
    """Index (in the stream's frame count) one past the last frame of the observation's stack."""
    next_end: int
    """The same for the next observation."""
    vector: np.ndarray
    next_vector: np.ndarray
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    episode_start: bool
    policy_version: int


class ChunkBuilder:
    """Worker-side encoder: turns env steps into Chunks, sending each new frame once.

    Usage: `begin_episode(obs)` after every reset, `add_step(...)` after every
    env step, `flush()` whenever `ready()`, and once more at the end.
    """

    def __init__(self, vector_dim: int, frames: int = 4, chunk_steps: int = 64, stream: int | None = None) -> None:
        if chunk_steps < 1 or frames < 1:
            raise ValueError("chunk_steps and frames must be >= 1")
        self.vector_dim = vector_dim
        self.k = frames
        self.chunk_steps = chunk_steps
        self.stream = secrets.randbits(62) if stream is None else stream
        self._seq = 0
        self._sent = 0  # frames sent in earlier chunks
        self._frames: list[np.ndarray] = []
        self._steps: list[_Step] = []
        self._stack: np.ndarray | None = None  # image of the current observation
        self._stack_end = 0  # stream position one past the current stack's newest frame
        self._vector: np.ndarray | None = None
        self._start = False  # the next step is the first of its episode
        self._unreferenced = 0  # reset frames of the open episode that no step uses yet

    def _check_obs(self, obs: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
        image, vector = obs["image"], obs["vector"]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (self.k, *FRAME_SHAPE):
            raise ValueError(f"{name}['image']: expected uint8 {(self.k, *FRAME_SHAPE)}, got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.vector_dim,):
            raise ValueError(f"{name}['vector']: expected shape ({self.vector_dim},), got {vector.shape}")
        return image, vector

    def begin_episode(self, obs: dict[str, np.ndarray]) -> None:
        """Start an episode from the env's reset observation; its K frames are sent as they are."""
        image, vector = self._check_obs(obs, "obs")
        self._drop_unreferenced()
        self._frames.extend(np.array(image))
        self._stack, self._vector = np.array(image), vector.copy()
        self._stack_end = self._sent + len(self._frames)
        self._start = True
        self._unreferenced = self.k

    def _drop_unreferenced(self) -> None:
        # Reset frames of an episode that never took a step would only waste ring space.
        if self._unreferenced:
            del self._frames[len(self._frames) - self._unreferenced:]
            self._unreferenced = 0

    def add_step(self, action: np.ndarray, reward: float, terminated: bool, truncated: bool,
                 next_obs: dict[str, np.ndarray], policy_version: int) -> None:
        """Record one env step taken from the current observation."""
        if self._stack is None:
            raise RuntimeError("add_step before begin_episode (or after the episode ended)")
        image, vector = self._check_obs(next_obs, "next_obs")
        obs_end = self._stack_end
        if np.array_equal(image[:-1], self._stack[1:]):
            self._frames.append(np.array(image[-1]))
            next_end = obs_end + 1
        else:
            self._frames.extend(np.array(image))
            next_end = obs_end + self.k
        self._unreferenced = 0
        self._steps.append(_Step(obs_end, next_end, self._vector, vector.copy(),
                                 np.asarray(action, dtype=np.float32).reshape(ACTION_DIM), float(reward),
                                 bool(terminated), bool(truncated), self._start, int(policy_version)))
        self._start = False
        if terminated or truncated:
            self._stack = self._vector = None
        else:
            self._stack, self._vector, self._stack_end = np.array(image), vector.copy(), next_end

    def truncate_episode(self) -> None:
        """The env failed: mark the episode's last step truncated (the replay cuts it there either way)."""
        # The last buffered step is the open episode's unless that episode has taken no step yet,
        # or its steps already went out (then the replay closes the episode at the next start).
        if self._stack is not None and not self._start and self._steps:
            self._steps[-1] = self._steps[-1]._replace(truncated=True)
        self._drop_unreferenced()
        self._stack = self._vector = None

    def ready(self) -> bool:
        return len(self._steps) >= self.chunk_steps

    def flush(self) -> Chunk | None:
        """The buffered steps as a Chunk, or None when there are none (reset frames wait for a step)."""
        if not self._steps:
            return None
        k, base = self.k, self._sent
        keep = self._unreferenced  # frames of a reset with no step yet go with the next chunk
        out_frames = self._frames[: len(self._frames) - keep]
        steps = self._steps
        obs_end = np.array([s.obs_end for s in steps], dtype=np.int64) - base
        next_end = np.array([s.next_end for s in steps], dtype=np.int64) - base
        offs = np.arange(-k, 0)
        chunk = Chunk(
            stream=self.stream,
            seq=self._seq,
            frames=np.stack(out_frames) if out_frames else np.zeros((0, *FRAME_SHAPE), np.uint8),
            obs_frames=(obs_end[:, None] + offs).astype(np.int32),
            next_frames=(next_end[:, None] + offs).astype(np.int32),
            vector=np.stack([s.vector for s in steps]),
            next_vector=np.stack([s.next_vector for s in steps]),
            action=np.stack([s.action for s in steps]),
            reward=np.array([s.reward for s in steps], dtype=np.float32),
            terminated=np.array([s.terminated for s in steps], dtype=bool),
            truncated=np.array([s.truncated for s in steps], dtype=bool),
            episode_start=np.array([s.episode_start for s in steps], dtype=bool),
            policy_version=np.array([s.policy_version for s in steps], dtype=np.int64),
        )
        self._seq += 1
        self._sent += len(out_frames)
        self._frames = self._frames[len(out_frames):]
        self._steps = []
        return chunk
