"""ReplayActor: the ingestion log the learner pulls from, lag detection; BoundedSender on a real local Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_replay_support import V, episode_chunks

from learner.replay import BoundedSender, ReplayActor, ReplayConfig, ReplayLagError, ReplayMemory
from learner.replay.segments import SegmentExporter, load, saved_chunks


def test_a_memory_fed_by_pulls_holds_what_a_memory_fed_directly_holds() -> None:
    cfg = ReplayConfig(capacity=100, n_step=2, segment_steps=32)
    actor = ReplayActor(cfg, V)
    direct, pulled = ReplayMemory(cfg, V, 0.9), ReplayMemory(cfg, V, 0.9)
    cursor = 0
    chunks = episode_chunks(150, chunk_steps=10, p_end=0.05) + episode_chunks(60, chunk_steps=7, seed=4)
    for i, chunk in enumerate(chunks):
        assert actor.add(chunk) == len(chunk)
        direct.add(chunk)
        if i % 3 == 0:
            new, cursor = actor.pull_new(cursor)
            for c in new:
                pulled.add(c)
    new, cursor = actor.pull_new(cursor)
    for c in new:
        pulled.add(c)
    assert cursor == len(chunks) == actor.stats()["cursor"]
    assert actor.pull_new(cursor) == ([], cursor)
    a, ia = direct.sample(64, np.random.default_rng(5))
    b, ib = pulled.sample(64, np.random.default_rng(5))
    assert np.array_equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(a[:7], b[:7]))
    assert actor.stats()["steps_added"] == pulled.steps_added == 210


def test_the_actor_holds_no_replay_memory_only_its_bounded_log() -> None:
    """Issue 16: the actor kept a second full ReplayMemory (7.8 GB per million steps) for export."""
    actor = ReplayActor(ReplayConfig(capacity=1_000_000, log_steps=40), V)
    assert not any(isinstance(v, ReplayMemory) or (isinstance(v, np.ndarray) and v.nbytes > 2**20)
                   for v in vars(actor).values())
    for chunk in episode_chunks(200, chunk_steps=10, p_end=0.0):
        actor.add(chunk)
    stats = actor.stats()
    assert stats["log_steps"] <= 40 and stats["log_chunks"] == 4 and stats["steps_added"] == 200


def test_the_backlog_is_the_steps_logged_and_not_yet_pulled() -> None:
    """What the ceiling's producers pace themselves by (`fleet bench scale`): unpaced, they filled the
    object stores and whole windows ingested nothing."""
    actor = ReplayActor(ReplayConfig(capacity=1_000, log_steps=1_000), V)
    chunks = episode_chunks(100, chunk_steps=10, p_end=0.0)
    for chunk in chunks[:6]:
        actor.add(chunk)
    assert actor.backlog_steps() == 60
    _, cursor = actor.pull_new(0, max_chunks=4)
    assert actor.backlog_steps() == 20
    for chunk in chunks[6:]:
        actor.add(chunk)
    assert actor.backlog_steps() == 60
    actor.pull_new(cursor)
    assert actor.backlog_steps() == 0 and actor.stats()["consumed_cursor"] == 10


def test_consumer_that_fell_behind_is_told() -> None:
    actor = ReplayActor(ReplayConfig(capacity=100, log_steps=20), V)
    for chunk in episode_chunks(60, chunk_steps=10, p_end=0.0):
        actor.add(chunk)
    assert actor.stats()["log_chunks"] == 2
    with pytest.raises(ReplayLagError, match="fell behind.*log_steps"):
        actor.pull_new(0)
    chunks, cursor = actor.pull_new(0, strict=False)
    assert len(chunks) == 2 and cursor == 6
    with pytest.raises(ValueError, match="ahead"):
        actor.pull_new(7)


def test_malformed_chunks_are_refused_and_not_logged() -> None:
    actor = ReplayActor(ReplayConfig(capacity=100), V)
    chunk = episode_chunks(10, chunk_steps=10)[0]
    with pytest.raises(ValueError, match="chunk.reward"):
        actor.add(chunk.__class__(**{**chunk.__dict__, "reward": np.zeros(3, np.float64)}))
    with pytest.raises(ValueError, match="vector"):
        ReplayActor(ReplayConfig(capacity=100), V + 1).add(chunk)
    assert actor.cursor == 0 and actor.stats()["steps_added"] == 0


def test_a_restored_run_resumes_the_chunk_cursor_where_its_saved_replay_stopped() -> None:
    cfg = ReplayConfig(capacity=100)
    mem = ReplayMemory(cfg, V, 0.9)
    for chunk in episode_chunks(30, chunk_steps=10):
        mem.add(chunk)
    files = SegmentExporter(mem).export()
    again = ReplayActor(cfg, V, first_cursor=saved_chunks(files))
    restored = load(cfg, V, 0.9, files).mem
    assert again.cursor == restored.chunks_added == 3
    assert again.pull_new(restored.chunks_added) == ([], 3)
    new = episode_chunks(10, chunk_steps=10, seed=9)[0]
    again.add(new)
    got, cursor = again.pull_new(3)
    assert cursor == 4 and len(got) == 1 and np.array_equal(got[0].frames, new.frames)


def test_bounded_sender_on_local_ray() -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ReplayConfig(capacity=500)
        replay = ray.remote(ReplayActor).remote(cfg, V)
        in_flight = []
        sender = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight=2, timeout_s=60)
        chunks = episode_chunks(200, chunk_steps=10, p_end=0.02)
        for chunk in chunks:
            sender.send(chunk)
            in_flight.append(sender.in_flight)
        assert max(in_flight) == 2
        assert sender.drain() == 200 and sender.in_flight == 0
        stats = ray.get(replay.stats.remote())
        assert stats["steps_added"] == 200 and stats["cursor"] == len(chunks)
        pulled, cursor = ray.get(replay.pull_new.remote(0))
        assert cursor == len(chunks) and sum(len(c) for c in pulled) == 200
        bad = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight=1)
        bad.send(chunks[0].__class__(**{**chunks[0].__dict__, "reward": np.zeros(3, np.float64)}))
        with pytest.raises(ray.exceptions.RayTaskError, match="chunk.reward"):
            bad.drain()
    finally:
        ray.shutdown()


def _logged_order(concurrency: int | None) -> list[int]:
    import ray

    from cluster.runtime.ray_run import replay_actor_class

    def send_all(replay, chunks, max_in_flight):  # nested: Ray ships it by value
        sender = BoundedSender(lambda chunk: replay.add.remote(chunk), max_in_flight=max_in_flight, timeout_s=60)
        for chunk in chunks:
            sender.send(chunk)
        return sender.drain()

    cls = replay_actor_class() if concurrency is None else ray.remote(num_cpus=0, max_concurrency=concurrency)(
        ReplayActor)
    replay = cls.remote(ReplayConfig(capacity=100_000, log_steps=100_000), V)
    chunks = episode_chunks(4000, chunk_steps=8, p_end=0.01)
    # From another process, as a rollout worker sends: up to 8 chunks in flight at once.
    ray.get(ray.remote(num_cpus=0)(send_all).remote(replay, chunks, 8))
    pulled, _ = ray.get(replay.pull_new.remote(0))
    ray.kill(replay)
    return [c.seq for c in pulled]


def test_the_replay_actor_logs_each_workers_chunks_in_the_order_it_sent_them(ray_cluster) -> None:
    """A threaded replay actor logged a worker's chunks swapped at times; the memory then cut the episode
    and dropped its steps as orphans (and the dropped steps stalled the workers' pacing)."""
    order = _logged_order(None)
    assert order == sorted(order) and len(order) == 500
