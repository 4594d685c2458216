"""The checkpoint actor: the store's only writer, saving in a background thread.

A plain class; the wiring makes it a Ray actor:

    Writer = ray.remote(max_concurrency=2)(CheckpointWriter)   # submit/status never wait behind wait()
    writer = Writer.remote(store_uri, retention)

What the learner does, to block for as little as possible (see `submit_snapshot`):

1. `state = snapshot_state(live_state(agent))`: on the CPU no copy at all (views of the live
   tensors, same form as `agent.state()`); device tensors are copied to the CPU.
2. `ref = ray.put(ray_payload(state))`: tensors travel as numpy views, which Ray copies once into
   shared memory out of band (torch tensors would be pickled, several times slower). This copy is
   the snapshot: ray.put returns only after it, so the learner may update again right away.
   Start Ray with `_system_config={"preallocate_plasma_memory": True}` on the learner's node, or
   every ray.put pays page faults on fresh shared memory (80-200 ms instead of ~10 ms here).
3. `writer.submit.remote([ref], meta)`: the ref goes inside a list so Ray does not resolve it
   before the call; the writer's thread calls `ray.get` itself. The call returns at once.

The runtime's learner goes one step further (`SnapshotStager`): it copies its live state into CPU
buffers it keeps from one snapshot to the next (their pages faulted once), and a background thread
does steps 2 and 3. The learner then waits only for that copy, whatever Ray's shared memory costs.

Then the learner goes on training. At most one save runs at a time; a request that
arrives while another waits replaces it (the older one is counted as superseded).

The writer holds the store's lease (checkpoint_store/lease.py) from its start to its close: a second
writer on the store is refused, and a writer that finds its lease taken over stops saving. The run
passes its owner token, so the instance Ray starts again after a node loss takes over the run's lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from checkpoint_store.fs import scrub
from checkpoint_store.lease import LEASE_TTL_S, LeaseHeldError, StoreLease
from checkpoint_store.manifest import Manifest
from checkpoint_store.retention import RetentionPolicy
from checkpoint_store.store import SnapshotStore
from learner.common.errors import StoreError
from learner.common.heap import libc_function
from learner.common.interfaces import ReplayFiles, SnapshotState

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16,
                 torch.int8, torch.uint8, torch.bool}


@dataclass(frozen=True)
class WriterStatus:
    """The checkpoint writer's state, as the run's driver and the benchmarks read it."""

    saves_done: int
    superseded: int
    """Saves replaced by a newer one before they started."""
    errors: int
    retries: int
    last_save_s: float | None
    last_save_bytes: int | None
    last_latency_s: float | None
    """Submit to stored, for the last save."""
    last_version: str | None
    last_error: str | None
    last_failed: bool
    """The last save failed after all its retries: the run stops (`raise_if_store_failed`)."""
    max_retries: int
    in_flight: bool
    lease_held: bool
    pending: bool
    store: str
    """The store's URI, credentials redacted."""


class CheckpointError(StoreError, RuntimeError):
    """The most recent save failed; the message carries its error."""


def live_state(agent: Any) -> dict[str, Any]:
    """The agent's state in exactly the form of `agent.state()`, but as views of its live tensors.

    Valid until the next update: pass it straight to `ray.put`, which copies synchronously, and
    that copy into shared memory is the only one made.
    """
    return agent.state(copy=False)


