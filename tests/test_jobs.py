"""The README's cluster workflow on a real local head: `ray start --head`, then jobs through the job server.

Train, resume, evaluate, each submitted with `JobSubmissionClient` the way `ray job submit --working-dir .`
submits them. The head runs in its own process group and temp dir, on free ports, so other Ray
clusters on this machine are never touched; it is stopped by signalling that group only.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkpoint_store.store import SnapshotStore
from tests.procs import free_ports

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What `--working-dir .` must not upload (Ray also honours .gitignore; listed so the test does not rely on it).
EXCLUDES = [".venv", ".git", "runs", ".hypothesis", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
# The small numbers of tests/test_runtime.py: warm-up 400 steps, then one update per 4 env steps.
SMALL = ["run.collect_steps=50", "run.progress_every_s=5", "agent.batch_size=16", "learner.learning_starts=400",
         "learner.replay_ratio=0.25", "learner.snapshot_every=40", "learner.publish_every=10",
         "replay.capacity=5000", "embedded.max_episode_steps=100", "eval.every_updates=0"]
JOB_TIMEOUT_S = 300


def free_range(size: int, avoid: set[int]) -> int:
    """First port of `size` consecutive free ports below the kernel's ephemeral range."""
    for _ in range(50):
        base = random.randrange(10_000, 30_000 - size)
        span = range(base, base + size)
        if avoid.isdisjoint(span) and all(_bindable(p) for p in span):
            return base
    raise RuntimeError(f"no {size} consecutive free ports found between 10000 and 30000")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (read from /proc, so no name matching)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # After the command name (which may hold spaces): state, parent, group. A zombie has exited and
        # only waits for its parent (init, in a container that may never reap it).
        state, _, group = stat.rpartition(")")[2].split()[:3]
        if int(group) == pgid and state != "Z":
            out.append(int(entry.name))
    return out


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` (our private temp dir: every process of our head has it)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # A zombie's cmdline is empty, so it never matches.
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(entry.name))
    return out


@dataclass
class Head:
    proc: subprocess.Popen
    address: str
    token: str
    temp_dir: str
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def stop_head(head: Head, grace_s: float = 20.0) -> None:
    """SIGTERM to the head's process group, a grace period, then SIGKILL: never `ray stop` (all clusters)."""
    pgid = head.proc.pid  # start_new_session made the `ray start` process its group's leader
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_members(pgid):
        if head.proc.poll() is None:
            try:
                head.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.proc.wait(timeout=30)


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    """A Ray head started by `ray start --head --block`, every port chosen free, stopped at the end."""
    pytest.importorskip("ray.job_submission")
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path is too long for Ray's session dir.
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    (gcs, dash, client, node_mgr, obj_mgr, agent_http, agent_grpc, env_agent, metrics) = free_ports(9)
    workers = free_range(100, {gcs, dash, client, node_mgr, obj_mgr, agent_http, agent_grpc, env_agent, metrics})
    cmd = [str(BIN / "ray"), "start", "--head", "--block",
           "--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--min-worker-port", str(workers), "--max-worker-port", str(workers + 99),
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--temp-dir", temp_dir, "--num-cpus", "4", "--num-gpus", "0",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    # Jobs inherit this environment: the venv's `fleet` must be on PATH (on a cluster the node's setup
    # installs it), and no RAY_ADDRESS of ours may leak into the head. Ray 2.60 turns token auth on
    # whenever ~/.ray/auth_token exists; the head gets a private token instead of that shared file.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "PYTHONPATH", "RAY_AUTH_TOKEN_PATH")}
    token = secrets.token_hex(32)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               # SIGTERM would first drain the node for Ray Serve (30 s by default); there is nothing to drain.
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    log = tmp_path / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    h = Head(proc, f"http://127.0.0.1:{dash}", token, temp_dir, log)
    try:
        wait_for_job_server(h, timeout_s=180)
        yield h
    finally:
        try:
            stop_head(h)
        finally:
            leftovers = group_members(proc.pid) + processes_mentioning(temp_dir)
            for pid in leftovers:  # ours by their private temp dir; nobody else's process names it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"processes of the head outlived SIGTERM + SIGKILL of its group: {leftovers}"


def wait_for_job_server(head: Head, timeout_s: float) -> None:
    """Until the job server lists jobs (the dashboard answers /api/version a little earlier)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.proc.returncode}:\n{head.log_tail()}")
        try:
            request = urllib.request.Request(f"{head.address}/api/jobs/", headers=head.headers())
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(1.0)
    pytest.fail(f"job server at {head.address} did not answer in {timeout_s:.0f} s ({last}):\n{head.log_tail()}")


def submit(client, entrypoint: str, runtime_env: dict, timeout_s: float = 120.0) -> str:
    """`submit_job`, retried while the head's job agent is not up yet (the job server answers earlier)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:
            # "No available agent to submit job, please try again later": no job was created.
            if "try again later" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(2.0)


def run_job(client, argv: list[str]) -> str:
    """Submit `argv` as a job on the repository as working dir; wait for SUCCEEDED; return its logs.

    The entrypoint is `fleet ...`, the command the README submits: on a cluster node and here it is the
    console script of the environment Ray runs in, and it imports this repository from the uploaded
    working dir (Ray puts that on the job's PYTHONPATH), so the job runs the code under test.
    """
    from ray.job_submission import JobStatus

    job_id = submit(client, shlex.join(["fleet", *argv]), {"working_dir": str(REPO), "excludes": EXCLUDES})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, (
        f"job {job_id} ({shlex.join(argv)}) is {status} after up to {JOB_TIMEOUT_S} s; "
        f"info: {client.get_job_info(job_id).message}\nlogs:\n{logs[-6000:]}")
    return logs


def train_args(tmp_path: Path, name: str, steps: int, *extra: str) -> list[str]:
    sets = [*SMALL, "run.ray_address=auto", f"run.runs_dir={tmp_path / 'runs'}"]
    return ["train", "--env", "embedded", "--workers", "2", "--steps", str(steps), "--name", name, *extra,
            *(arg for item in sets for arg in ("--set", item))]


@pytest.mark.integration
def test_train_resume_evaluate_as_jobs_on_a_local_head(tmp_path: Path, head: Head) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.address, headers=head.headers())
    store_uri = str(tmp_path / "store")
    store = SnapshotStore(store_uri)

    logs = run_job(client, train_args(tmp_path, "job1", 1200, "--store", store_uri))
    # A healthy run raises no false alarm (issue 17): Ray's start-up chatter goes to runs/<name>/ray.log.
    alarms = [line for line in logs.splitlines() if "ERROR" in line or "WARNING" in line]
    assert alarms == [], alarms
    first = json.loads((tmp_path / "runs" / "job1" / "summary.json").read_text())
    assert not first["interrupted"]
    assert first["env_steps"] >= 1200 and first["learner_updates"] > 0
    assert len(first["placement"]["workers"]) == 2 and first["resumed_from"] is None
    latest = store.manifest("latest")
    assert latest.version == first["final_snapshot"]
    assert (latest.env_steps, latest.learner_updates) == (first["env_steps"], first["learner_updates"])

    # The budget counts from the restored counters (workers overshoot a short run's budget, so it is
    # set from where the first job really ended).
    budget = first["env_steps"] + 600
    run_job(client, train_args(tmp_path, "job2", budget, "--resume", store_uri))
    second = json.loads((tmp_path / "runs" / "job2" / "summary.json").read_text())
    assert second["resumed_from"] == f"{store_uri}@latest"
    assert second["env_steps"] >= budget
    assert second["learner_updates"] > first["learner_updates"]
    latest = store.manifest("latest")
    assert latest.version == second["final_snapshot"] != first["final_snapshot"]
    assert (latest.env_steps, latest.learner_updates) == (second["env_steps"], second["learner_updates"])
    # Counters continue rather than restart: every version the second job wrote (into the same store,
    # as --resume without --store implies) starts from where the first job ended.
    written = [m for m in store.list() if m.version > first["final_snapshot"]]
    assert written
    assert all(m.env_steps >= first["env_steps"] and m.learner_updates > first["learner_updates"]
               for m in written), [(m.version, m.env_steps, m.learner_updates) for m in written]

    out = tmp_path / "eval"
    ref = f"{store_uri}@{second['final_snapshot']}"
    logs = run_job(client, ["evaluate", "--snapshot", ref, "--workers", "2", "--episodes", "3", "--json",
                            "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["snapshot"] == ref
    assert len(report["episodes"]) == 3
    assert sorted(ep["seed"] for ep in report["episodes"]) == sorted({ep["seed"] for ep in report["episodes"]})
    assert all(0.0 <= ep["route_completion"] <= 1.0 for ep in report["episodes"])
    assert 0.0 <= report["mean_route_completion"] <= 1.0
    assert 0.0 <= report["driving_score"] <= report["mean_route_completion"] + 1e-9
    assert (out / "report.png").stat().st_size > 0
    assert f'"snapshot": "{ref}"' in logs  # --json printed the report to the job's output
