"""Persistence of a ReplayMemory as Arrow IPC segments plus a JSON header, saved incrementally.

Files (names as the snapshot store keeps them):
    replay/header.json          counters, worker streams, rng state, layout (always rewritten)
    replay/steps-NNNNN.arrow    step ring slots [N*S, (N+1)*S): every per-step array
    replay/frames-NNNNN.arrow   frame ring slots [N*S, (N+1)*S), one 84*84 binary per frame
    replay/prio-NNNNN.arrow     sum-tree leaves of those step slots (prioritized only)

A segment not written since the last export is given as its "sha256:<hex>" ref
instead of bytes, which the snapshot store resolves to the blob it already has.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from learner.common.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from learner.replay.memory import ReplayConfig, ReplayMemory

PREFIX = "replay/"


class ReplayFilesError(StoreError, ValueError):
    """A snapshot's replay files cannot be read: missing, of another format, or not matching their header."""

HEADER = PREFIX + "header.json"
FORMAT = 1
COUNTERS = ("steps_written", "frames_written", "tail", "episodes", "chunks_added", "steps_added",
            "rejected_nonfinite", "orphaned", "max_priority", "samples")
"""The header's counters, in this order; `_counter_owner` says which part of the memory keeps each."""


def _counter_owner(mem: ReplayMemory, name: str) -> Any:
    if name in ("steps_written", "frames_written", "tail"):
        return mem.rings
    if name == "episodes":
        return mem.nstep
    if name == "max_priority":
        return mem.priorities  # None for a uniform memory: saved as 1.0, not restored
    return mem


def _counters(mem: ReplayMemory) -> dict[str, Any]:
    return {name: getattr(owner, name) if (owner := _counter_owner(mem, name)) is not None else 1.0
            for name in COUNTERS}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode(columns: Mapping[str, np.ndarray]) -> bytes:
    arrays = []
    for a in columns.values():
        a = np.ascontiguousarray(a)
        if a.ndim == 1:
            arrays.append(pa.array(a))
        elif a.dtype == np.uint8:  # frames: zero-copy fixed-size binary
            width = int(np.prod(a.shape[1:]))
            arrays.append(pa.Array.from_buffers(pa.binary(width), len(a), [None, pa.py_buffer(a.reshape(-1))]))
        else:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), int(np.prod(a.shape[1:]))))
    batch = pa.record_batch(arrays, names=list(columns))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _decode(data: bytes) -> dict[str, np.ndarray]:
    batch = pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()
    out = {}
    for name, col in zip(batch.schema.names, batch.columns):
        if pa.types.is_fixed_size_binary(col.type):
            width = col.type.byte_width
            raw = np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * width, offset=col.offset * width)
            out[name] = raw.reshape(len(col), width)
        elif pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _layout(mem: ReplayMemory, prio: bool) -> dict[str, int]:
    """Filled slots of each ring: how many of each kind's segments exist."""
    r = mem.rings
    steps = min(r.steps_written, r.capacity)
    return {"steps": steps, "frames": min(r.frames_written, r.frame_capacity), "prio": steps if prio else 0}


def _columns(mem: ReplayMemory, kind: str, lo: int, hi: int) -> dict[str, np.ndarray]:
    if kind == "frames":
        return {"frame": mem.rings.frames[lo:hi]}
    if kind == "prio":
        return {"priority": mem.priorities.leaves[lo:hi]}  # type: ignore[union-attr]
    return {name: getattr(mem.rings, name)[lo:hi] for name in mem.rings.STEP_ARRAYS}


def _names(mem: ReplayMemory, prio: bool | None = None, seg: int | None = None) -> list[tuple[str, str, int, int, int]]:
    seg = seg or mem.cfg.segment_steps
    out = []
    for kind, filled in _layout(mem, mem.priorities is not None if prio is None else prio).items():
        for i in range(math.ceil(filled / seg)):
            out.append((f"{PREFIX}{kind}-{i:05d}.arrow", kind, i, i * seg, min((i + 1) * seg, filled)))
    return out


