"""A writer SIGKILLed at random points of `put` never leaves a listed partial version."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import torch

from checkpoint_store.store import SnapshotStore


def state(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    return {f"part{k}": {"w": torch.randn(64, 64, generator=g), "id": torch.tensor(i)} for k in range(4)}


def _writer(root: str, i: int) -> None:
    store = SnapshotStore(root)
    # A pause after every file written spreads the kill points over blobs, manifest and pointers.
    store._after_write = lambda path: time.sleep(0.004)
    store.put(state(i), {"learner_updates": i})
    os._exit(0)


def test_sigkill_during_put_never_leaves_a_partial_version(tmp_path):
    root = str(tmp_path / "store")
    store = SnapshotStore(root)
    store.put(state(0), {"learner_updates": 0})
    ctx = mp.get_context("fork")  # fork: a fresh interpreter per kill point would cost seconds each
    rng = random.Random(1234)
    outcomes = {"committed": 0, "not committed": 0}
    for i in range(1, 17):
        before = store.resolve("latest")
        proc = ctx.Process(target=_writer, args=(root, i))
        proc.start()
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        reader = SnapshotStore(root, create=False)
        versions = [m.version for m in reader.list()]
        assert reader.verify() == [], f"kill point {i}: {reader.verify()}"
        latest = reader.resolve("latest")
        snap = reader.get("latest")
        learned = snap.manifest.learner_updates
        assert all(int(t) == learned for t in (snap.state[f"part{k}"]["id"] for k in range(4)))
        if learned == i:
            outcomes["committed"] += 1
        else:
            outcomes["not committed"] += 1
            assert latest == before, f"kill point {i}: latest moved to {latest} without a complete version"
        assert len(versions) == len(set(versions)) and latest in versions
        store = reader
    # The kill points must have landed on both sides of the commit for the test to mean anything.
    assert outcomes["not committed"] >= 3 and outcomes["committed"] >= 1, outcomes
    assert SnapshotStore(root).gc(min_age_s=0)[0] >= 0
    assert SnapshotStore(root).verify() == []
