"""The RLlib peer of `fleet bench learning` (issue 28): RLlib's SAC builds on the contract's Dict observation
with the encoder written for it, trains, and acts deterministically in range."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
rllib = pytest.importorskip("ray.rllib")


def test_rllib_sac_trains_on_the_dict_observation_and_acts_in_range(tmp_path) -> None:
    import ray

    from cluster.bench.peers import rllib_sac
    from cluster.runtime import experiment
    from rollout_workers.envs.embedded import make_env

    cfg = experiment.load(None, {"learner.learning_starts": 64, "agent.batch_size": 16, "replay.capacity": 2000,
                                 "embedded.max_episode_steps": 50})
    algo = rllib_sac.build(cfg, seed=0)
    try:
        module = algo.get_module()
        assert isinstance(module.pi_encoder, rllib_sac.TorchImageVectorEncoder)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        for _ in range(3):
            result = algo.train()
        trained = algo.get_module().state_dict()
        assert any(not np.array_equal(before[k].numpy(), trained[k].numpy()) for k in before), result
        act = rllib_sac.deterministic_policy(algo.get_module())
        env = make_env(cfg.embedded, seed=1)
        obs, _ = env.reset(seed=1)
        action = act(obs)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
        assert np.array_equal(action, act(obs))  # deterministic
        env.close()
    finally:
        algo.stop()
        ray.shutdown()
