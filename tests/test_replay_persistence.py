"""Arrow segment persistence: exact round trips after wrap-around, incremental export, config checks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from test_replay_support import FakeStream, V, episode_chunks

from learner.common.errors import FleetError
from learner.replay import ReplayConfig, ReplayMemory
from learner.replay.segments import SegmentExporter, load


def same_batches(a: ReplayMemory, b: ReplayMemory, seed: int) -> None:
    for _ in range(3):
        (ba, ia), (bb, ib) = a.sample(32, np.random.default_rng(seed)), b.sample(32, np.random.default_rng(seed))
        assert np.array_equal(ia, ib)
        for x, y in zip(ba, bb):
            assert (x is None and y is None) or torch.equal(x, y)
        seed += 1


def resolve(files: dict[str, bytes | str], blobs: dict[str, bytes]) -> dict[str, bytes]:
    """What the snapshot store does: keep blobs by sha256, resolve refs."""
    out = {}
    for name, v in files.items():
        if isinstance(v, bytes):
            blobs[hashlib.sha256(v).hexdigest()] = v
            out[name] = v
        else:
            out[name] = blobs[v.removeprefix("sha256:")]
    return out


@pytest.mark.parametrize("prioritized, n", [(False, 1), (True, 3)])
def test_round_trip_exact_after_wrap_around(prioritized: bool, n: int) -> None:
    cfg = ReplayConfig(capacity=50, n_step=n, prioritized=prioritized, segment_steps=16)
    mem = ReplayMemory(cfg, V, 0.95, seed=3)
    rng = np.random.default_rng(0)
    streams = [FakeStream(i + 1, rng, chunk_steps=7) for i in range(2)]
    for t in range(150):  # three times around the ring, two streams interleaved
        w = streams[t % 2]
        if w.obs is None:
            w.reset(t)
        w.step(terminated=bool(rng.random() < 0.05))
        if w.builder.ready():
            mem.add(w.flush()[0])
    assert mem.rings.steps_written > 2 * cfg.capacity
    if prioritized:
        ids = mem.sample_ids(40, rng)
        mem.update_priorities(ids, rng.uniform(0, 3, 40))
    blobs: dict[str, bytes] = {}
    files = resolve(SegmentExporter(mem).export(), blobs)
    back = load(cfg, V, 0.95, files).mem
    same_batches(mem, back, seed=11)
    assert back.stats() == mem.stats()
    # Both go on identically: open episodes continue across the save.
    for i, w in enumerate(streams):
        if w.obs is None:
            w.reset(1000 + i)
        w.step()
        chunk = w.flush()[0]
        assert mem.add(chunk) == back.add(chunk) == len(chunk)
    same_batches(mem, back, seed=21)
    batch_a, _ = mem.sample(8)  # the memories' own rngs were saved too
    batch_b, _ = back.sample(8)
    assert torch.equal(batch_a.image, batch_b.image)


def test_export_rewrites_only_dirty_segments() -> None:
    cfg = ReplayConfig(capacity=64, segment_steps=16)
    mem = ReplayMemory(cfg, V, 0.9)
    exporter = SegmentExporter(mem)
    for c in episode_chunks(40, chunk_steps=8, p_end=0.0):
        mem.add(c)
    first = exporter.export()
    assert all(isinstance(v, bytes) for v in first.values())
    assert sorted(first) == ["replay/frames-00000.arrow", "replay/frames-00001.arrow", "replay/frames-00002.arrow",
                             "replay/header.json", "replay/steps-00000.arrow", "replay/steps-00001.arrow",
                             "replay/steps-00002.arrow"]
    for c in episode_chunks(4, chunk_steps=4, p_end=0.0, seed=5):  # a new stream: 4 steps, 8 frames
        mem.add(c)
    second = exporter.export()
    rewritten = sorted(k for k, v in second.items() if isinstance(v, bytes))
    # Steps 40..43 land in step segment 2; frames 44..51 in frame segments 2 and 3.
    assert rewritten == ["replay/frames-00002.arrow", "replay/frames-00003.arrow", "replay/header.json",
                         "replay/steps-00002.arrow"]
    for name in ("replay/steps-00000.arrow", "replay/frames-00001.arrow"):
        assert second[name] == "sha256:" + hashlib.sha256(first[name]).hexdigest()
    # A ref the caller says was never stored is written out again.
    prev = {k: v if isinstance(v, str) else "sha256:" + hashlib.sha256(v).hexdigest() for k, v in second.items()}
    prev["replay/steps-00001.arrow"] = "sha256:" + "0" * 64
    third = exporter.export(prev)
    assert sorted(k for k, v in third.items() if isinstance(v, bytes)) == ["replay/header.json",
                                                                           "replay/steps-00001.arrow"]
    assert json.loads(third["replay/header.json"])["counters"]["steps_written"] == 44


def test_restore_rejects_other_layouts_and_missing_segments() -> None:
    """Each is an error the command line prints in one line (a FleetError): a resume with another replay
    config used to end in a traceback."""
    mem = ReplayMemory(ReplayConfig(capacity=32, segment_steps=16), V, 0.9)
    for c in episode_chunks(20, chunk_steps=10, p_end=0.0):
        mem.add(c)
    files = SegmentExporter(mem).export()
    with pytest.raises(FleetError, match="capacity"):
        load(ReplayConfig(capacity=64, segment_steps=16), V, 0.9, files)
    with pytest.raises(FleetError, match="gamma"):
        load(ReplayConfig(capacity=32, segment_steps=16), V, 0.99, files)
    del files["replay/frames-00001.arrow"]
    with pytest.raises(FleetError, match="frames-00001"):
        load(ReplayConfig(capacity=32, segment_steps=16), V, 0.9, files)
    with pytest.raises(FleetError, match="header"):
        load(ReplayConfig(capacity=32), V, 0.9, {"actor.tensors": b""})


def test_consecutive_snapshots_send_only_the_segments_changed_since_the_last_stored_one(tmp_path) -> None:
    """Issue 16: callers passed previous={}, so every snapshot re-encoded and shipped the whole replay."""
    from checkpoint_store.writer import CheckpointWriter

    def sent(files: dict) -> int:
        return sum(len(v) for v in files.values() if isinstance(v, bytes))

    mem = ReplayMemory(ReplayConfig(capacity=8192, segment_steps=128), V, 0.9)
    exporter = SegmentExporter(mem)
    for c in episode_chunks(4000, chunk_steps=50, p_end=0.0):
        mem.add(c)
    writer = CheckpointWriter(str(tmp_path / "store"))
    state = {"net": {"w": torch.zeros(3)}}
    try:
        first = exporter.export(writer.stored_files())
        assert writer.stored_files() == {}
        writer.submit(state, {"learner_updates": 1}, first)
        writer.wait(timeout=60)
        for c in episode_chunks(60, chunk_steps=20, p_end=0.0, seed=7):
            mem.add(c)
        second = exporter.export(writer.stored_files())
        assert 0 < sent(second) < 0.1 * sent(first), (sent(second), sent(first))
        # A save that never reached the store (superseded, failed): its segments are sent again next time.
        for c in episode_chunks(60, chunk_steps=20, p_end=0.0, seed=8):
            mem.add(c)
        dropped = exporter.export(writer.stored_files())
        again = exporter.export(writer.stored_files())
        assert {k for k, v in again.items() if isinstance(v, bytes)} >= \
            {k for k, v in dropped.items() if isinstance(v, bytes) and k != "replay/header.json"}
        writer.submit(state, {"learner_updates": 2}, again)
        writer.wait(timeout=60)
    finally:
        writer.close()


@pytest.mark.parametrize("prioritized", [False, True])
def test_an_export_planned_now_and_encoded_later_saves_the_memory_as_it_was_planned(prioritized: bool) -> None:
    """The snapshot's cut is the plan: sampling and priority updates between plan and encode do not
    leak into the files (the learner holds new chunks back meanwhile)."""
    cfg = ReplayConfig(capacity=64, segment_steps=16, prioritized=prioritized, n_step=2)
    mem, twin = ReplayMemory(cfg, V, 0.9, seed=3), ReplayMemory(cfg, V, 0.9, seed=3)
    for c in episode_chunks(100, chunk_steps=10, p_end=0.05):
        mem.add(c)
        twin.add(c)
    plan = SegmentExporter(mem).plan()
    expected = SegmentExporter(twin).export()
    rng = np.random.default_rng(0)
    for _ in range(5):  # what the learner does while the export encodes on another thread
        _, ids = mem.sample(16, rng)
        mem.update_priorities(ids, rng.random(16) * 10)
    files = plan.encode({})
    assert files == expected
    assert plan.encoded_bytes == sum(len(v) for k, v in files.items() if k != "replay/header.json")


def test_a_failed_encode_leaves_its_segments_to_the_next_export(monkeypatch) -> None:
    from learner.replay import segments

    mem = ReplayMemory(ReplayConfig(capacity=64, segment_steps=16), V, 0.9)
    exporter = SegmentExporter(mem)
    for c in episode_chunks(40, chunk_steps=10, p_end=0.0):
        mem.add(c)
    exporter.export()
    for c in episode_chunks(20, chunk_steps=10, p_end=0.0, seed=2):
        mem.add(c)
    changed = {f"replay/{kind}-{i:05d}.arrow" for kind, ids in mem.rings.dirty.items() for i in ids}
    assert len(changed) >= 2
    encode, calls = segments._encode, []

    def fails_on_the_second(cols):  # one segment encoded, then the disk fills (say)
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no space left")
        return encode(cols)

    monkeypatch.setattr(segments, "_encode", fails_on_the_second)
    with pytest.raises(OSError):
        exporter.plan().encode(None)
    monkeypatch.setattr(segments, "_encode", encode)
    again = {k for k, v in exporter.export().items() if isinstance(v, bytes)} - {"replay/header.json"}
    assert again == changed


def test_a_replay_saved_with_another_segment_size_restores_and_is_rewritten_whole() -> None:
    old = ReplayMemory(ReplayConfig(capacity=64, segment_steps=32), V, 0.9)
    for c in episode_chunks(90, chunk_steps=10, p_end=0.02):
        old.add(c)
    files = SegmentExporter(old).export()
    restored = load(ReplayConfig(capacity=64, segment_steps=16), V, 0.9, files)
    same_batches(old, restored.mem, seed=11)
    out = restored.export()
    segments = {k for k, v in out.items() if k != "replay/header.json"}
    assert all(isinstance(out[k], bytes) for k in segments) and "replay/steps-00003.arrow" in segments
    same_batches(old, load(ReplayConfig(capacity=64, segment_steps=16), V, 0.9, out).mem, seed=11)


def test_a_step_completed_by_a_later_chunk_saves_its_new_priority() -> None:
    """Steps whose n-step window closes in the next chunk get their priority then; when that chunk's
    steps lie in the next segment, the earlier segment's priorities changed too and must be saved."""
    cfg = ReplayConfig(capacity=64, n_step=3, prioritized=True, segment_steps=16)
    mem = ReplayMemory(cfg, V, 0.9)
    exporter = SegmentExporter(mem)
    chunks = episode_chunks(32, chunk_steps=16, p_end=0.0)
    mem.add(chunks[0])
    assert mem.priorities.leaves[14] == 0 == mem.priorities.leaves[15]  # windows still open
    blobs: dict[str, bytes] = {}
    resolve(exporter.export(), blobs)
    mem.add(chunks[1])
    assert mem.priorities.leaves[14] > 0 and mem.priorities.leaves[15] > 0
    restored = load(cfg, V, 0.9, resolve(exporter.export(), blobs)).mem
    np.testing.assert_array_equal(restored.priorities.leaves, mem.priorities.leaves)
