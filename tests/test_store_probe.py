"""A store that cannot be written fails a run at its start, in seconds, in one line (issue 18, items 3 and 6)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoint_store.fs import Root, StoreUriError, probe
from tests.procs import silent_server

FLEET = [sys.executable, "-m", "cluster.cli"]
"""`fleet` from this checkout (run from REPO): the installed script may import another checkout."""
REPO = Path(__file__).resolve().parents[1]


def test_probe_of_a_writable_store_leaves_nothing_behind(tmp_path: Path) -> None:
    probe(str(tmp_path / "store"))
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_probe_of_an_s3_server_that_never_answers_fails_at_its_timeout_naming_the_redacted_uri() -> None:
    # A server that accepts and stays silent: a refused port failed fast even without the timeout.
    with silent_server() as port:
        uri = f"s3://KEYID:SECRETKEY@bucket/p?endpoint_override=127.0.0.1:{port}&scheme=http"
        start = time.monotonic()
        with pytest.raises(StoreUriError, match="did not answer within 3 s") as err:
            probe(uri, timeout_s=3.0)
        assert time.monotonic() - start < 60.0  # the AWS SDK alone retried for about 100 s
    message = str(err.value)
    assert "s3://***@bucket/p" in message and "SECRETKEY" not in message and "KEYID" not in message
    assert "\n" not in message


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    root = Root(str(tmp_path / "store"))

    with pytest.raises(TypeError):
        root.write_atomic("versions/v1.json", object())  # type: ignore[arg-type]  # fails mid-write
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_fleet_train_on_a_store_that_is_a_file_exits_2_before_training(tmp_path: Path) -> None:
    store = tmp_path / "a-file"
    store.write_text("not a directory")
    proc = subprocess.run([*FLEET, "train", "--local", "--store", str(store), "--set", f"run.runs_dir={tmp_path / 'runs'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists()
