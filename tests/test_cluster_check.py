"""`make cluster-check` end to end: a real `ray up` of cluster/loopback.yaml over SSH on 127.0.0.1-3, a
training job, an evaluation job, a stopped job, `ray down` (cluster/cluster_check.py). About 6 minutes on a
2-core machine. It needs root, openssh-server and rsync (.ci/run installs the packages on CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cluster_check import Machine, listeners_outside_loopback

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (adds a user, starts sshd on 127.0.0.1-3:22)"
    for tool in ("/usr/sbin/sshd", "rsync", "ssh", "runuser", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} missing: apt-get install openssh-server rsync (.ci/run does)"
    if not Path(Machine.system_python()).exists():
        return f"{Machine.system_python()} missing"
    return None


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_ray_up_train_evaluate_stop_down(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.cluster_check", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    (result_file,) = tmp_path.glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert proc.returncode == 0 and result["ok"], result.get("error")
    assert result["nodes"] == ["node-127.0.0.1", "node-127.0.0.2", "node-127.0.0.3"]
    assert all(v["total"] > 0 and v["outside_loopback"] == [] for v in result["listeners"].values())
    assert result["auth"] == {"gcs_wrong_token_refused": True, "job_server_no_token": 401, "job_server_token": 200}
    placement = result["train"]["placement"]
    assert placement["learner"] == placement["replay"] == "node-127.0.0.1"
    assert set(placement["workers"]) <= {"node-127.0.0.2", "node-127.0.0.3"} and placement["workers"]
    assert result["train"]["updates"] > 0 and result["evaluate"]["episodes"] == 2
    assert result["stop"]["interrupted"] is True and result["stop"]["final_snapshot"]
    assert result["left_after_down"] == []
    # Everything the check made is gone: the user (with its key, token and environment) and the SSH server.
    assert subprocess.run(["id", "fleetcheck"], capture_output=True).returncode != 0


def test_listener_filter_flags_wildcards_and_public_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loopback check itself: a wildcard or a routable address of one of the given processes is
    reported, loopback (IPv4, IPv6, v4-mapped) is not, and other processes' sockets are ignored."""
    lines = [
        'LISTEN 0 128 127.0.0.2:22 0.0.0.0:* users:(("sshd",pid=10,fd=4))',
        'LISTEN 0 4096 [::ffff:127.0.0.1]:6379 *:* users:(("gcs_server",pid=11,fd=4))',
        'LISTEN 0 4096 [::1]:8265 [::]:* users:(("python",pid=11,fd=5))',
        'LISTEN 0 4096 *:22001 *:* users:(("raylet",pid=12,fd=40))',
        'LISTEN 0 5 0.0.0.0:22003 0.0.0.0:* users:(("agent",pid=12,fd=34))',
        'LISTEN 0 128 192.0.2.2:22005 0.0.0.0:* users:(("agent",pid=12,fd=38))',
        'LISTEN 0 128 0.0.0.0:2024 0.0.0.0:* users:(("other",pid=99,fd=3))',
    ]

    class Fake:
        stdout = "\n".join(lines)

    monkeypatch.setattr("cluster.cluster_check.run", lambda *a, **k: Fake())
    outside, seen = listeners_outside_loopback({10, 11, 12})
    assert seen == 6
    assert [line.split()[3] for line in outside] == ["*:22001", "0.0.0.0:22003", "192.0.2.2:22005"]
