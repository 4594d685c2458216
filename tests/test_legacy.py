"""Importing checkpoints of the replaced system: success, and the refusal of files without CNN weights."""

from __future__ import annotations

import pytest
import torch
from test_store import assert_same, trained_agent

from checkpoint_store.store import SnapshotStore
from cluster.cli import main
from learner.td3 import NETWORKS, TD3Agent, TD3Config


def legacy_file(tmp_path, with_cnn: bool = True, waypoints_agent: TD3Agent | None = None):
    """A .pth as the old system wrote it: plain dicts of tensors, integer optimizer ids, no targets."""
    src = waypoints_agent or trained_agent(seed=5, updates=2, actor_encoder="own")  # the old system's design
    ckpt = {f"{n}_state_dict": {k: v.clone() for k, v in getattr(src, n).state_dict().items()} for n in NETWORKS}
    for n in ("actor", "critic"):
        ckpt[f"{n}_optimizer_state_dict"] = getattr(src, f"{n}_optimizer").state_dict()
    ckpt.update(total_it=src.total_it.value, config={"discount": 0.98, "lr": 1e-4}, tau=0.01)
    if not with_cnn:
        ckpt["actor_cnn_state_dict"] = None
        del ckpt["critic_cnn_state_dict"]
    path = tmp_path / "legacy.pth"
    torch.save(ckpt, path)
    return path, src


def test_import_legacy_loads_networks_optimizers_and_counter(tmp_path, capsys):
    path, src = legacy_file(tmp_path)
    store_dir = str(tmp_path / "store")
    assert main(["import-legacy", str(path), "--store", store_dir, "--tag", "legacy"]) == 0
    assert "imported" in capsys.readouterr().out
    snap = SnapshotStore(store_dir, create=False).get("legacy")
    agent = TD3Agent(TD3Config(device="cpu", seed=9, actor_encoder="own"))
    agent.load_state(snap.state)
    for n in NETWORKS:
        assert_same(getattr(src, n).state_dict(), getattr(agent, n).state_dict())
        assert_same(getattr(src, n).state_dict(), getattr(agent, f"{n}_target").state_dict())
    assert_same(src.state()["actor_optimizer"], agent.state()["actor_optimizer"])
    assert agent.total_it.value == src.total_it.value == 2
    notes = " | ".join(snap.manifest.notes)
    assert "actor_cnn_target copied from actor_cnn" in notes and "actor_cnn_optimizer: not in the file" in notes
    assert snap.manifest.config["hyperparameters"] == {"gamma": 0.98, "actor_lr": 1e-4, "critic_lr": 1e-4,
                                                       "tau": 0.01}


def test_file_without_cnn_weights_is_refused_unless_allowed(tmp_path, capsys):
    path, _ = legacy_file(tmp_path, with_cnn=False)
    store_dir = str(tmp_path / "store")
    assert main(["import-legacy", str(path), "--store", store_dir]) == 2
    err = capsys.readouterr().err
    assert "CNN weights are missing or None" in err and "actor_cnn_state_dict" in err
    assert "--allow-missing-cnn" in err
    assert SnapshotStore(store_dir).list() == []
    assert main(["import-legacy", str(path), "--store", store_dir, "--allow-missing-cnn"]) == 0
    assert "freshly initialised" in " ".join(SnapshotStore(store_dir).manifest().notes)


def test_vector_size_is_inferred_from_the_actor(tmp_path):
    from learner.networks import NetworkConfig

    small = TD3Agent(TD3Config(device="cpu"), NetworkConfig(waypoints=4))
    path, _ = legacy_file(tmp_path, waypoints_agent=small)
    store_dir = str(tmp_path / "store")
    assert main(["import-legacy", str(path), "--store", store_dir]) == 0
    snap = SnapshotStore(store_dir).get("latest", components=["actor"])
    assert snap.state["actor"]["fc1.weight"].shape[1] == 512 + 11
    assert snap.manifest.config["vector_dim"] == 11


def test_files_that_are_not_legacy_checkpoints_are_named_in_one_clear_line(tmp_path):
    from learner.legacy import LegacyImportError, load_legacy

    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("hello\n")
    with pytest.raises(LegacyImportError, match="empty.pth is empty"):
        load_legacy(tmp_path / "empty.pth")
    with pytest.raises(LegacyImportError, match=r"text.pth is not a readable torch checkpoint .*\.pth file") as err:
        load_legacy(tmp_path / "text.pth")
    assert "\n" not in str(err.value) and "pop from empty list" not in str(err.value)
