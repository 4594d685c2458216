"""Regression test for the failure this project replaces: once learning starts, the agent stands still.

A short in-process run on the embedded simulator (the runtime `fleet train --local` uses), then the
final snapshot's deterministic policy is driven on held-out seeds. On the code before the fix the
actor's tanh saturated at (-1, -1), full left and full brake, within a few dozen updates and never
came back (no gradient through a saturated tanh): speed 0.0 m/s, route completion 0.00.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoint_store.store import SnapshotStore
from cluster.runtime import experiment
from cluster.runtime.envs import make_factory
from cluster.runtime.training import train
from learner.networks import POLICY_COMPONENTS, Policy
from rollout_workers.scripted import run_episodes

pytestmark = pytest.mark.slow


def test_after_a_short_run_the_deterministic_policy_drives_instead_of_standing_still(tmp_path):
    cfg = experiment.load(None, {
        "run.name": "learn", "run.runs_dir": str(tmp_path), "run.workers": 1, "run.seed": 0,
        "run.total_env_steps": 2200, "run.collect_steps": 50, "learner.learning_starts": 1000,
        "learner.replay_ratio": 0.5, "learner.snapshot_every": 0, "learner.save_replay": False,
        "agent.batch_size": 32, "replay.capacity": 5000, "eval.every_updates": 0,
    })
    summary = train(cfg, local=True, quiet=True)
    assert summary["learner_updates"] >= 550
    snap = SnapshotStore(cfg.store_uri()).get("latest", components=list(POLICY_COMPONENTS))
    policy = Policy(cfg.network)
    policy.load_components({name: snap.state[name] for name in POLICY_COMPONENTS})

    observations = []

    def act(obs):
        observations.append(obs)
        return policy.act(obs["image"], obs["vector"])

    episodes = run_episodes(make_factory(cfg, 0), act, cfg.eval.seeds(3))
    with torch.no_grad():
        image = torch.as_tensor(np.stack([o["image"] for o in observations]))
        vector = torch.as_tensor(np.stack([o["vector"] for o in observations]))
        pre = policy.actor.preact(policy.actor_cnn(image), vector)
    # Not pinned in a corner of the action box: the seed's actor sat at pre-tanh about -100.
    assert (pre.abs() > 5).float().mean() < 0.5, pre.abs().mean(0)
    speed = float(np.mean([e["mean_speed"] for e in episodes]))
    progress = float(np.mean([e["route_completion"] for e in episodes]))
    # Before the fix: 0.03 m/s and 0.002 (the start speed braked away); after about 600 updates the
    # fixed agent drives, though not yet well (it leaves the road after 10-15 steps at this point).
    assert speed > 1.0, episodes
    assert progress > 0.005, episodes
