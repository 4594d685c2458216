"""Frame-deduplicating replay: the one import point for workers, learner and wiring.

A transition costs about 7.8 KB (each 84x84 uint8 frame stored once, stacks
rebuilt by index) instead of 56 KB (uint8 stacked obs + next obs) or 226 KB
(float32 stacked obs + next obs).

- `Chunk` and the worker-side `ChunkBuilder` (each new frame sent once) live in `learner/common/chunks.py`
  (the format workers send) and are re-exported here.
- `memory`: `ReplayConfig`, `ReplayMemory`: takes chunks through its parts, samples batches.
  - `rings`: frame and step rings, the sampling window.
  - `nstep`: n-step targets folded in per worker stream.
  - `priorities`: proportional prioritization over `sum_tree.SumTree`.
- `batch`: `Batch`, what `ReplayMemory.sample` returns and a TD3 update consumes.
- `sum_tree`: `SumTree` for proportional prioritization.
- `segments`: incremental Arrow IPC persistence: `SegmentExporter` (a memory's export and its
  bookkeeping), `load` / `restore` (a memory from saved files).
- `actor`: `ReplayActor` (where workers push: validation, a bounded chunk log the learner pulls from)
  and the workers' `BoundedSender`. The run's one memory is the learner's.
"""

from learner.common.chunks import Chunk, ChunkBuilder, validate_chunk
from learner.replay.actor import BoundedSender, Pulled, ReplayActor, ReplayLagError
from learner.replay.batch import Batch
from learner.replay.memory import ReplayConfig, ReplayMemory, Sample
from learner.replay.sum_tree import SumTree

__all__ = ["Batch", "BoundedSender", "Chunk", "ChunkBuilder", "Pulled", "ReplayActor", "ReplayConfig", "ReplayLagError",
           "ReplayMemory", "Sample", "SumTree", "validate_chunk"]
