"""Multi-node placement on a local `ray.cluster_utils.Cluster`: where each actor of a run lands.

The production layout (docs/cluster.md): one GPU node holds the learner and the replay, CARLA nodes
advertise the `carla` resource and hold every rollout worker. Here the GPU is simulated (torch computes
on the CPU) and the CARLA servers are replaced by the test double env.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkpoint_store.store import SnapshotStore
from cluster.runtime import experiment
from cluster.runtime.training import train

REPO = Path(__file__).resolve().parents[1]
WORKERS = 4


@dataclass
class Nodes:
    address: str
    gpu: str
    carla: tuple[str, str]


@pytest.fixture
def three_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Nodes]:
    """A CARLA node as head, a second CARLA node, and a GPU node; the driver connected to the head.

    The head is a CARLA node, not the GPU node, on purpose: Ray prefers the driver's node, so an actor
    that forgot its GPU or `carla` request would land there or nearby, and the assertions catch it.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Cluster writes (and on shutdown deletes) <ray temp dir>/ray_current_cluster, which other people's
    # `ray.init(address="auto")` on this machine read: keep it, and the sockets, in a short private dir.
    tmp = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster()
    try:
        head = cluster.add_node(num_cpus=2, resources={"carla": 2}, include_dashboard=False)
        other = cluster.add_node(num_cpus=2, resources={"carla": 2})
        gpu = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        yield Nodes(cluster.address, gpu.node_id, (head.node_id, other.node_id))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    assert not ray.is_initialized()


@pytest.mark.integration
def test_workers_on_carla_nodes_learner_and_replay_on_the_gpu_node(tmp_path: Path, three_nodes: Nodes) -> None:
    import ray

    assert ray.cluster_resources().get("GPU") == 1
    assert ray.cluster_resources().get("carla") == 4
    cfg = experiment.load(None, {
        "run.name": "placement", "run.runs_dir": str(tmp_path / "runs"), "run.store": str(tmp_path / "store"),
        "run.env": "tests.env_double:make", "run.workers": WORKERS, "run.worker_resource": "carla",
        "run.ray_address": three_nodes.address, "run.total_env_steps": 800, "run.collect_steps": 50,
        "run.progress_every_s": 1.0, "agent.batch_size": 16, "learner.learning_starts": 400,
        "learner.replay_ratio": 0.05, "learner.snapshot_every": 20, "learner.publish_every": 10,
        "replay.capacity": 5000, "eval.every_updates": 0,
    })
    summary = train(cfg, quiet=True)

    placement = summary["placement"]
    assert placement["learner"] == three_nodes.gpu
    assert placement["replay"] == three_nodes.gpu
    assert len(placement["workers"]) == WORKERS
    assert set(placement["workers"]) <= set(three_nodes.carla), placement
    # Two `carla` units per node and four workers: both CARLA nodes are full.
    assert sorted(placement["workers"].count(n) for n in three_nodes.carla) == [2, 2]
    # The run itself worked on that layout.
    assert summary["env_steps"] >= 800
    assert summary["learner_updates"] > 0
    assert SnapshotStore(cfg.store_uri()).get("latest").manifest.learner_updates == summary["learner_updates"]
