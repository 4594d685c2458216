"""Credentials in a store URI never reach a log line, a file the run writes, or a manifest (issue 18, item 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from checkpoint_store import fs as store_fs
from checkpoint_store.fs import Root, StoreUriError, probe, redact
from checkpoint_store.local_s3 import DUMMY_ENV
from cluster.runtime import experiment
from cluster.runtime.resume import Resume
from tests.procs import free_ports

SECRET = "S3CR3T-must-not-appear"
KEY_ID = "AKIA-KEY-ID-must-not-appear"
# The test server (SeaweedFS, no identities configured) accepts the test suite's dummy pair only.
SERVER_KEY_ID, SERVER_SECRET = DUMMY_ENV["AWS_ACCESS_KEY_ID"], DUMMY_ENV["AWS_SECRET_ACCESS_KEY"]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("uri, shown", [
    (f"s3://{KEY_ID}:{SECRET}@bucket/p?endpoint_override=h:1", "s3://***@bucket/p?endpoint_override=h:1"),
    (f"s3://{KEY_ID}@bucket/p", "s3://***@bucket/p"),
    (f"s3://bucket/p?access_key={KEY_ID}&secret_key={SECRET}&region=x",
     "s3://bucket/p?access_key=***&secret_key=***&region=x"),
    (f"s3://bucket/p?Secret_Key={SECRET}", "s3://bucket/p?Secret_Key=***"),
    ("/a/local/path@v1", "/a/local/path@v1"),
    ("s3://bucket/plain", "s3://bucket/plain"),
    # An AWS secret may hold '/', '+' and '='; urlsplit ends the host at the first '/' and saw no user info.
    (f"s3://{KEY_ID}:ab/cd+ef=@bucket/prefix", "s3://***@bucket/prefix"),
    ("s3://K:S/with/slash@bucket/p?endpoint_override=h:1", "s3://***@bucket/p?endpoint_override=h:1"),
    (f"s3://{KEY_ID}:{SECRET}/x@bucket/run@2", "s3://***@bucket/run@2"),
    (f"s3://{KEY_ID}:ab%2Fcd%2B@bucket/p", "s3://***@bucket/p"),
    (f"s3://{KEY_ID}:p@ss@bucket/p", "s3://***@bucket/p"),  # an unencoded '@' in the secret: hidden whole
    ("s3://bucket/p?secret_key=ab/cd+ef==&region=x", "s3://bucket/p?secret_key=***&region=x"),
    (f"s3:{KEY_ID}:{SECRET}@bucket/p", "s3:***@bucket/p"),  # no '//': refused, with this in its message
    ("s3://bucket/run@2/p", "s3://bucket/run@2/p"),  # '@' in the path only
    ("file:///tmp/a@b/c", "file:///tmp/a@b/c"),
    ("gs://bucket/p?endpoint_override=h:1&scheme=http", "gs://bucket/p?endpoint_override=h:1&scheme=http"),
])
def test_redact_hides_every_form_of_credential(uri: str, shown: str) -> None:
    assert redact(uri) == shown


@pytest.mark.parametrize("uri", [
    f"s3://{KEY_ID}:{SECRET}@bucket/my run",  # pyarrow: "Cannot parse URI: '<the URI>' ..."
    f"s3://{KEY_ID}:{SECRET}/x@bucket/prefix",  # pyarrow cannot parse an unencoded '/' either
    f"s3://bucket/p?secret_key={SECRET}&access_key={KEY_ID}&bogus=1",  # "Unexpected query parameter"
])
def test_a_store_uri_pyarrow_cannot_open_is_reported_without_its_credentials(uri: str) -> None:
    for open_it in (lambda: Root(uri, create=False), lambda: Root(uri, create=True), lambda: probe(uri, 20.0)):
        with pytest.raises(StoreUriError) as err:
            open_it()
        assert SECRET not in str(err.value) and KEY_ID not in str(err.value), str(err.value)
        assert "***" in str(err.value)


def test_scrub_removes_the_uri_and_each_credential_from_a_message() -> None:
    uri = f"s3://{KEY_ID}:ab%2F{SECRET}@bucket/p?session_token=TOKEN-xyz"
    text = f"failed: {uri}; key {KEY_ID}, secret ab/{SECRET}, token TOKEN-xyz"
    out = store_fs.scrub(text, uri)
    for secret in (KEY_ID, SECRET, "TOKEN-xyz"):
        assert secret not in out, out
    assert "s3://***@bucket/p?session_token=***" in out


@pytest.mark.parametrize("text, uri, version", [
    (f"s3://{KEY_ID}:{SECRET}@bucket", f"s3://{KEY_ID}:{SECRET}@bucket", "latest"),  # was store s3://KEY:SECRET
    (f"s3://{KEY_ID}:{SECRET}@bucket?endpoint_override=h:1", f"s3://{KEY_ID}:{SECRET}@bucket?endpoint_override=h:1",
     "latest"),
    (f"s3://{KEY_ID}:ab/cd@bucket", f"s3://{KEY_ID}:ab/cd@bucket", "latest"),
    (f"s3://{KEY_ID}:{SECRET}@bucket/p@v00000003", f"s3://{KEY_ID}:{SECRET}@bucket/p", "v00000003"),
    (f"s3://{KEY_ID}:ab/cd@bucket/p@best", f"s3://{KEY_ID}:ab/cd@bucket/p", "best"),
    ("s3://bucket/p?endpoint_override=h:1@best", "s3://bucket/p?endpoint_override=h:1", "best"),
    ("s3://bucket@v00000003", "s3://bucket", "v00000003"),
    ("s3://bucket/@best", "s3://bucket/", "best"),
    ("s3://bucket/run@2/p", "s3://bucket/run@2/p", "latest"),
    ("runs/a/snapshots@best", "runs/a/snapshots", "best"),
    ("/abs/store", "/abs/store", "latest"),
])
def test_resume_never_takes_the_credentials_at_sign_for_the_version(text: str, uri: str, version: str) -> None:
    parsed = Resume.parse(text)
    assert (parsed.uri, parsed.version) == (uri, version)
    assert SECRET not in repr(parsed)


def test_the_config_repr_that_actors_and_errors_may_show_holds_no_store_credentials() -> None:
    cfg = experiment.load(None, {"run.store": f"s3://{KEY_ID}:{SECRET}@bucket/p"})
    assert cfg.store_uri().startswith(f"s3://{KEY_ID}:")  # the actors still get the real URI
    assert SECRET not in repr(cfg) and SECRET not in repr(cfg.run) and SECRET not in str(cfg.public_dict())


def _fleet(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`fleet ARGS` from this checkout (python -m: the installed script may import another one)."""
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.mark.parametrize("flag, uri", [
    ("--store", f"s3://{KEY_ID}:{SECRET}@bucket/my run"),  # the start-up store check printed pyarrow's text
    ("--store", f"s3://{KEY_ID}:{SECRET}/x@bucket/p"),  # redact missed the user info
    ("--resume", f"s3://{KEY_ID}:{SECRET}@bucket?endpoint_override=127.0.0.1:{{port}}&scheme=http"),  # store KEY:SECRET
    ("--resume", f"s3://{KEY_ID}:{SECRET}@bucket/my run"),
])
def test_fleet_train_with_a_bad_credential_uri_fails_in_one_line_without_the_secret(
        tmp_path: Path, flag: str, uri: str) -> None:
    (port,) = free_ports(1)  # nothing listens there: refused at once
    proc = _fleet("train", "--local", flag, uri.format(port=port), "--set", f"run.runs_dir={tmp_path / 'runs'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for text in (SECRET, f"{KEY_ID}:"):
        assert text not in proc.stdout and text not in proc.stderr, proc.stdout + proc.stderr


def _all_text(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_a_run_on_s3_with_credentials_in_the_uri_writes_them_nowhere(tmp_path: Path, s3_server) -> None:
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    clean = s3_server.uri("secrets-test", prefix)  # a bucket not named like the key id, so grepping means something
    uri = clean.replace("s3://", f"s3://{SERVER_KEY_ID}:{SERVER_SECRET}@", 1)
    repo = REPO
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["PYTHONPATH"] = str(repo)  # the env double lives in tests/
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "train", "--local", "--steps", "300", "--name", "sec", "--store", uri,
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


FILE_KEY_ID, FILE_SECRET = "fleet-file-key", "fleet-file-secret/with+slash="


@pytest.fixture(scope="module")
def s3_with_identity(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS that accepts only FILE_KEY_ID / FILE_SECRET (the session's server accepts anyone)."""
    from checkpoint_store.local_s3 import SeaweedS3, find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found")
    server = SeaweedS3(workdir=tmp_path_factory.mktemp("weed-id"), identities={FILE_KEY_ID: FILE_SECRET})
    server.start()
    yield server
    server.stop()


@pytest.mark.integration
def test_credentials_from_a_shared_credentials_file_reach_the_store_and_appear_nowhere(
        tmp_path: Path, s3_with_identity) -> None:
    """The documented way (docs/security.md): AWS_SHARED_CREDENTIALS_FILE (or ~/.aws/credentials) and
    AWS_PROFILE, read by the AWS SDK inside pyarrow; the URI and every command line carry no secret."""
    creds = tmp_path / "credentials"
    creds.write_text(f"[fleet]\naws_access_key_id = {FILE_KEY_ID}\naws_secret_access_key = {FILE_SECRET}\n")
    creds.chmod(0o600)
    uri = s3_with_identity.uri("credfile", f"p-{uuid.uuid4().hex[:8]}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1", HOME=str(tmp_path),
                PYTHONPATH=str(REPO))
    with_file = {**base, "AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "fleet"}
    put = ("import sys; from checkpoint_store.fs import probe; from checkpoint_store.store import SnapshotStore; "
           "probe(sys.argv[1]); print(SnapshotStore(sys.argv[1]).put({'a': {'x': 1}}).version)")
    wrong = tmp_path / "wrong"
    wrong.write_text(f"[fleet]\naws_access_key_id = {FILE_KEY_ID}\naws_secret_access_key = not-the-secret\n")
    for env in (base, {**with_file, "AWS_SHARED_CREDENTIALS_FILE": str(wrong)}):  # the server does check
        denied = subprocess.run([sys.executable, "-c", put, uri], capture_output=True, text=True, timeout=120,
                                cwd=REPO, env=env)
        assert denied.returncode != 0 and "StoreUriError" in denied.stderr, denied.stderr[-2000:]
    stored = subprocess.run([sys.executable, "-c", put, uri], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=with_file)
    version = stored.stdout.strip()
    assert stored.returncode == 0 and re.fullmatch(r"v00000001-[0-9a-f]{8}", version), stored.stderr[-2000:]
    listed = _fleet("snapshots", "list", uri, env=with_file)
    assert listed.returncode == 0 and version in listed.stdout, listed.stderr[-2000:]
    for proc in (stored, listed):
        assert FILE_SECRET not in proc.stdout + proc.stderr
