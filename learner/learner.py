"""The learner loop: holds the replay ratio, publishes weights, hands snapshots to the writer.

Plain Python: the same class runs inside a Ray actor (`ray.remote(num_gpus=1)(Learner)`)
or in one process (`fleet train --local`). What differs is the `ChunkSource` it pulls
new transitions from and the `SnapshotSink` it hands state to (learner/common/interfaces.py);
both are small callables wired in cluster/runtime/ (`ray_run.py`, `local.py`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from learner.common import heap, mkl_amd
from learner.common.chunks import Chunk
from learner.common.interfaces import ChunkSource, SnapshotMeta, SnapshotSink, SnapshotState, Weights
from learner.networks import NetworkConfig
from learner.replay import ReplayConfig, ReplayMemory
from learner.replay.segments import SegmentExporter, load
from learner.td3 import TD3Agent, TD3Config

if TYPE_CHECKING:
    from learner.replay.segments import ExportPlan

log = logging.getLogger(__name__)


@dataclass
class LearnerStats:
    """The learner's counters, as the run's driver, the progress display and the benchmarks read them."""

    learner_updates: int
    env_steps: int
    """Env steps in the memory's count (pulled and added)."""
    metrics: dict[str, float]
    """The latest update's metrics (losses, Q values, ...), and `policy_version`."""
    replay_size: int
    dropped_steps: int
    """Steps the memory refused (non-finite) or could not place (orphaned)."""
    snapshot_block_ms_median: float | None = None
    """Median time a snapshot held up the training loop; None before the first."""
    snapshots: int = 0



@dataclass(frozen=True)
class LearnerConfig:
    replay_ratio: float = 1.0
    """TD3 updates per environment step collected (after learning_starts)."""
    learning_starts: int = 25_000
    """Environment steps of random warm-up before the first update."""
    publish_every: int = 20
    """Updates between weight publications to the workers."""
    snapshot_every: int = 1_000
    """Updates between snapshots (0 disables periodic snapshots)."""
    snapshot_every_s: float = 0.0
    """Also snapshot when this many seconds have passed since the last one (0: by updates only)."""
    log_every: int = 20
    """Updates between metric reports (the only place metrics are turned into floats)."""
    updates_per_call: int = 8
    """Updates done per `step()` call before new data is pulled again."""
    save_replay: bool = True
    """Store the replay (incrementally, as Arrow segments) with each snapshot so a resume keeps it."""
    frames_on_device: bool = True
    """With the agent on a GPU, also hold the replay's frame ring there and gather batches' image
    stacks on the device (`ReplayMemory.keep_frames_on`; a 1M-step replay takes about 7.4 GB of GPU
    memory). Ignored on the CPU."""
    torch_threads: int = 0
    """Intra-op threads of the learner's CPU math; 0: every core of its machine. On a CPU the update
    bounds the run and paced workers mostly wait for it (Ray would otherwise give the actor one thread)."""
    reset_every: int = 0
    """Every this many updates, the actor and critic heads (not the CNNs) start afresh, with their targets
    and optimizer state, as SR-SPR and BBF do at high replay ratios; 0: never."""

    def __post_init__(self) -> None:
        if self.replay_ratio <= 0:
            raise ValueError("replay_ratio must be > 0")
        if self.learning_starts < 0 or self.publish_every < 1 or self.log_every < 1:
            raise ValueError("learning_starts must be >= 0; publish_every and log_every >= 1")
        if self.torch_threads < 0 or self.reset_every < 0:
            raise ValueError("torch_threads must be >= 0 (0: every core), reset_every >= 0 (0: never)")

    def threads(self) -> int:
        """The intra-op thread count the learner runs its updates with."""
        return self.torch_threads or os.cpu_count() or 1


class ReplayExport:
    """A snapshot's replay files, encoded by whoever calls `encode` (once), off the learner's thread."""

    def __init__(self, plan: ExportPlan, idle: threading.Event) -> None:
        self._plan, self._idle = plan, idle

    @property
    def encoded_bytes(self) -> int:
        return self._plan.encoded_bytes

    def encode(self, previous: Mapping[str, str] | None = None) -> dict[str, bytes | str]:
        """See `ExportPlan.encode`; the learner adds new chunks again once this returns or raises."""
        try:
            return self._plan.encode(previous)
        finally:
            self._idle.set()


