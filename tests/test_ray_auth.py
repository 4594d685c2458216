"""A local run's Ray services listen on every interface (Ray cannot bind its gRPC servers to loopback),
so they must turn away a client that lacks the run's token (issue 18, item 8; docs/security.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVE = ("import sys, ray\n"
         "from cluster.runtime import init_ray\n"
         "init_ray(num_cpus=1)\n"
         "print(ray.get_runtime_context().gcs_address, flush=True)\n"
         "sys.stdin.read()\n")
JOIN = ("import sys, ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "print('joined', ray.cluster_resources().get('CPU'))\n")


def _join(address: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", JOIN, address], capture_output=True, text=True, timeout=180,
                          env=full, cwd=REPO)


def test_a_local_runs_ray_turns_away_a_client_without_its_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # what fleet does by default
    server = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        address = server.stdout.readline().strip()
        assert address and ":" in address, server.stderr.read()[-2000:] if server.poll() is not None else address
        host = address.rsplit(":", 1)[0]
        assert host not in ("127.0.0.1", "localhost")  # reachable from other hosts: the token is what guards it

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
