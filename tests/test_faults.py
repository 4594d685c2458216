"""Fault tests on a real local Ray cluster: a killed rollout worker, a killed checkpoint
actor, and a `fleet train` process killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from checkpoint_store.store import SnapshotStore
from cluster.runtime.resume import Resume
from cluster.runtime.training import train
from tests.test_runtime import REPO, make_cfg

pytestmark = pytest.mark.integration


def train_in_thread(cfg) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["summary"] = train(cfg, quiet=True)
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def versions(uri: str) -> list[str]:
    try:
        return [m.version for m in SnapshotStore(uri).list()]
    except Exception:  # the store folder may not exist yet
        return []


def test_killed_rollout_worker_is_restarted_and_the_run_finishes(tmp_path, ray_cluster):
    ray = ray_cluster
    cfg = make_cfg(tmp_path, **{"run.name": "killw", "run.total_env_steps": 3000})
    thread, out = train_in_thread(cfg)
    wait_for(lambda: len(versions(cfg.store_uri())) >= 1 or "error" in out, 240, "a first snapshot")
    victim = ray.get_actor("killw-worker-0")
    pid = ray.get(victim.__ray_call__.remote(lambda _self: os.getpid()))
    ray.kill(victim, no_restart=False)
    thread.join(timeout=400)
    assert not thread.is_alive(), "the run did not finish after a worker was killed"
    assert "error" not in out, repr(out.get("error"))
    summary = out["summary"]
    assert summary["worker_restarts"] >= 1
    # The budget counts env steps collected; the killed worker's unsent steps (its open chunk and the
    # chunks still in flight to the replay) died with it, so the replay may hold up to that many fewer.
    assert summary["collected_steps"] >= 3000
    lost_at_most = cfg.worker.chunk_steps * (1 + cfg.worker.max_in_flight)
    assert summary["env_steps"] >= 3000 - lost_at_most
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the killed worker's process is gone; a new one took its place


def test_checkpoint_actor_killed_during_saves_keeps_latest_loadable(tmp_path, ray_cluster):
    ray = ray_cluster
    cfg = make_cfg(tmp_path, **{"run.name": "killc", "run.total_env_steps": 3000,
                                "learner.snapshot_every": 20})
    uri = cfg.store_uri()
    thread, out = train_in_thread(cfg)
    wait_for(lambda: len(versions(uri)) >= 2 or "error" in out, 240, "two snapshots")
    writer = ray.get_actor("killc-checkpoint")
    # Kill while a save is running: the writer reports one in flight (or very soon).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ray.get(writer.status.remote()).in_flight:
        time.sleep(0.01)
    before = versions(uri)
    ray.kill(writer, no_restart=False)
    store = SnapshotStore(uri)
    latest = store.get("latest")  # right after the kill: the last complete version loads
    assert latest.manifest.version in before
    assert store.verify(latest.manifest.version) == []
    thread.join(timeout=400)
    assert not thread.is_alive()
    assert "error" not in out, repr(out.get("error"))
    after = versions(uri)
    new = [v for v in after if v not in before]
    assert new, "no snapshot was saved after the checkpoint actor was killed"
    final = store.get("latest")
    assert final.manifest.version == out["summary"]["final_snapshot"]
    assert final.manifest.env_steps == out["summary"]["env_steps"]
    assert store.verify(final.manifest.version) == []


def test_driver_calls_to_the_checkpoint_writer_wait_out_its_restarts(tmp_path, ray_cluster):
    """A call right after a kill fails with ActorUnavailableError in Ray; the driver retries it."""
    from checkpoint_store.writer import CheckpointWriter
    from cluster.runtime.ray_run import RayRun

    ray = ray_cluster
    cfg = make_cfg(tmp_path, **{"run.name": "wrestart"})
    run = RayRun(cfg, None)
    run.writer = ray.remote(num_cpus=0, max_restarts=-1)(CheckpointWriter).remote(cfg.store_uri(), cfg.retention)
    assert run._writer("status").last_version is None
    pid = run._writer("__ray_call__", lambda _self: os.getpid())
    for _ in range(4):
        ray.kill(run.writer, no_restart=False)
        assert run._writer("status").in_flight is False
        # The call may have raced the kill; this one must reach the restarted instance.
        deadline = time.monotonic() + 120
        while (new := run._writer("__ray_call__", lambda _self: os.getpid())) == pid:
            assert time.monotonic() < deadline, "the writer was not restarted"
            time.sleep(0.1)
        pid = new
    ray.kill(run.writer)


def start_victim(tmp_path: Path, store_uri: str, *extra: str) -> subprocess.Popen:
    """`fleet train` in its own process group, on a Ray instance it starts itself; `extra` arguments last."""
    args = [
        sys.executable, "-m", "cluster.cli", "train", "--quiet", "--name", "victim", "--store", store_uri,
        "--workers", "2", "--steps", "200000",
        "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "run.env=tests.env_double:make",
        "--set", "agent.batch_size=16", "--set", "learner.learning_starts=400",
        "--set", "learner.replay_ratio=0.25", "--set", "learner.snapshot_every=40",
        "--set", "replay.capacity=5000", "--set", "eval.every_updates=0", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


STOP_GRACE_S = 60
"""What a stopped job has between SIGTERM and SIGKILL: RAY_JOB_STOP_WAIT_TIME_S in cluster/*.yaml. Measured
SIGTERM to exit: 4.5-5.8 s (docs/benchmarks.md, "Shutdown"). Before the learner skipped its catch-up on
SIGTERM (74ca259) the security issue reports 107 s: past the grace, so the final snapshot was lost to the
SIGKILL. The old wait of 300 s would have passed that."""


def test_sigterm_of_fleet_train_writes_a_final_snapshot_and_exits_130_within_a_stopped_jobs_grace(tmp_path):
    import json

    store_uri = str(tmp_path / "store")
    # Workers far ahead of a ratio of 1: the updates owed at SIGTERM would take minutes to catch up, so a
    # run that did not skip them would miss the grace (at the default settings they took a few seconds).
    proc = start_victim(tmp_path, store_uri, "--set", "learner.replay_ratio=1.0", "--set", "run.max_ahead_steps=100000")
    try:
        wait_for(lambda: len(versions(store_uri)) >= 1 or proc.poll() is not None, 300, "a first snapshot")
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)  # as `ray job stop` or a scheduler would
        try:
            code = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fleet train still ran {STOP_GRACE_S} s after SIGTERM: `ray job stop` would SIGKILL it, "
                        "losing the final snapshot")
        err = proc.stderr.read().decode()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code == 130, err[-3000:]
    summary = json.loads((tmp_path / "runs" / "victim" / "summary.json").read_text())
    assert summary["interrupted"] is True
    latest = SnapshotStore(store_uri).get("latest").manifest
    assert latest.version == summary["final_snapshot"]
    assert latest.env_steps == summary["env_steps"] and latest.learner_updates == summary["learner_updates"]


def test_sigkill_of_fleet_train_then_resume_continues_from_latest(tmp_path, ray_cluster):
    store_uri = str(tmp_path / "store")
    proc = start_victim(tmp_path, store_uri)
    try:
        wait_for(lambda: len(versions(store_uri)) >= 2 or proc.poll() is not None, 300, "snapshots of the victim")
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the train process only, as the OOM killer would
        proc.wait(timeout=30)
        time.sleep(3)  # the orphaned Ray instance notices its driver is gone
        latest = SnapshotStore(store_uri).get("latest").manifest
    finally:
        try:  # the Ray instance the victim started is left in its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cfg = make_cfg(tmp_path, **{"run.name": "resumed", "run.store": store_uri,
                                "run.total_env_steps": latest.env_steps + 800})
    summary = train(cfg, resume=Resume.parse(store_uri), quiet=True)
    assert summary["resumed_from"] == f"{store_uri}@latest"
    assert summary["env_steps"] >= latest.env_steps + 800
    assert summary["learner_updates"] > latest.learner_updates
    final = SnapshotStore(store_uri).get("latest").manifest
    assert final.env_steps == summary["env_steps"]
    assert final.learner_updates == summary["learner_updates"]
    assert Path(cfg.run_dir() / "summary.json").exists()
