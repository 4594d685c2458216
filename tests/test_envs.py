"""Env factories and the one CARLA_HOSTS policy: server claims per node, custom factories."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

from rollout_workers.carla import server as carla_server
from rollout_workers.envs import factory


def test_each_worker_process_claims_a_different_carla_server(monkeypatch, tmp_path):
    monkeypatch.setenv("CARLA_HOSTS", "127.0.0.1:42000,127.0.0.1:42010")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = ("import sys, time; from rollout_workers.carla.server import claim_carla_host as claim; "
            "e = claim(int(sys.argv[1])); print((e.host, e.port), flush=True); time.sleep(3)")
    # Both processes start from index 0: the second must get the other server, not a shared one.
    procs = [subprocess.Popen([sys.executable, "-c", code, "0"], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    lines = sorted(p.stdout.readline().strip() for p in procs)
    for p in procs:
        p.wait(timeout=30)
    assert lines == ["('127.0.0.1', 42000)", "('127.0.0.1', 42010)"]


def test_no_free_carla_server_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CARLA_HOSTS", "127.0.0.1:42100")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # gettempdir() caches its first answer
    holder = subprocess.Popen(
        [sys.executable, "-c", "from rollout_workers.carla.server import claim_carla_host as claim; import time; "
         "e = claim(0); print((e.host, e.port), flush=True); time.sleep(5)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "('127.0.0.1', 42100)"
    monkeypatch.setattr(carla_server, "_claims", {})
    with pytest.raises(RuntimeError, match="driven by other workers"):
        carla_server.claim_carla_host(0)
    holder.kill()
    holder.wait()


def test_custom_factory_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="package.module:function"):
        factory.import_factory("nocolon")
    with pytest.raises(ValueError, match="cannot import"):
        factory.import_factory("tests.env_double:missing")
    env = factory.EnvFactory("tests.env_double:make", None)(3)
    obs, _ = env.reset(seed=3)
    assert obs["image"].shape == (4, 84, 84)