def header(mem: ReplayMemory) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "layout": {"capacity": mem.cfg.capacity, "frame_capacity": mem.rings.frame_capacity, "frames": mem.k,
                   "vector_dim": mem.vector_dim, "gamma": mem.gamma, "n_step": mem.cfg.n_step,
                   "segment_steps": mem.cfg.segment_steps},
        "prioritized": mem.priorities is not None,
        "counters": _counters(mem),
        "streams": [{"stream": sid, "seq": st.seq, "carry": st.carry, "in_episode": st.in_episode,
                     "episode": st.episode, "last": st.last, "pending": st.pending}
                    for sid, st in mem.nstep.streams.items()],
        "rng": mem.rng.bit_generator.state,
        "segments": [name for name, *_ in _names(mem)],
    }


class ExportPlan:
    """One export, split in two so the encoding can run off the learner's thread.

    `plan` (on the thread that owns the memory, cheap) fixes the snapshot's cut: the header, which
    segments changed since the last export, and a copy of the priority leaves (sampling rewrites
    them). `encode` (any thread) then reads the step and frame rings in place: the owner must not
    `add` to the memory until it returns, and must not plan the next export before that either.
    """

    def __init__(self, exporter: SegmentExporter) -> None:
        mem = exporter.mem
        self.exporter, self.mem = exporter, mem
        self.names = _names(mem)
        self.dirty = {kind: set(ids) for kind, ids in mem.rings.dirty.items()}
        for ids in mem.rings.dirty.values():
            ids.clear()
        self.priorities = None if mem.priorities is None else mem.priorities.leaves.copy()
        self.header = json.dumps(header(mem)).encode()
        self.encoded_bytes = 0
        """Bytes of the segments `encode` encoded (the rest went as references)."""

    def encode(self, previous: Mapping[str, str] | None = None) -> dict[str, bytes | str]:
        """Bytes for segments changed since the last export (or not in `previous`), refs otherwise.

        `previous` maps names to the refs of the last version known to be stored. With None,
        the memory trusts that its own last export was stored; pass the last durable manifest's
        refs when a save may have been dropped, or {} to write everything.
        """
        mem, hashes, out = self.mem, self.exporter.hashes, {}
        try:
            for name, kind, i, lo, hi in self.names:
                known = hashes.get(name)
                stored = previous is None or previous.get(name) == f"sha256:{known}"
                if known is not None and i not in self.dirty[kind] and stored:
                    out[name] = f"sha256:{known}"
                    continue
                cols = {"priority": self.priorities[lo:hi]} if kind == "prio" else _columns(mem, kind, lo, hi)
                data = _encode(cols)
                hashes[name] = _sha(data)
                self.encoded_bytes += len(data)
                out[name] = data
        except BaseException:
            for kind, ids in self.dirty.items():  # not exported after all: the next export writes them
                mem.rings.dirty[kind] |= ids
            raise
        out[HEADER] = self.header
        return out


class SegmentExporter:
    """The one owner of a memory's export bookkeeping: the hash of each segment as last exported, so the
    next export encodes only what changed since (a reference for the rest). One per memory: the learner
    keeps it beside its memory, and `restore` returns it knowing the segments it loaded."""

    def __init__(self, mem: ReplayMemory) -> None:
        self.mem = mem
        self.hashes: dict[str, str] = {}
        """Segment name -> sha256 of its bytes as last exported (or restored)."""

    def plan(self) -> ExportPlan:
        """Fix the cut of an export now; encode it later, elsewhere (see `ExportPlan`)."""
        return ExportPlan(self)

    def export(self, previous: Mapping[str, str] | None = None) -> dict[str, bytes | str]:
        """Files of the memory: bytes for segments changed since the last export, "sha256:<hex>" refs
        otherwise (see `ExportPlan.encode` for `previous`)."""
        return self.plan().encode(previous)


