"""Frame-deduplicating replay: the one import point for workers, learner and wiring.

A transition costs about 7.8 KB (each 84x84 uint8 frame stored once, stacks
rebuilt by index) instead of 56 KB (uint8 stacked obs + next obs) or 226 KB
(the float32 buffer of the system this replaces).

- `replay_chunks`: `Chunk` and the worker-side `ChunkBuilder` (each new frame sent once).
- `replay_memory`: `ReplayConfig`, `ReplayMemory` (rings, n-step, uniform or prioritized sampling).
- `sum_tree`: `SumTree` for proportional prioritization.
- `replay_segments`: incremental Arrow IPC persistence (`ReplayMemory.export` / `.restore`).
- `replay_actor`: `ReplayActor` (shared replay + chunk log for mirrors) and `BoundedSender`.
"""

from learner.replay_actor import BoundedSender, ReplayActor, ReplayLagError
from learner.replay_chunks import Chunk, ChunkBuilder, validate_chunk
from learner.replay_memory import ReplayConfig, ReplayMemory
from learner.sum_tree import SumTree

__all__ = ["BoundedSender", "Chunk", "ChunkBuilder", "ReplayActor", "ReplayConfig", "ReplayLagError",
           "ReplayMemory", "SumTree", "validate_chunk"]
