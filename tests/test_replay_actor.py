"""ReplayActor: mirrors fed by pull_new, lag detection; BoundedSender on a real local Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_replay_support import V, episode_chunks

from learner.replay import BoundedSender, ReplayActor, ReplayConfig, ReplayLagError, ReplayMemory


def test_mirror_fed_with_new_chunks_samples_the_same() -> None:
    cfg = ReplayConfig(capacity=100, n_step=2, segment_steps=32)
    actor = ReplayActor(cfg, V, 0.9, seed=1)
    mirror = ReplayMemory(cfg, V, 0.9)
    cursor = 0
    chunks = episode_chunks(150, chunk_steps=10, p_end=0.05) + episode_chunks(60, chunk_steps=7, seed=4)
    for i, chunk in enumerate(chunks):
        actor.add(chunk)
        if i % 3 == 0:
            new, cursor = actor.pull_new(cursor)
            for c in new:
                mirror.add(c)
    new, cursor = actor.pull_new(cursor)
    for c in new:
        mirror.add(c)
    assert cursor == len(chunks) == actor.stats()["cursor"]
    assert actor.pull_new(cursor) == ([], cursor)
    a, ia = actor.memory.sample(64, np.random.default_rng(5))
    b, ib = mirror.sample(64, np.random.default_rng(5))
    assert np.array_equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(a[:7], b[:7]))
    assert actor.stats()["steps_added"] == mirror.steps_added == 210


def test_mirror_that_fell_behind_is_told() -> None:
    actor = ReplayActor(ReplayConfig(capacity=100, log_steps=20), V, 0.9)
    for chunk in episode_chunks(60, chunk_steps=10, p_end=0.0):
        actor.add(chunk)
    assert actor.stats()["log_chunks"] == 2
    with pytest.raises(ReplayLagError, match="fell behind.*log_steps"):
        actor.pull_new(0)
    chunks, cursor = actor.pull_new(0, strict=False)
    assert len(chunks) == 2 and cursor == 6
    with pytest.raises(ValueError, match="ahead"):
        actor.pull_new(7)


def test_restored_actor_continues_the_cursor() -> None:
    cfg = ReplayConfig(capacity=100)
    actor = ReplayActor(cfg, V, 0.9)
    for chunk in episode_chunks(30, chunk_steps=10):
        actor.add(chunk)
    files = actor.export()
    again = ReplayActor(cfg, V, 0.9, files={k: v for k, v in files.items()})  # all bytes on a first export
    mirror = ReplayMemory.restore(cfg, V, 0.9, files)
    assert again.cursor == mirror.chunks_added == 3
    assert again.pull_new(mirror.chunks_added) == ([], 3)


def test_bounded_sender_on_local_ray() -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ReplayConfig(capacity=500)
        replay = ray.remote(ReplayActor).remote(cfg, V, 0.9)
        in_flight = []
        sender = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight=2, timeout_s=60)
        chunks = episode_chunks(200, chunk_steps=10, p_end=0.02)
        for chunk in chunks:
            sender.send(chunk)
            in_flight.append(sender.in_flight)
        assert max(in_flight) == 2
        assert sender.drain() == 200 and sender.in_flight == 0
        stats = ray.get(replay.stats.remote())
        assert stats["steps_added"] == 200 and stats["chunks"] == len(chunks)
        batch = ray.get(replay.sample.remote(16))
        assert batch.image.shape == (16, 4, 84, 84)
        bad = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight=1)
        bad.send(chunks[0].__class__(**{**chunks[0].__dict__, "reward": np.zeros(3, np.float64)}))
        with pytest.raises(ray.exceptions.RayTaskError, match="chunk.reward"):
            bad.drain()
    finally:
        ray.shutdown()
