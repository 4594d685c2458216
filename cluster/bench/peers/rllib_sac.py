"""RLlib's SAC on its new API stack (`rllib-sac`), the peer a Ray user would pick, on the embedded simulator.

RLlib's catalogs build encoders for 1D, 2D and 3D Box observations only; the contract's observation is a
Dict of four stacked 84x84 frames and a 23-value vector. What had to be written for it, and nothing more:
- `ImageVectorEncoderConfig` / `TorchImageVectorEncoder`: the seed's Nature CNN (learner/networks.py) on the
  frames, its 512 features beside the vector, one ReLU layer to RLlib's latent size (`fcnet_hiddens[-1]`);
- `FleetSACCatalog`: SAC's catalog with that encoder for Dict observations. RLlib builds everything else as
  it does for any SAC: the policy head, the twin Q encoders (this encoder and one for the action, fused) and
  heads, the target networks, the squashed Gaussian, the entropy temperature.

The class defaults hold but for what `rllib_arguments` lists: the replay's capacity, the batch, the replay
ratio (as `training_intensity`, see `training_intensity` for how RLlib reads it) and the warm-up length, as
ours. One env runner process samples; the learner runs in the driver process, on our learner's torch
threads and MKL kernels (`learning_run.peer_threads`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.algorithms.sac.sac_catalog import SACCatalog
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ENCODER_OUT, Encoder
from ray.rllib.core.models.configs import ModelConfig
from ray.rllib.core.models.torch.base import TorchModel
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from torch import nn

from cluster.runtime.config import to_dict
from cluster.runtime.experiment import ExperimentConfig
from learner.networks import NatureCNN


@dataclass
class ImageVectorEncoderConfig(ModelConfig):
    """Frames through a Nature CNN, its features beside the vector, to a latent of `output_layer_dim`."""

    vector_dim: int = 23
    frames: int = 4
    feature_dim: int = 512
    output_layer_dim: int = 256

    @property
    def output_dims(self) -> tuple[int, ...]:
        return (self.output_layer_dim,)

    def build(self, framework: str = "torch") -> TorchImageVectorEncoder:
        if framework != "torch":
            raise ValueError(f"the image-and-vector encoder is written for torch, not {framework}")
        return TorchImageVectorEncoder(self)


class TorchImageVectorEncoder(TorchModel, Encoder):
    def __init__(self, config: ImageVectorEncoderConfig) -> None:
        TorchModel.__init__(self, config)
        Encoder.__init__(self, config)
        self.cnn = NatureCNN(config.frames, config.feature_dim)
        self.fuse = nn.Sequential(nn.Linear(config.feature_dim + config.vector_dim, config.output_layer_dim),
                                  nn.ReLU())

    def _forward(self, inputs: dict, **kwargs: Any) -> dict:
        obs = inputs[Columns.OBS]
        image = obs["image"]
        if image.dtype != torch.uint8:  # a connector made the frames float: scale them as the CNN would
            image = image.float() / 255.0
        return {ENCODER_OUT: self.fuse(torch.cat([self.cnn(image), obs["vector"].float()], dim=-1))}


class FleetSACCatalog(SACCatalog):
    """SAC's catalog, with `ImageVectorEncoderConfig` for the contract's Dict observation."""

    @classmethod
    def _get_encoder_config(cls, observation_space: Any, model_config_dict: dict, action_space: Any = None,
                            ) -> ModelConfig:
        if hasattr(observation_space, "spaces") and {"image", "vector"} <= set(observation_space.spaces):
            return ImageVectorEncoderConfig(vector_dim=observation_space["vector"].shape[0],
                                            frames=observation_space["image"].shape[0],
                                            output_layer_dim=model_config_dict["fcnet_hiddens"][-1])
        return super()._get_encoder_config(observation_space, model_config_dict, action_space)


ENV_RUNNERS = 1
"""Env runner processes sampling for RLlib's SAC (its learner runs in the benchmark's process)."""


def rllib_arguments(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every setting not RLlib's SAC default: capacity, batch, replay ratio, warm-up, as ours."""
    batch = cfg.agent.batch_size
    return {"replay_buffer_capacity": min(cfg.replay.capacity, 200_000), "train_batch_size_per_learner": batch,
            "training_intensity": training_intensity(batch, cfg.learner.replay_ratio, ENV_RUNNERS),
            "num_steps_sampled_before_learning_starts": cfg.learner.learning_starts,
            "num_env_runners": ENV_RUNNERS, "num_learners": 0}


