"""ReplayMemory against a naive reference; chunk encoding; n-step; bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_replay_support import FakeStream, V, episode_chunks, naive_target

from learner.replay import ChunkBuilder, ReplayConfig, ReplayMemory
from learner.replay.segments import SegmentExporter, load

GAMMA = 0.9


def check_batch(mem: ReplayMemory, order: list[tuple[FakeStream, int]], n: int, rng: np.random.Generator) -> int:
    """Sample a batch; every row must equal the naive reference. Returns rows checked."""
    try:
        batch, ids = mem.sample(24, rng)
    except ValueError:
        return 0  # nothing sampleable yet
    for row, gid in enumerate(ids.tolist()):
        stream, j = order[gid]
        complete, ret, disc, last = naive_target(stream.history, j, n, GAMMA)
        tr = stream.history[j]
        assert complete, f"sampled id {gid} whose n-step window is still open"
        np.testing.assert_array_equal(batch.image[row].numpy(), tr.obs_image)
        np.testing.assert_array_equal(batch.next_image[row].numpy(), last.next_image)
        np.testing.assert_array_equal(batch.vector[row].numpy(), tr.obs_vector)
        np.testing.assert_array_equal(batch.next_vector[row].numpy(), last.next_vector)
        np.testing.assert_array_equal(batch.action[row].numpy(), tr.action)
        assert batch.reward[row].item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert batch.discount[row].item() == pytest.approx(disc, rel=1e-6)
    assert batch.image.dtype == batch.next_image.dtype == torch.uint8 and batch.weight is None
    return len(ids)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    capacity=st.integers(6, 60),
    n=st.integers(1, 4),
    streams=st.integers(1, 3),
    chunk_steps=st.integers(1, 9),
    slack=st.sampled_from([0.0, 0.0625, 0.5]),
    mean_len=st.sampled_from([2, 6, 30]),
    p_keyframe=st.sampled_from([0.0, 0.2]),
)
def test_samples_equal_naive_frame_stacks(seed: int, capacity: int, n: int, streams: int, chunk_steps: int,
                                          slack: float, mean_len: int, p_keyframe: float) -> None:
    rng = np.random.default_rng(seed)
    mem = ReplayMemory(ReplayConfig(capacity=capacity, n_step=n, frame_slack=slack), V, GAMMA, seed=seed)
    workers = [FakeStream(i + 1, rng, chunk_steps, p_keyframe) for i in range(streams)]
    order: list[tuple[FakeStream, int]] = []  # global step id -> (stream, index in its history)
    segments = 0
    checked = 0
    for _ in range(160):
        w = workers[int(rng.integers(streams))]
        if w.obs is None:
            w.reset(segments)
            segments += 1
        u = rng.random()
        if u < 0.03:
            w.abandon()
        elif u < 0.03 + 1 / mean_len:
            if rng.random() < 0.5:
                w.step(terminated=True)
            else:
                w.step(truncated=True)
        else:
            w.step()
        if w.builder.ready() or rng.random() < 0.1:
            base = len(w.history)
            chunk, sent = w.flush()
            if chunk is not None:
                assert mem.add(chunk) == len(sent)
                order.extend((w, base + i) for i in range(len(sent)))
                checked += check_batch(mem, order, n, rng)
    for w in workers:
        base = len(w.history)
        chunk, sent = w.flush()
        if chunk is not None:
            mem.add(chunk)
            order.extend((w, base + i) for i in range(len(sent)))
    checked += check_batch(mem, order, n, rng)
    assert mem.rings.steps_written == len(order)
    assert len(mem) <= capacity
    assert checked > 0 or mem.rings.steps_written < 8


def test_builder_sends_each_frame_once() -> None:
    rng = np.random.default_rng(0)
    w = FakeStream(7, rng, chunk_steps=10)
    w.reset(0)
    for _ in range(25):
        w.step()
    chunks = [w.flush()[0]]
    w.step(terminated=True)
    w.reset(1)  # reset frames of an episode without steps wait for the next chunk
    chunks.append(w.flush()[0])
    w.step()
    chunks.append(w.flush()[0])
    frames = sum(len(c.frames) for c in chunks)
    assert frames == 4 + 26 + 4 + 1
    assert [len(c) for c in chunks] == [25, 1, 1]
    assert chunks[1].obs_frames[0].tolist() == [-4, -3, -2, -1]  # continues from the previous chunk
    assert chunks[2].episode_start.tolist() == [True] and chunks[2].obs_frames[0].tolist() == [0, 1, 2, 3]


def test_bytes_per_transition_under_8k() -> None:
    for prioritized in (False, True):
        mem = ReplayMemory(ReplayConfig(capacity=20_000, prioritized=prioritized), 23, 0.99)
        assert mem.nbytes / 20_000 <= 8192, mem.nbytes / 20_000
    # A stacked uint8 buffer (obs + next obs) would cost 56 KB.
    assert mem.nbytes / 20_000 < 2 * 4 * 84 * 84 / 7


def test_nstep_targets() -> None:
    gamma = 0.9
    mem = ReplayMemory(ReplayConfig(capacity=100, n_step=3), V, gamma)
    w = FakeStream(1, np.random.default_rng(1), chunk_steps=100)
    w.reset(0)
    for r in (1.0, 2.0, 3.0, 4.0):
        w.step(reward=r)
    w.step(reward=5.0, terminated=True)
    w.reset(1)
    w.step(reward=1.0)
    w.step(reward=1.0, truncated=True)
    mem.add(w.flush()[0])
    want_ret = [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3 + 0.81 * 4, 3 + 0.9 * 4 + 0.81 * 5, 4 + 0.9 * 5, 5, 1.9, 1]
    want_disc = [0.729, 0.729, 0.0, 0.0, 0.0, 0.81, 0.9]
    np.testing.assert_allclose(mem.rings.ret[:7], want_ret, rtol=1e-6)
    np.testing.assert_allclose(mem.rings.discount[:7], want_disc, rtol=1e-6)
    assert mem.rings.boot[:7].tolist() == [2, 3, 4, 4, 4, 6, 6]
    assert mem.rings.complete[:7].all()


def test_nstep_window_waits_for_future_steps() -> None:
    mem = ReplayMemory(ReplayConfig(capacity=100, n_step=3), V, 0.9)
    w = FakeStream(1, np.random.default_rng(1), chunk_steps=2)
    w.reset(0)
    w.step(reward=1.0)
    w.step(reward=1.0)
    mem.add(w.flush()[0])
    assert not mem.rings.complete[:2].any()
    with pytest.raises(ValueError, match="no sampleable"):
        mem.sample(4, np.random.default_rng(0))
    w.abandon()  # steps already sent: the replay closes the episode when the next one starts
    w.reset(1)
    w.step(reward=1.0)
    mem.add(w.flush()[0])
    np.testing.assert_allclose(mem.rings.ret[:2], [1.9, 1.0])
    np.testing.assert_allclose(mem.rings.discount[:2], [0.81, 0.9])


def test_nonfinite_steps_are_rejected_and_counted() -> None:
    mem = ReplayMemory(ReplayConfig(capacity=100, n_step=2), V, 0.5)
    w = FakeStream(1, np.random.default_rng(2), chunk_steps=100)
    w.reset(0)
    for _ in range(8):
        w.step(reward=1.0)
    chunk = w.flush()[0]
    chunk.reward[2] = np.nan
    chunk.next_vector[5, 1] = np.inf
    assert mem.add(chunk) == 6
    assert mem.stats()["rejected_nonfinite"] == 2
    batch, _ = mem.sample(256, np.random.default_rng(0))
    assert np.isfinite(batch.reward.numpy()).all() and np.isfinite(batch.next_vector.numpy()).all()
    # The chain is cut at each rejected step: the step before bootstraps from its own next obs.
    assert mem.rings.discount[1] == pytest.approx(0.5) and mem.rings.ret[1] == pytest.approx(1.0)
    assert mem.rings.discount[0] == pytest.approx(0.25) and mem.rings.ret[0] == pytest.approx(1.5)


@pytest.mark.parametrize("field, value, match", [
    ("frames", np.zeros((3, 84, 80), np.uint8), "chunk.frames"),
    ("frames", np.zeros((3, 84, 84), np.float32), "chunk.frames"),
    ("action", np.zeros((4, 3), np.float32), "chunk.action"),
    ("vector", np.zeros((4, V), np.float64), "chunk.vector"),
    ("reward", np.zeros(5, np.float32), "chunk.reward"),
    ("obs_frames", np.full((4, 4), 99, np.int32), "chunk.obs_frames"),
])
def test_malformed_chunks_name_the_field(field: str, value: np.ndarray, match: str) -> None:
    w = FakeStream(1, np.random.default_rng(3), chunk_steps=4)
    w.reset(0)
    for _ in range(4):
        w.step()
    chunk = dataclasses.replace(w.flush()[0], **{field: value})
    mem = ReplayMemory(ReplayConfig(capacity=10), V, 0.9)
    with pytest.raises(ValueError, match=match):
        mem.add(chunk)
    assert mem.rings.steps_written == 0


def test_lost_chunk_drops_the_rest_of_the_episode() -> None:
    mem = ReplayMemory(ReplayConfig(capacity=100), V, 0.9)
    w = FakeStream(1, np.random.default_rng(4), chunk_steps=3)
    w.reset(0)
    for _ in range(6):
        w.step()
    first, _lost = w.flush()[0], None
    mem.add(first)
    for _ in range(3):
        w.step()
    w.flush()  # lost on the way
    w.step(terminated=True)
    w.reset(1)
    w.step()
    assert mem.add(w.flush()[0]) == 1  # only the new episode's step
    assert mem.stats()["orphaned"] == 1


def test_builder_rejects_bad_observations() -> None:
    b = ChunkBuilder(V)
    with pytest.raises(ValueError, match="image"):
        b.begin_episode({"image": np.zeros((4, 84, 84), np.float32), "vector": np.zeros(V, np.float32)})
    with pytest.raises(ValueError, match="vector"):
        b.begin_episode({"image": np.zeros((4, 84, 84), np.uint8), "vector": np.zeros(V + 1, np.float32)})
    with pytest.raises(RuntimeError, match="begin_episode"):
        b.add_step(np.zeros(2), 0.0, False, False, {}, 0)


def test_uniform_sampling_is_uniform() -> None:
    mem = ReplayMemory(ReplayConfig(capacity=400), V, 0.9)
    for c in episode_chunks(500, chunk_steps=50, p_end=0.0):
        mem.add(c)
    rng = np.random.default_rng(0)
    ids = np.concatenate([mem.sample_ids(256, rng) for _ in range(200)])
    counts = np.bincount(ids - mem.rings.tail, minlength=len(mem))
    assert ids.min() >= mem.rings.steps_written - 400
    expected = len(ids) / len(mem)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < len(mem) + 5 * np.sqrt(2 * len(mem))  # df = len - 1, ~5 sigma


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_frames_kept_on_a_device_give_the_same_batches(device: str) -> None:
    """`keep_frames_on`: image stacks gathered from the device copy of the frame ring equal the host
    ring's, while chunks arrive between batches and the ring wraps several times, and after a
    restore (whose copy starts empty and is filled at the first batch). On the CPU this checks the
    bookkeeping; on a GPU it is the learner's default sampling."""
    from test_replay_support import episode_chunks

    cfg = ReplayConfig(capacity=300, frame_slack=0.0625, segment_steps=64)
    host, mirrored = ReplayMemory(cfg, V, GAMMA), ReplayMemory(cfg, V, GAMMA)
    mirrored.keep_frames_on(torch.device(device))
    chunks = episode_chunks(1_400, chunk_steps=37, seed=3, p_end=0.02)
    for i, chunk in enumerate(chunks):
        host.add(chunk)
        mirrored.add(chunk)
        if i % 3 == 2:
            a, ids_a = host.sample(16, np.random.default_rng(i))
            b, ids_b = mirrored.sample(16, np.random.default_rng(i))
            np.testing.assert_array_equal(ids_a, ids_b)
            assert b.image.device.type == device
            assert torch.equal(a.image, b.image.cpu()) and torch.equal(a.next_image, b.next_image.cpu())
    assert mirrored.rings.frames_written > 3 * mirrored.rings.frame_capacity  # it wrapped
    restored = load(cfg, V, GAMMA, SegmentExporter(host).export()).mem
    restored.keep_frames_on(torch.device(device))
    a, _ = host.sample(64, np.random.default_rng(99))
    b, _ = restored.sample(64, np.random.default_rng(99))
    assert torch.equal(a.image, b.image.cpu()) and torch.equal(a.next_image, b.next_image.cpu())
