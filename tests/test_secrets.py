"""Credentials in a store URI never reach a log line, a file the run writes, or a manifest (issue 18, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from checkpoint_store.fs import redact
from checkpoint_store.local_s3 import DUMMY_ENV

SECRET = "S3CR3T-must-not-appear"
KEY_ID = "AKIA-KEY-ID-must-not-appear"
# The test server (SeaweedFS, no identities configured) accepts the test suite's dummy pair only.
SERVER_KEY_ID, SERVER_SECRET = DUMMY_ENV["AWS_ACCESS_KEY_ID"], DUMMY_ENV["AWS_SECRET_ACCESS_KEY"]


@pytest.mark.parametrize("uri, shown", [
    (f"s3://{KEY_ID}:{SECRET}@bucket/p?endpoint_override=h:1", "s3://***@bucket/p?endpoint_override=h:1"),
    (f"s3://{KEY_ID}@bucket/p", "s3://***@bucket/p"),
    (f"s3://bucket/p?access_key={KEY_ID}&secret_key={SECRET}&region=x",
     "s3://bucket/p?access_key=***&secret_key=***&region=x"),
    (f"s3://bucket/p?Secret_Key={SECRET}", "s3://bucket/p?Secret_Key=***"),
    ("/a/local/path@v1", "/a/local/path@v1"),
    ("s3://bucket/plain", "s3://bucket/plain"),
])
def test_redact_hides_every_form_of_credential(uri: str, shown: str) -> None:
    assert redact(uri) == shown


def _all_text(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_a_run_on_s3_with_credentials_in_the_uri_writes_them_nowhere(tmp_path: Path, s3_server) -> None:
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    clean = s3_server.uri("secrets-test", prefix)  # a bucket not named like the key id, so grepping means something
    uri = clean.replace("s3://", f"s3://{SERVER_KEY_ID}:{SERVER_SECRET}@", 1)
    fleet = str(Path(sys.executable).parent / "fleet")
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["PYTHONPATH"] = str(repo)  # the env double lives in tests/
    proc = subprocess.run(
        [fleet, "train", "--local", "--steps", "300", "--name", "sec", "--store", uri,
         "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "run.env=tests.env_double:make",
         "--set", "learner.learning_starts=100", "--set", "agent.batch_size=16", "--set", "learner.snapshot_every=40",
         "--set", "eval.every_updates=0", "--set", "run.progress_every_s=0.5"],
        capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "***@" in proc.stdout  # the banner shows the redacted form
    written = _all_text(tmp_path / "runs")
    assert any(name.endswith("summary.json") for name in written)
    fs, base = pafs.FileSystem.from_uri(clean)
    objects = [f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if f.type == pafs.FileType.File]
    assert any(f.path.endswith(".json") for f in objects)  # manifests
    for f in objects:
        with fs.open_input_stream(f.path) as stream:
            written[f.path] = stream.read()
    for text in (SERVER_SECRET, f"{SERVER_KEY_ID}:", f"{SERVER_KEY_ID}@"):
        assert text not in proc.stdout and text not in proc.stderr
        leaks = [name for name, data in written.items() if text.encode() in data]
        assert leaks == [], f"{text} written to {leaks}"
