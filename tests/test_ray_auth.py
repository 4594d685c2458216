"""A local run's Ray: every service it starts listens on loopback only, it turns away a client that
lacks the run's token, and RAY_AUTH_MODE=disabled is refused unless the user says so
(issue 30, item 2; docs/security.md)."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVE = ("import sys, ray\n"
         "from cluster.runtime.ray_setup import init_ray\n"
         "init_ray(num_cpus=1, allow_without_auth=len(sys.argv) > 1)\n"
         "ray.get(ray.remote(lambda: 1).remote())  # a worker process too\n"
         "print(ray.get_runtime_context().gcs_address, flush=True)\n"
         "sys.stdin.read()\n")
# A client of a loopback-only instance keeps 127.0.0.1 too (Ray would otherwise dial the machine's address).
JOIN = ("import sys\n"
        "from cluster.runtime import loopback_ray\n"
        "loopback_ray.install()\n"
        "import ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "print('joined', ray.cluster_resources().get('CPU'))\n")


def _join(address: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", JOIN, address], capture_output=True, text=True, timeout=180,
                          env=full, cwd=REPO)


def _tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    seen, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            seen.add(child)
            stack.append(child)
    return seen


def _listeners(pids: set[int]) -> list[str]:
    """The local addresses of every listening TCP socket of `pids`."""
    out = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            out.append(line.split()[3])
    return out


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', a wildcard
        return False


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SERVE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.mark.integration
def test_a_local_runs_ray_listens_on_loopback_and_turns_away_a_client_without_its_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # what fleet does by default
    server = _serve(env)
    try:
        address = server.stdout.readline().strip()
        assert address and ":" in address, server.stderr.read()[-2000:] if server.poll() is not None else address
        assert address.startswith("127.0.0.1:")
        # GCS, raylet, object manager, agents, metrics, the worker: all on loopback, none on a wildcard or
        # the machine's own address (Ray's default for a local instance was every interface).
        listeners = _listeners(_tree(server.pid))
        assert len(listeners) >= 5, listeners
        assert [a for a in listeners if not _is_loopback(a)] == []

        stranger = _join(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-this-runs-token",
                         HOME=str(tmp_path))
        assert stranger.returncode != 0 and "joined" not in stranger.stdout
        assert "auth" in (stranger.stderr + stranger.stdout).lower()

        # The same client with the token the run created (~/.ray/auth_token) gets in: the refusal was the token.
        member = _join(address, RAY_AUTH_MODE="token")
        assert member.returncode == 0 and "joined" in member.stdout, member.stderr[-2000:]
    finally:
        server.stdin.close()
        server.wait(timeout=120)


def test_ray_auth_mode_disabled_is_refused_without_the_flag(tmp_path: Path) -> None:
    """RAY_AUTH_MODE=disabled in a user's environment would start a Ray that any local user can drive:
    `fleet train` says so in one line and exits 2 before starting anything."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "--steps", "10", "--name", "refused",
                           "--set", f"run.runs_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "RAY_AUTH_MODE=disabled" in proc.stderr and "--allow-ray-without-auth" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "refused" / "snapshots").exists()


@pytest.mark.integration
def test_ray_auth_mode_disabled_with_the_flag_still_listens_on_loopback_only() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    server = _serve(env, "allow")
    try:
        address = server.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), server.stderr.read()[-2000:] if server.poll() is not None else address
        listeners = _listeners(_tree(server.pid))
        assert listeners and [a for a in listeners if not _is_loopback(a)] == []
    finally:
        server.stdin.close()
        server.wait(timeout=120)
