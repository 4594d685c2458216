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
    live_state,
    ray_payload,
    submit_snapshot,
)


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
    while not writer.status()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(2, 6):
        writer.submit(small_state(i), {"learner_updates": i})
    assert writer.wait(timeout=0.05) is None  # still blocked
    gate.set()
    manifest = writer.wait(timeout=30)
    status = writer.status()
    assert manifest is not None and manifest.learner_updates == 5
    assert status["saves_done"] == 2 and status["superseded"] == 3 and status["errors"] == 0
    assert status["last_version"] == "v00000002" and status["last_save_bytes"] > 0
    assert [m.learner_updates for m in SnapshotStore(str(tmp_path / "store")).list()] == [1, 5]
    writer.close()


def test_a_failed_save_is_reported_not_swallowed(tmp_path):
    writer = CheckpointWriter(str(tmp_path / "store"))
    writer.submit({"bad": object()}, {"learner_updates": 1})
    with pytest.raises(CheckpointError, match="bad"):
        writer.wait(timeout=30)
    assert writer.status()["errors"] == 1
    writer.submit(small_state(2), {"learner_updates": 2})
    assert writer.wait(timeout=30).learner_updates == 2
    writer.close()


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
    finally:
        ray.shutdown()
    assert manifest.learner_updates == 2 and status["saves_done"] == 1
    snap = SnapshotStore(str(tmp_path / "store"), create=False).get("latest")
    assert assert_same(expected, snap.state) > 100
    # bfloat16 has no numpy dtype: it travels as a tensor.
    payload = ray_payload({"x": torch.ones(2, dtype=torch.bfloat16), "y": torch.ones(2)})
    assert isinstance(payload["x"], torch.Tensor) and not isinstance(payload["y"], torch.Tensor)
