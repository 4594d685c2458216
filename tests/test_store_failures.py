"""A store that fills up or turns read-only stops the run cleanly: retries, one line, a summary, nothing
stored earlier lost, no temporary files left (issue 18, item 3). Real tmpfs mounts: needs root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint_store.fs import TMP_MARK
from checkpoint_store.store import SnapshotStore

FLEET = str(Path(sys.executable).parent / "fleet")
REPO = Path(__file__).resolve().parents[1]


def _mount(path: Path, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    if not _mount(where, "size=100m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _train(tmp_path: Path, store: Path, steps: int) -> subprocess.CompletedProcess:
    args = [FLEET, "train", "--local", "--quiet", "--name", "full", "--steps", str(steps), "--store", str(store),
            "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "run.env=tests.env_double:make",
            "--set", "learner.learning_starts=100", "--set", "agent.batch_size=16",
            "--set", "learner.snapshot_every=20", "--set", "eval.every_updates=0", "--set", "learner.save_replay=false"]
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the env double lives in tests/
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def test_a_full_disk_stops_the_run_with_one_line_and_a_summary_keeping_what_was_stored(tmp_path: Path,
                                                                                       tmpfs: Path) -> None:
    # 100 MB holds one ~64 MB snapshot of the agent, not two.
    proc = _train(tmp_path, tmpfs / "store", steps=100_000)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fleet: error: saving a snapshot") and "No space left" in last and "3 retries" in last
    assert "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "runs" / "full" / "summary.json").read_text())
    assert "No space left" in summary["error"]
    store = SnapshotStore(str(tmpfs / "store"), create=False)
    versions = [m.version for m in store.list()]
    assert versions and store.verify() == []  # every version stored before the disk filled is intact
    assert store.get("latest").manifest.version == versions[-1]
    assert [p for p in (tmpfs / "store").rglob(f"*{TMP_MARK}*")] == []


def test_a_read_only_store_is_refused_at_the_start(tmp_path: Path) -> None:
    where = tmp_path / "ro"
    if not _mount(where, "size=1m", "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = _train(tmp_path, where / "store", steps=300)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot be written" in proc.stderr or "cannot create" in proc.stderr
    assert not (tmp_path / "runs").exists()