def snapshot_state(state: Any) -> Any:
    """A CPU copy of a state tree. Tensors already on the CPU are taken as they are, since
    `TD3Agent.state()` has already cloned them; device tensors are copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu") if state.device.type != "cpu" else state.detach()
    if isinstance(state, dict):
        return {k: snapshot_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot_state(v) for v in state)
    return state


def ray_payload(state: Any) -> Any:
    """The state with CPU tensors as numpy views (no copy), for a fast `ray.put`.

    The writer turns them back into tensors bit for bit; dtypes numpy lacks (bfloat16) stay tensors.
    """
    if isinstance(state, torch.Tensor):
        return state.numpy() if state.dtype in _NUMPY_DTYPES and state.device.type == "cpu" else state
    if isinstance(state, dict):
        return {k: ray_payload(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(ray_payload(v) for v in state)
    return state


def submit_snapshot(writer: ActorHandle, agent_state: SnapshotState, meta: Mapping[str, Any],
                    files: ReplayFiles | None = None) -> ObjectRef:
    """Learner side: hand `agent_state` (`live_state(agent)` or `agent.state()`) to the writer actor.

    Returns the ObjectRef of the `submit` call without waiting for it. The actor runs calls on
    several threads, so a later `writer.wait.remote()` may run first: `ray.get` this ref before
    waiting when the order matters (tests, shutdown), never in the training loop.
    """
    import ray  # only the wiring needs Ray

    ref = ray.put(ray_payload(snapshot_state(agent_state)))
    return writer.submit.remote([ref], dict(meta), files)


def stage_into(buffers: Any, state: Any) -> Any:
    """A CPU copy of the state tree `state`, written into the tensors of `buffers` (an earlier
    result) wherever shape and dtype still match, so that copying again allocates nothing."""
    if isinstance(state, torch.Tensor):
        src = state.detach()
        if isinstance(buffers, torch.Tensor) and buffers.shape == src.shape and buffers.dtype == src.dtype:
            return buffers.copy_(src)
        return src.to("cpu", copy=True)
    if isinstance(state, dict):
        olds: dict[Any, Any] = buffers if isinstance(buffers, dict) else {}
        return {k: stage_into(olds.get(k), v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        old = list(buffers) if isinstance(buffers, (list, tuple)) and len(buffers) == len(state) else [None] * len(state)
        return type(state)(stage_into(b, v) for b, v in zip(old, state))
    return state


def release_freed_memory() -> None:
    """Give the heap pages freed since the last call back to the OS (glibc's `malloc_trim`).

    A replay export allocates tens to hundreds of MB of segment bytes on a thread of its own and
    frees them once they are in Ray's object store; glibc keeps such pages in that thread's arena,
    so without this the learner's resident memory grows by the largest export it ever made.
    A no-op where the C library has no `malloc_trim`.
    """
    malloc_trim = libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


class SnapshotStager:
    """Learner side of a snapshot that holds the training loop only for a memory copy.

    A `ray.put` of a fresh ~60 MB state pays page faults on shared memory Ray has not touched yet
    (80-200 ms without `preallocate_plasma_memory`, which `fleet train` does not set: it would pin
    the whole object store). `submit` copies the live state into buffers reused from the last
    snapshot, then a background thread puts that copy into Ray's object store and hands it to the
    writer (`submit_snapshot`). One snapshot is staged at a time: a new `submit` first waits for
    the previous put, which takes a fraction of a second where snapshots are tens of seconds apart.
    """

    def __init__(self, submit: Any = None) -> None:
        self._submit = submit or submit_snapshot
        self._buffers: Any = None
        self._thread: threading.Thread | None = None
        self._ref: Any = None
        self._error: BaseException | None = None

    def submit(self, writer: ActorHandle, agent_state: SnapshotState, meta: Mapping[str, Any],
               files: ReplayFiles | Callable[[], ReplayFiles] | None = None) -> None:
        """Copy `agent_state` (e.g. `live_state(agent)`) and return; the hand-over runs behind.

        `files` may be a callable: it is called on the hand-over thread (e.g. to encode the replay
        there, off the training loop), before the state goes to the writer.
        """
        self.wait()
        self._buffers = stage_into(self._buffers, agent_state)
        staged, meta = self._buffers, dict(meta)

        def hand_over() -> None:
            try:
                self._ref = self._submit(writer, staged, meta, files() if callable(files) else files)
            except BaseException as exc:  # re-raised on the learner's thread by the next wait()
                self._error = exc
            finally:
                if files is not None:
                    release_freed_memory()

        self._thread = threading.Thread(target=hand_over, name="snapshot-put", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> ObjectRef | None:
        """Block until the last staged snapshot was handed to the writer; its `submit` ref (None
        before the first). Raises what the hand-over raised."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the snapshot hand-over did not finish within {timeout_s} s")
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._ref