class Learner:
    def __init__(
        self,
        agent_cfg: TD3Config,
        net_cfg: NetworkConfig,
        replay_cfg: ReplayConfig,
        cfg: LearnerConfig,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.agent = TD3Agent(agent_cfg, net_cfg)
        self.memory = self._placed(ReplayMemory(replay_cfg, net_cfg.vector_dim, agent_cfg.gamma, seed=seed))
        self.replay_exporter = SegmentExporter(self.memory)
        """The memory's exports (snapshots' replay files) and what each last wrote."""
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.policy_version = 0
        self.best_eval: float | None = None
        """Best driving score of periodic evaluation so far (the `best` tag's); travels in snapshots."""
        self._weights: Weights | None = None
        self._metrics: dict[str, float] = {}
        self._lags: list[float] = []
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._updates_at_start = 0
        self._anchor = (0, 0)
        """(env_steps, updates) the replay-ratio schedule counts from: (0, 0), or a restored snapshot's."""
        self._snapshot_at = time.monotonic()
        self.snapshot_block_ms: list[float] = []
        """How long each snapshot held the learner's loop, ms (the run summary shows the median)."""
        self.snapshot_copies = True
        """False when the sink copies at once (ray.put): the learner then blocks only for that copy."""
        self._replay_idle = threading.Event()
        """Clear while an export encodes the memory on another thread (`export_replay_later`)."""
        self._replay_idle.set()
        self.dropped_steps = 0
        """Steps of pulled chunks the memory did not keep (non-finite, or orphaned by a cut stream)."""
        self._held: list[Any] = []
        """Chunks pulled while an export reads the memory: added once it is done."""
        if self.agent.device.type == "cpu":
            heap.keep_freed_pages()  # an update's MB-sized tensors stop page-faulting (learner/common/heap.py)
            self.record(mkl_avx512=float(mkl_amd.active()))  # 1: MKL's AVX-512 kernels (learner/common/mkl_amd.py)

    def _placed(self, memory: ReplayMemory) -> ReplayMemory:
        if self.cfg.frames_on_device and self.agent.device.type == "cuda":
            memory.keep_frames_on(self.agent.device)
        return memory

    @property
    def updates(self) -> int:
        return self.agent.total_it.value

    def ingest(self, chunks: list[Chunk]) -> int:
        if not self._replay_idle.is_set():  # an export reads the rings in place: new steps wait
            self._held.extend(chunks)
            return 0
        if self._held:
            chunks, self._held = [*self._held, *chunks], []
        added = 0
        for chunk in chunks:
            kept = self.memory.add(chunk)
            added += kept
            self.dropped_steps += len(chunk) - kept
            versions = np.asarray(chunk.policy_version)
            if versions.size:
                self._lags.append(float(self.policy_version - versions.mean()))
        self.env_steps += added
        return added

    def updates_allowed(self) -> int:
        """How many updates the replay ratio allows now (0 during warm-up)."""
        if self.env_steps < self.cfg.learning_starts or len(self.memory) < self.agent.cfg.batch_size:
            return 0
        # Updates owed since the anchor; before a restore (or a restore during warm-up) this is
        # int(ratio * (env_steps - learning_starts + 1)), so a resumed run keeps the uninterrupted schedule.
        start, anchor_updates = self._schedule_start()
        due = anchor_updates + int(self.cfg.replay_ratio * (self.env_steps - start))
        return max(0, due - self.updates)

    def steps_ahead(self, collected: int) -> int:
        """Env steps collected (by the workers' count, or pulled, whichever is more) beyond what the
        replay-ratio schedule has consumed so far: workers pause while this exceeds a bound."""
        start, anchor_updates = self._schedule_start()
        consumed = start + (self.updates - anchor_updates) / self.cfg.replay_ratio
        # Steps the memory dropped (non-finite, orphaned) were collected but will never be consumed.
        return max(int(max(collected - self.dropped_steps, self.env_steps) - consumed), 0)

    def _schedule_start(self) -> tuple[int, int]:
        """(env steps, updates) from which the replay-ratio schedule counts: the anchor (a restore), or
        the step before learning_starts."""
        anchor_steps, anchor_updates = self._anchor
        return max(anchor_steps, self.cfg.learning_starts - 1), anchor_updates

    def step(self, source: ChunkSource, sink: SnapshotSink | None = None) -> int:
        """Pull new data, run the updates the ratio allows (at most updates_per_call). Returns updates done."""
        self.ingest(source())
        n = min(self.updates_allowed(), self.cfg.updates_per_call)
        for _ in range(n):
            sample = self.memory.sample(self.agent.cfg.batch_size, self.rng)
            batch, idx = sample.batch, sample.ids
            metrics = self.agent.update(batch)
            td_abs = metrics.pop("td_abs")
            if self.memory.cfg.prioritized:
                self.memory.update_priorities(idx, td_abs.detach().cpu().numpy())
            if self.cfg.reset_every and self.updates % self.cfg.reset_every == 0:
                self.agent.reset_heads()
            if self.updates % self.cfg.log_every == 0:
                self._record(metrics)
            if self.updates % self.cfg.publish_every == 0 or self.policy_version == 0:
                self.publish()
            if sink and self._snapshot_due():
                self.snapshot(sink)
        return n

    def _snapshot_due(self) -> bool:
        every, every_s = self.cfg.snapshot_every, self.cfg.snapshot_every_s
        return bool((every and self.updates % every == 0)
                    or (every_s and time.monotonic() - self._snapshot_at >= every_s))

    def _record(self, metrics: dict[str, torch.Tensor]) -> None:
        values = {k: float(v.item()) for k, v in metrics.items()}
        elapsed = max(time.monotonic() - self._started, 1e-9)
        values["updates_per_s"] = (self.updates - self._updates_at_start) / elapsed
        if self._lags:
            values["policy_lag"] = float(np.mean(self._lags))
            self._lags.clear()
        self.record(**values)

    def record(self, **values: float) -> None:
        """Metrics measured outside the update (e.g. the last replay export), reported with the rest."""
        with self._lock:
            self._metrics.update(values)

    def publish(self) -> None:
        weights = self.agent.policy_weights()
        with self._lock:
            self.policy_version += 1
            self._weights = Weights(self.policy_version, weights)

    def weights_if_newer(self, version: int) -> Weights | None:
        """Newest published weights when newer than `version`, else None (cheap for polling workers):
        a `WeightSource`."""
        with self._lock:
            if self._weights is None or self._weights.version <= version:
                return None
            return self._weights

    def meta(self) -> SnapshotMeta:
        with self._lock:
            metrics = dict(self._metrics)
        metrics["policy_version"] = self.policy_version
        return {"learner_updates": self.updates, "env_steps": self.env_steps, "metrics": metrics}

    @property
    def holding(self) -> int:
        """Chunks pulled but not yet in the memory (an export was reading it)."""
        return len(self._held)

    def export_replay_later(self) -> ReplayExport:
        """The replay's part of the snapshot being taken, encoded later on another thread.

        Call from the sink, on the learner's thread: the cut is made here, the exact memory the
        state just taken samples from. Until the returned export's `encode` ends, new chunks are
        held back instead of added, so the rings it reads do not change under it; updates go on.
        """
        if not self._replay_idle.is_set():
            raise RuntimeError("export_replay_later: the previous export is still encoding")
        plan = self.replay_exporter.plan()
        self._replay_idle.clear()
        return ReplayExport(plan, self._replay_idle)

    def settle_replay(self, timeout_s: float = 600.0) -> None:
        """Wait for a running export, then add the chunks it held back."""
        if not self._replay_idle.wait(timeout_s):
            raise TimeoutError(f"the replay export of the last snapshot did not finish within {timeout_s:.0f} s")
        self.ingest([])

    def snapshot(self, sink: SnapshotSink) -> None:
        """Hand the full state to the sink, which moves it to the CPU (`snapshot_state`); on return
        the learner may update again."""
        start = time.perf_counter()
        self.settle_replay()
        state = self.agent.state(copy=self.snapshot_copies)
        state["learner"] = {"env_steps": self.env_steps, "policy_version": self.policy_version,
                            "best_eval": self.best_eval, "schedule": self._schedule()}
        sink(state, self.meta())
        # What the training loop lost to this snapshot: the state copy and the hand-over.
        blocked = 1000 * (time.perf_counter() - start)
        self.snapshot_block_ms.append(blocked)
        self.record(snapshot_block_ms=blocked)
        self._snapshot_at = time.monotonic()

    def restore(self, state: SnapshotState, replay_files: dict[str, bytes] | None = None) -> None:
        """Continue from a snapshot: agent parts strictly, the learner's counters, and the replay if saved."""
        if replay_files:
            self.memory.drop_device_frames()  # never two GPU frame rings at once
            self.replay_exporter = load(self.memory.cfg, self.agent.net_cfg.vector_dim, self.agent.cfg.gamma,
                                        replay_files)
            self.memory = self._placed(self.replay_exporter.mem)
        state = dict(state)
        own = state.pop("learner", {"env_steps": 0, "policy_version": 0})
        self.agent.load_state(state)
        self.env_steps = int(own["env_steps"])
        self.policy_version = int(own["policy_version"])
        self.best_eval = own.get("best_eval")
        self._updates_at_start = self.updates
        # The updates already done stand for the data already seen: the schedule continues from here
        # (no burst of catch-up updates, whatever learning_starts and the ratio were) ...
        self._anchor = (self.env_steps, self.updates) if self.env_steps >= self.cfg.learning_starts else (0, 0)
        # ... unless the snapshot's schedule is this one: then exactly the schedule of the run it came from,
        # including the updates it still owed (a mid-run snapshot, taken while the learner lagged the
        # workers by up to run.max_ahead_steps), as if it had never stopped.
        if own.get("schedule", {}).get("of") == self._schedule()["of"]:
            self._anchor = tuple(own["schedule"]["anchor"])
        self.publish()

    def _schedule(self) -> dict[str, Any]:
        """The replay-ratio schedule a snapshot carries: its anchor, and the settings it holds for."""
        return {"anchor": list(self._anchor), "of": [self.cfg.replay_ratio, self.cfg.learning_starts]}

    def stats(self) -> LearnerStats:
        meta = self.meta()
        blocked = round(float(np.median(self.snapshot_block_ms)), 1) if self.snapshot_block_ms else None
        return LearnerStats(learner_updates=meta["learner_updates"], env_steps=meta["env_steps"],
                            metrics=meta["metrics"], replay_size=len(self.memory), dropped_steps=self.dropped_steps,
                            snapshot_block_ms_median=blocked, snapshots=len(self.snapshot_block_ms))
