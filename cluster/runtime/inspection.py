"""What a snapshot's critic and actor think, on states a scripted driver visits at set speeds.

`fleet inspect` answers the first questions to ask of an agent that does not drive as it should:
does the critic prefer the target speed (Q over a sweep of throttle_brake at each speed), does it
know that steering off the lane is bad (Q over a sweep of steer), and does the actor do what its
critic prefers? The states come from `ScriptedDriver` episodes on the embedded simulator, held at
each speed after a run-in, so they are on-road states whose right answer is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cluster.runtime.envs import make_factory
from cluster.runtime.experiment import ExperimentConfig
from learner.common.errors import UserError
from learner.networks import build_networks
from learner.td3 import scaled_images
from rollout_workers.scripted import ScriptedDriver

COMPONENTS = ("actor_cnn", "actor", "critic_cnn", "critic")
SWEEP = tuple(np.round(np.linspace(-1.0, 1.0, 9), 2).tolist())
"""Action values at which Q1 is evaluated (the other action held at the scripted driver's)."""


@dataclass
class SpeedProbe:
    speed: float
    """Speed the scripted driver held, m/s."""
    states: int
    q_over_throttle: list[float]
    """Mean Q1 at each SWEEP value of throttle_brake (steer: the scripted driver's)."""
    q_over_steer: list[float]
    """Mean Q1 at each SWEEP value of steer (throttle_brake: the scripted driver's)."""
    best_throttle: float
    best_steer: float
    actor_throttle: float
    actor_steer: float
    scripted_steer: float


def collect_states(env_factory: Callable[[int], Any], driver: ScriptedDriver, seeds: Sequence[int],
                   first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, vectors and scripted actions of steps first..last-1 of one episode per seed."""
    images, vectors, actions = [], [], []
    for seed in seeds:
        env = env_factory(seed)
        try:
            obs, _ = env.reset(seed=seed)
            for t in range(last):
                action = driver.act(obs)
                if t >= first:
                    images.append(obs["image"].copy())
                    vectors.append(obs["vector"].copy())
                    actions.append(action)
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
        finally:
            env.close()
    if not images:
        raise UserError(f"the scripted episodes ended before step {first}: lower --from-step")
    return np.stack(images), np.stack(vectors).astype(np.float32), np.stack(actions).astype(np.float32)


@torch.no_grad()
def probe_speed(nets: dict[str, torch.nn.Module], images: np.ndarray, vectors: np.ndarray,
                actions: np.ndarray, speed: float) -> SpeedProbe:
    image = scaled_images(torch.from_numpy(images))
    vector = torch.from_numpy(vectors)
    scripted = torch.from_numpy(actions)
    features = nets["critic_cnn"](image)

    def sweep(dim: int) -> list[float]:
        out = []
        for value in SWEEP:
            a = scripted.clone()
            a[:, dim] = value
            out.append(float(nets["critic"].q1(features, vector, a).mean()))
        return out

    q_steer, q_throttle = sweep(0), sweep(1)
    policy = nets["actor"](nets["actor_cnn"](image), vector)
    return SpeedProbe(speed=speed, states=len(images), q_over_throttle=q_throttle, q_over_steer=q_steer,
                      best_throttle=SWEEP[int(np.argmax(q_throttle))], best_steer=SWEEP[int(np.argmax(q_steer))],
                      actor_throttle=float(policy[:, 1].mean()), actor_steer=float(policy[:, 0].mean()),
                      scripted_steer=float(scripted[:, 0].mean()))


def inspect_weights(cfg: ExperimentConfig, weights: dict[str, Any], speeds: Sequence[float], episodes: int,
                    first: int = 40, last: int = 60) -> list[SpeedProbe]:
    """Probe `weights` (the four online networks) at each speed, on `episodes` held-out seeds."""
    if cfg.run.env != "embedded":
        raise UserError("fleet inspect drives the embedded simulator's scripted driver; "
                        f"this config's env is {cfg.run.env!r}")
    nets = build_networks(cfg.network)
    for name in COMPONENTS:
        nets[name].load_state_dict(weights[name])
        nets[name].eval()
    factory = make_factory(cfg, 0)
    seeds = cfg.eval.seeds(episodes)
    probes = []
    for speed in speeds:
        driver = ScriptedDriver.for_env(cfg.embedded, target_speed=float(speed))
        images, vectors, actions = collect_states(factory, driver, seeds, first, last)
        probes.append(probe_speed(nets, images, vectors, actions, float(speed)))
    return probes


def inspect_snapshot(ref: str, speeds: Sequence[float], episodes: int, base: ExperimentConfig | None = None,
                     overrides: dict[str, Any] | None = None,
                     say: Callable[[str], None] = print) -> tuple[str, list[SpeedProbe]]:
    from cluster.runtime.evaluation import load_for_evaluation

    cfg, weights, label = load_for_evaluation(ref, base, overrides, say, components=COMPONENTS)
    return label, inspect_weights(cfg, weights, speeds, episodes)


def as_text(label: str, probes: Sequence[SpeedProbe]) -> list[str]:
    lines = [f"snapshot {label}: Q1 of the critic on scripted states, and the actor's actions there",
             "sweep: " + " ".join(f"{v:+.2f}" for v in SWEEP)]
    for p in probes:
        lines += [
            f"{p.speed:5.1f} m/s ({p.states} states)",
            "  Q1 over throttle_brake: " + " ".join(f"{q:7.2f}" for q in p.q_over_throttle)
            + f"  best {p.best_throttle:+.2f}, actor {p.actor_throttle:+.2f}",
            "  Q1 over steer:          " + " ".join(f"{q:7.2f}" for q in p.q_over_steer)
            + f"  best {p.best_steer:+.2f}, actor {p.actor_steer:+.2f}, scripted {p.scripted_steer:+.2f}",
        ]
    return lines


def as_dict(label: str, probes: Sequence[SpeedProbe]) -> dict[str, Any]:
    return {"snapshot": label, "sweep": list(SWEEP), "speeds": [asdict(p) for p in probes]}