def training_intensity(batch: int, replay_ratio: float, env_runners: int) -> float:
    """RLlib's `training_intensity` that makes `replay_ratio` gradient updates per env step sampled.

    RLlib documents it as rows trained on per env step sampled, which would be `batch x replay_ratio`. But
    its round robin of sampling and updating (`dqn.calculate_rr_weights`, SAC's training step) divides it by
    a "native ratio" of batch / (steps per sampling round / env runners x (env runners + 1)), counting a
    local env runner that does not sample beside remote ones: with 1 env runner, `batch x replay_ratio`
    made twice the updates asked (measured at 0b4202f: 1,101 updates after 3,100 env steps, 2,000 of them
    warm-up, at a ratio of 0.5). Updates per sampling round are intensity / native ratio, so the ratio
    needs `batch x replay_ratio x env_runners / (env_runners + 1)`; tests/test_rllib_peer.py checks the
    round robin and a real run's updates per env step."""
    runners = max(env_runners, 1)
    return batch * replay_ratio * runners / (runners + 1)


def build(cfg: ExperimentConfig, seed: int) -> Any:
    """The SAC algorithm on the embedded env of `cfg`, registered in Ray's env registry."""
    from rollout_workers.envs import EMBEDDED_ID, register_ray_envs

    register_ray_envs()
    args = rllib_arguments(cfg)
    config = (
        SACConfig()
        .environment(EMBEDDED_ID, env_config=to_dict(cfg.embedded))
        .env_runners(num_env_runners=args["num_env_runners"])
        .learners(num_learners=args["num_learners"])
        .training(train_batch_size_per_learner=args["train_batch_size_per_learner"],
                  training_intensity=args["training_intensity"],
                  num_steps_sampled_before_learning_starts=args["num_steps_sampled_before_learning_starts"],
                  replay_buffer_config={"capacity": args["replay_buffer_capacity"]})
        .rl_module(rl_module_spec=RLModuleSpec(catalog_class=FleetSACCatalog))
        .debugging(seed=seed)
    )
    return config.build_algo()


def deterministic_policy(module: Any) -> Any:
    """obs -> action of a SAC module, without noise: the squashed Gaussian's mode."""
    dist_cls = module.get_inference_action_dist_cls()

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()}}
        with torch.no_grad():
            out = module.forward_inference(batch)
            action = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS]).to_deterministic().sample()
        return np.asarray(action[0], dtype=np.float32)

    return act


def train(cfg: ExperimentConfig, seed: int, minutes: float, interval_min: float, episodes: int,
          final: bool = False) -> Any:
    """`rllib-sac` for `minutes` of wall time; the module's weights at each mark, evaluated afterwards on the
    same validation episodes as every system (outside the timed training)."""
    import ray

    from cluster.bench.learning_run import (
        Curve,
        _brief,
        final_points,
        marks,
        mkl_note,
        peer_threads,
        say,
        summarize_point,
    )
    from cluster.runtime.envs import make_factory
    from rollout_workers.scripted import run_episodes

    threads = peer_threads(cfg)
    say(f"rllib-sac, seed {seed}: training {minutes:g} min (SAC, new API stack, 1 env runner process + the "
        f"learner in the driver on {threads} torch threads{mkl_note()}; not RLlib's defaults: "
        f"{rllib_arguments(cfg)})")
    started_ray = not ray.is_initialized()
    algo = build(cfg, seed)
    todo, held = marks(minutes, interval_min), []
    started = time.monotonic()
    try:
        while todo:
            result = algo.train()
            elapsed = (time.monotonic() - started) / 60
            while todo and elapsed >= todo[0]:
                module = algo.get_module()
                state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                steps = int(result.get("num_env_steps_sampled_lifetime", 0) or 0)
                # RLlib counts rows trained on (module steps); a gradient update trains on one batch of them.
                rows = int(result.get("learners", {}).get("__all_modules__", {})
                           .get("num_module_steps_trained_lifetime", 0) or 0)
                updates = rows // cfg.agent.batch_size
                held.append((todo.pop(0), steps, updates, state))
        module = algo.get_module()
        curve = Curve("rllib-sac", seed)
        factory = make_factory(cfg, 0)
        for mark, steps, updates, state in held:
            module.load_state_dict(state)
            eps = run_episodes(factory, deterministic_policy(module), cfg.eval.seeds(episodes))
            curve.points.append(summarize_point(mark, steps, updates, eps))
            say(f"rllib-sac, seed {seed}, {mark:g} min: {_brief(curve.points[-1])}")
        if final and held:  # the module holds the last mark's state
            curve.final = final_points(cfg, deterministic_policy(module), episodes)
        return curve
    finally:
        algo.stop()
        if started_ray and ray.is_initialized():
            ray.shutdown()