def saved_chunks(files: Mapping[str, bytes]) -> int:
    """Chunks the saved replay had taken in (the replay actor's chunk cursor resumes there)."""
    if HEADER not in files:
        raise ReplayFilesError(f"no {HEADER} among the snapshot's files: not a saved replay")
    return int(json.loads(files[HEADER])["counters"]["chunks_added"])


def load(cfg: ReplayConfig, vector_dim: int, gamma: float, files: Mapping[str, bytes],
         frames: int = 4) -> SegmentExporter:
    """A new memory rebuilt from an export's `files` (refs resolved to bytes), with its exporter
    (`.mem` is the memory)."""
    from learner.replay.memory import ReplayMemory

    return restore(ReplayMemory(cfg, vector_dim, gamma, frames=frames), files)


def restore(mem: ReplayMemory, files: Mapping[str, bytes]) -> SegmentExporter:
    """Load `files` (from an export, refs resolved to bytes) into the freshly built, empty `mem`; returns
    its exporter, which knows the loaded segments (the next export refers to them instead of rewriting)."""
    from learner.replay.nstep import Stream

    if HEADER not in files:
        raise ReplayFilesError(f"no {HEADER} among the snapshot's files ({sorted(files)[:5]}...): not a saved replay")
    head = json.loads(files[HEADER])
    if head.get("format") != FORMAT:
        raise ReplayFilesError(f"{HEADER}: format {head.get('format')!r}, this code reads format {FORMAT}")
    want = header(mem)["layout"]
    for key, value in head["layout"].items():
        if key != "segment_steps" and want.get(key) != value:
            raise ConfigError(f"saved replay has {key}={value!r} but the config gives {want.get(key)!r}; "
                             f"restore with the replay config (and gamma) it was saved with")
    for name, value in head["counters"].items():
        if (owner := _counter_owner(mem, name)) is not None:
            setattr(owner, name, value)
    mem.nstep.streams = {int(s["stream"]): Stream(seq=s["seq"], carry=list(s["carry"]), in_episode=s["in_episode"],
                                             episode=s["episode"], last=s["last"],
                                             pending=[list(p) for p in s["pending"]])
                   for s in head["streams"]}
    mem.rng.bit_generator.state = head["rng"]
    # A replay saved with another segment size is read in its own; the next export rewrites it all.
    seg = head["layout"].get("segment_steps", mem.cfg.segment_steps)
    resized = seg != mem.cfg.segment_steps
    exporter = SegmentExporter(mem)
    expected = {name: (kind, lo, hi) for name, kind, _, lo, hi in _names(mem, prio=head["prioritized"], seg=seg)}
    if sorted(expected) != sorted(head["segments"]):
        raise ReplayFilesError(f"{HEADER} lists segments {head['segments'][:4]}... that do not match its counters")
    for name, (kind, lo, hi) in expected.items():
        if name not in files:
            raise ReplayFilesError(f"replay segment {name} is missing from the snapshot's files")
        if kind == "prio" and mem.priorities is None:
            continue  # saved prioritized, resumed uniform
        cols = _decode(files[name])
        for col, target in _columns(mem, kind, lo, hi).items():
            if col not in cols or len(cols[col]) != hi - lo:
                raise ReplayFilesError(f"replay segment {name}: column {col!r} missing or not {hi - lo} rows")
            target[...] = cols[col].reshape(target.shape)
        if not resized:
            exporter.hashes[name] = _sha(files[name])
    if mem.priorities is not None:
        if not head["prioritized"]:  # saved uniform, resumed prioritized: every sampleable step starts equal
            ids = np.arange(mem.rings.tail, mem.rings.steps_written)
            mem.priorities.fill_uniform(ids[mem.valid(ids)])
        mem.priorities.tree.rebuild()
    return exporter