@dataclass
class _Request:
    state: Any
    meta: dict[str, Any]
    files: ReplayFiles | None
    tags: tuple[str, ...]
    submitted: float = field(default_factory=time.monotonic)


class CheckpointWriter:
    """Saves states to a SnapshotStore in a background thread; at most one save in flight."""

    def __init__(self, store_uri: str, retention: RetentionPolicy | None = None,
                 get_timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 2.0, *,
                 owner: str | None = None, run: str = "", lease_ttl_s: float = LEASE_TTL_S,
                 defer_lease_error: bool = False) -> None:
        """Open the store and take its lease as `owner` (the run's token; default: a new one) for run
        `run`. Another live writer's lease: LeaseHeldError, or with `defer_lease_error` (a Ray actor, whose
        constructor must not fail) every save fails with that message and `lease_problem()` returns it."""
        self.store = SnapshotStore(store_uri)
        self.retention = retention
        self.get_timeout_s = get_timeout_s
        self.retries = retries
        """Further attempts of a save whose store write failed with an I/O error (OSError)."""
        self.backoff_s = backoff_s
        """Wait before the first retry; doubled before each next one."""
        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._in_flight = False
        self._closing = False
        self._last: Manifest | None = None
        self._last_error: str | None = None
        self._last_failed = False
        self._stats: dict[str, Any] = {"saves_done": 0, "superseded": 0, "errors": 0, "retries": 0, "last_save_s": None,
                       "last_save_bytes": None, "last_latency_s": None}
        self.lease = StoreLease(self.store.root, owner, run, lease_ttl_s)
        self._lease_error: str | None = None
        try:
            self.lease.acquire()
        except LeaseHeldError as exc:
            if not defer_lease_error:
                raise
            self._lease_error = str(exc)
            self._last_error, self._last_failed = f"LeaseHeldError: {exc}", True
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def lease_problem(self) -> str | None:
        """Why this writer holds no lease (another live writer's, named), or None when it holds it."""
        return self._lease_error

    def _check_lease(self) -> None:
        """Raise unless this writer still holds the store's lease: it never writes the store otherwise."""
        if self._lease_error is not None:
            raise LeaseHeldError(self._lease_error)
        self.lease.check()

    def submit(self, state: SnapshotState | list[ObjectRef], meta: Mapping[str, Any] | None = None,
               files: ReplayFiles | None = None, tags: Sequence[str] = ()) -> None:
        """Queue a save and return at once. `state` may be `[ObjectRef]` (resolved in the writer thread)."""
        with self._cond:
            if self._closing:
                raise RuntimeError("CheckpointWriter is closed")
            if self._pending is not None:
                self._stats["superseded"] += 1
                log.info("snapshot at %s updates superseded before it started",
                         self._pending.meta.get("learner_updates"))
            self._pending = _Request(state, dict(meta or {}), files, tuple(tags))
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> Manifest | None:
        """Block until nothing is queued or running; the last saved manifest, or None on timeout.

        Raises CheckpointError when the most recent save failed.
        """
        with self._cond:
            idle = self._cond.wait_for(lambda: self._pending is None and not self._in_flight, timeout)
            if not idle:
                return None
            if self._last_failed:
                raise CheckpointError(f"last snapshot save failed: {self._last_error}")
            return self._last

    def stored_files(self) -> dict[str, str]:
        """The files of the last version this writer stored, as {name: "sha256:<hex>"}: what an
        incremental replay export may reference instead of sending again ({} before the first save)."""
        with self._cond:
            last = self._last
        return {name: f"sha256:{ref.sha256}" for name, ref in last.files.items()} if last else {}

    def tag(self, ref: str, name: str) -> str:
        """Point tag `name` at version `ref` (e.g. `best` after an evaluation); returns the version."""
        self._check_lease()
        return self.store.tag(ref, name)

    def status(self) -> WriterStatus:
        """Last version, saves done, superseded count, last save seconds and bytes, errors."""
        with self._cond:
            return WriterStatus(**self._stats, last_version=self._last.version if self._last else None,
                                last_error=self._last_error, last_failed=self._last_failed, max_retries=self.retries,
                                in_flight=self._in_flight, lease_held=self.lease.held,
                                pending=self._pending is not None, store=self.store.uri)

    def close(self, timeout: float | None = 60.0) -> None:
        """Finish the running and queued saves, stop the thread, then release the store's lease."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():  # a save still running: the lease expires on its own instead
            self.lease.stop_renewing()
        else:
            self.lease.release()

    def release_lease(self) -> None:
        """Stop saving and release the store's lease without waiting for a running save (the run's
        driver, before it ends this actor)."""
        self.close_now()
        self.lease.release()

    def close_now(self) -> threading.Thread:
        """Stop taking saves without waiting for the running one (stuck in a store that does not answer,
        where no call can interrupt it); returns its thread, a daemon, to be left running."""
        with self._cond:
            self._closing = True
            self._pending = None
            self._cond.notify_all()
        self.lease.stop_renewing()  # expires after its TTL: releasing it would wait on the same store
        return self._thread

    def _run(self) -> None:
        req = self._next()
        while req is not None:
            self._save(req)
            req = self._next()

    def _next(self) -> _Request | None:
        """Mark the last save done, then wait for the next request; None once closed and drained."""
        with self._cond:
            self._in_flight = False
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._pending is not None or self._closing)
            if self._pending is None:
                return None
            req, self._pending, self._in_flight = self._pending, None, True
            return req

    def _put(self, state: Any, req: _Request) -> Manifest:
        """store.put, retried with exponential backoff on I/O errors (a full disk, a store that is
        briefly unreachable). The store itself leaves no partial file behind a failed write."""
        for attempt in range(self.retries + 1):
            self._check_lease()  # LeaseLostError / LeaseHeldError: no retry, this writer must stop
            try:
                return self.store.put(state, req.meta, req.files, req.tags)
            except OSError as exc:
                if attempt == self.retries:
                    raise
                delay = self.backoff_s * 2 ** attempt
                log.warning("snapshot save failed (%s); retry %d of %d in %.0f s", self._one_line(exc), attempt + 1,
                            self.retries, delay)
                with self._cond:
                    self._stats["retries"] += 1
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _save(self, req: _Request) -> None:
        t0 = time.perf_counter()
        try:
            state = _materialize(req.state, self.get_timeout_s)
            # Drop every reference to the shared-memory object now, so Ray frees it before the
            # learner's next ray.put, which then reuses memory its process has already mapped.
            req.state = None
            manifest = self._put(state, req)
            del state
            written = self.store.last_put_bytes
            if self.retention is not None:
                self.store.apply_retention(self.retention)
        except Exception as exc:  # noqa: BLE001 - any failure must reach status()/wait(), not kill the thread
            log.error("snapshot save at %s updates failed: %s", req.meta.get("learner_updates"), self._one_line(exc))
            with self._cond:
                self._stats["errors"] += 1
                self._last_error = scrub(f"{type(exc).__name__}: {exc}", self.store.root.uri)
                self._last_failed = True
            return
        with self._cond:
            self._last, self._last_failed = manifest, False
            self._stats.update(saves_done=self._stats["saves_done"] + 1, last_save_s=time.perf_counter() - t0,
                               last_save_bytes=written, last_latency_s=time.monotonic() - req.submitted)

    def _one_line(self, exc: BaseException) -> str:
        """The first line of the error, without the store's credentials (status() and logs show it)."""
        text = scrub(str(exc).strip(), self.store.root.uri)
        return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _materialize(state: Any, timeout_s: float) -> Any:
    if isinstance(state, list) and len(state) == 1 and type(state[0]).__name__ == "ObjectRef":
        import ray

        return ray.get(state[0], timeout=timeout_s)
    if isinstance(state, dict):
        return state
    raise TypeError(f"state must be a dict of components or [ObjectRef], got {type(state).__name__}")
