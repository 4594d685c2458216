"""The checkpoint actor: background saves, superseding, errors, and a real Ray actor round trip."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from test_store import assert_same, small_state, trained_agent

from checkpoint_store.store import SnapshotStore
from checkpoint_store.writer import (
    CheckpointError,
    CheckpointWriter,
    SnapshotStager,
    live_state,
    ray_payload,
    stage_into,
    submit_snapshot,
)
from learner.replay.batch import Batch


def trained_batch(seed: int, v: int = 23) -> Batch:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randint(0, 256, (2, 4, 84, 84), generator=g, dtype=torch.uint8)  # noqa: E731
    return Batch(img(), torch.rand(2, v, generator=g), torch.rand(2, 2, generator=g) * 2 - 1,
                 torch.rand(2, generator=g), torch.full((2,), 0.99), img(), torch.rand(2, v, generator=g))


def test_live_state_has_the_exact_form_and_values_of_agent_state():
    agent = trained_agent(updates=2)
    live = live_state(agent)
    assert assert_same(agent.state(), live) > 100
    # Views, not copies: the live actor weight shares memory with the network.
    assert live["actor"]["fc1.weight"].data_ptr() == agent.actor.fc1.weight.data_ptr()


def test_submit_returns_at_once_and_a_newer_request_supersedes_a_waiting_one(tmp_path):
    writer = CheckpointWriter(str(tmp_path / "store"))
    gate = threading.Event()
    writer.store._after_write = lambda path: gate.wait(10)  # hold the first save in flight
    writer.submit(small_state(1), {"learner_updates": 1})
    deadline = time.monotonic() + 10
    while not writer.status().in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(2, 6):
        writer.submit(small_state(i), {"learner_updates": i})
    assert writer.wait(timeout=0.05) is None  # still blocked
    gate.set()
    manifest = writer.wait(timeout=30)
    status = writer.status()
    assert manifest is not None and manifest.learner_updates == 5
    assert status.saves_done == 2 and status.superseded == 3 and status.errors == 0
    assert status.last_version == manifest.version and manifest.version.startswith("v00000002-")
    assert status.last_save_bytes > 0
    assert [m.learner_updates for m in SnapshotStore(str(tmp_path / "store")).list()] == [1, 5]
    writer.close()


def test_a_failed_save_is_reported_not_swallowed(tmp_path):
    writer = CheckpointWriter(str(tmp_path / "store"))
    writer.submit({"bad": object()}, {"learner_updates": 1})
    with pytest.raises(CheckpointError, match="bad"):
        writer.wait(timeout=30)
    assert writer.status().errors == 1
    writer.submit(small_state(2), {"learner_updates": 2})
    assert writer.wait(timeout=30).learner_updates == 2
    writer.close()


def test_staging_copies_into_the_same_buffers_and_the_hand_over_runs_behind():
    agent = trained_agent(updates=2)
    first = stage_into(None, live_state(agent))
    assert assert_same(agent.state(), first) > 100
    ptr = first["critic_cnn"]["fc.weight"].data_ptr()
    agent.update(trained_batch(7))
    second = stage_into(first, live_state(agent))
    assert second["critic_cnn"]["fc.weight"].data_ptr() == ptr  # no new allocation
    assert assert_same(agent.state(), second) > 100
    assert second["critic_cnn"]["fc.weight"].data_ptr() != agent.critic_cnn.fc.weight.data_ptr()  # a copy
    assert stage_into({"w": torch.zeros(3)}, {"w": torch.ones(2)})["w"].tolist() == [1.0, 1.0]  # reshaped: new

    gate, calls = threading.Event(), []

    def slow_submit(writer, state, meta, files):
        gate.wait(10)
        calls.append((state, meta))
        return f"ref{meta['n']}"

    stager = SnapshotStager(slow_submit)
    live = {"w": torch.zeros(4)}
    stager.submit("writer", live, {"n": 1})  # returns while the hand-over is held
    live["w"].fill_(5.0)  # the learner goes on updating: the staged copy must not change
    with pytest.raises(TimeoutError):
        stager.wait(0.05)
    gate.set()
    assert stager.wait(10) == "ref1" and calls[0][0]["w"].tolist() == [0.0] * 4

    def failing(writer, state, meta, files):
        raise RuntimeError("object store full")

    broken = SnapshotStager(failing)
    broken.submit("writer", live, {"n": 2})
    with pytest.raises(RuntimeError, match="object store full"):
        broken.wait(10)


def test_through_a_ray_actor_the_learner_hands_over_an_object_ref(tmp_path):
    ray = pytest.importorskip("ray")
    agent = trained_agent(updates=2)
    expected = agent.state()
    ray.init(num_cpus=1, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        writer = ray.remote(max_concurrency=2)(CheckpointWriter).remote(str(tmp_path / "store"))
        ray.get(submit_snapshot(writer, live_state(agent), {"learner_updates": 2, "env_steps": 500}))
        manifest = ray.get(writer.wait.remote(60))
        status = ray.get(writer.status.remote())
        # The runtime's path: staged copies, handed over from a background thread.
        stager, staged = SnapshotStager(), []
        for updates in (3, 4):
            agent.update(trained_batch(updates))
            staged.append(agent.state())
            stager.submit(writer, live_state(agent), {"learner_updates": updates, "env_steps": 600})
        ray.get(stager.wait(60))
        last = ray.get(writer.wait.remote(60))
    finally:
        ray.shutdown()
    assert manifest.learner_updates == 2 and status.saves_done == 1
    store = SnapshotStore(str(tmp_path / "store"), create=False)
    assert assert_same(expected, store.get(manifest.version).state) > 100
    assert last.learner_updates == 4 and assert_same(staged[-1], store.get("latest").state) > 100
    # bfloat16 has no numpy dtype: it travels as a tensor.
    payload = ray_payload({"x": torch.ones(2, dtype=torch.bfloat16), "y": torch.ones(2)})
    assert isinstance(payload["x"], torch.Tensor) and not isinstance(payload["y"], torch.Tensor)
