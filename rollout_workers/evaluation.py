"""Evaluation workers: deterministic episodes from a snapshot's policy, and driving metrics.

The driving score follows the CARLA leaderboard: per route, route completion
times an infraction penalty (a product of per-infraction coefficients; we
count vehicle collisions at 0.60 each, the leaderboard's coefficient). Leaving
the road ends our episodes, so it already lowers route completion. Collisions
per km and the off-road rate are reported beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.common.interfaces import MakeEnv, PolicyParams
from learner.networks import NetworkConfig, Policy, policy_components
from rollout_workers.scripted import run_episodes

log = logging.getLogger(__name__)

COLLISION_PENALTY = 0.60


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 10
    """Episodes per evaluation."""
    workers: int = 2
    """Parallel evaluation workers (Ray actors)."""
    seed: int = 1_000_000
    """First validation seed: evaluation during training, `fleet evaluate`, and every choice of defaults. Held
    out from training episodes, whose seeds are drawn by rng."""
    test_seed: int = 3_000_000
    """First test seed: used only by an explicit final evaluation (`fleet evaluate --final`), each use recorded
    in <runs_dir>/test-set-uses.jsonl; never for choosing anything."""
    every_updates: int = 0
    """During training, evaluate the newest snapshot every this many learner updates, and the final one,
    tagging the best driving score `best` (0: no evaluation during training)."""
    policy: str = "averaged"
    """Which of a snapshot's actors every evaluation drives (during training, `fleet evaluate`, the learning
    benchmark, videos): "averaged", the Polyak average of the actor that TD3's targets keep, or "online", the
    actor the rollout workers act with. The online actor's speed swings by 2 m/s between snapshots 500 updates
    apart as the critic's throttle preference flips; the average holds it (docs/benchmarks.md, "Which actor
    to drive"). Training is the same either way."""

    def __post_init__(self) -> None:
        policy_components(self.policy)  # raises on an unknown source
        if abs(self.test_seed - self.seed) < 1_000_000:
            raise ValueError(f"test_seed ({self.test_seed}) must lie at least 1,000,000 from seed ({self.seed}): "
                             "the test episodes must never be validation episodes")

    def seeds(self, episodes: int | None = None, final: bool = False) -> list[int]:
        """The validation seeds, or with `final` the test seeds: `episodes` of them (default: `self.episodes`)."""
        first = self.test_seed if final else self.seed
        return [first + i for i in range(self.episodes if episodes is None else episodes)]


@dataclass
class EvalReport:
    episodes: list[dict[str, float]]
    mean_return: float
    mean_route_completion: float
    collisions_per_km: float
    off_road_rate: float
    mean_speed: float
    driving_score: float
    snapshot: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Strict JSON: seeds as integers, an infinite rate (collisions over zero distance) as null."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not np.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: int(v) if k == "seed" else clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return json.dumps(clean(asdict(self)), indent=2, allow_nan=False)

    @property
    def crashes(self) -> int:
        """Episodes that ended in a collision or off the road."""
        return sum(bool(ep.get("collision")) or bool(ep.get("off_road")) for ep in self.episodes)


def driving_score(ep: dict[str, float]) -> float:
    return float(ep["route_completion"]) * COLLISION_PENALTY ** float(ep.get("collision", 0.0))


def summarize(episodes: Sequence[dict[str, float]], snapshot: str = "") -> EvalReport:
    if not episodes:
        raise ValueError("no evaluation episodes to summarize")
    km = sum(ep["distance_m"] for ep in episodes) / 1000.0
    collisions = sum(ep["collision"] for ep in episodes)
    return EvalReport(
        episodes=[dict(ep, driving_score=driving_score(ep)) for ep in episodes],
        mean_return=float(np.mean([ep["return"] for ep in episodes])),
        mean_route_completion=float(np.mean([ep["route_completion"] for ep in episodes])),
        collisions_per_km=float(collisions / km) if km > 0 else float(collisions > 0) * float("inf"),
        off_road_rate=float(np.mean([ep["off_road"] for ep in episodes])),
        mean_speed=float(np.mean([ep["mean_speed"] for ep in episodes])),
        driving_score=float(np.mean([driving_score(ep) for ep in episodes])),
        snapshot=snapshot,
    )


class EvaluationWorker:
    """Runs deterministic (noise-free) episodes of a policy on given seeds."""

    def __init__(self, env_factory: MakeEnv, net_cfg: NetworkConfig) -> None:
        torch.set_num_threads(1)
        self.env_factory = env_factory
        self.policy = Policy(net_cfg)

    def load(self, weights: PolicyParams) -> None:
        self.policy.load_components(weights)

    def run(self, seeds: Sequence[int]) -> list[dict[str, float]]:
        return run_episodes(self.env_factory, lambda obs: self.policy.act(obs["image"], obs["vector"]), seeds)


def write_report(report: EvalReport, out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.png (per-episode return and route completion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "report.png"
    json_path.write_text(report.to_json())
    eps = report.episodes
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    xs = np.arange(len(eps))
    ax1.bar(xs, [e["return"] for e in eps], color="tab:blue")
    ax1.axhline(report.mean_return, color="k", ls="--", label=f"mean {report.mean_return:.1f}")
    ax1.set(title="Return per episode", xlabel="episode")
    ax1.legend()
    ax2.bar(xs, [e["route_completion"] for e in eps], color="tab:green", label="route completion")
    ax2.plot(xs, [e["driving_score"] for e in eps], "ko", label="driving score")
    ax2.set(title=f"Driving score {report.driving_score:.2f}", xlabel="episode", ylim=(0, 1.05))
    ax2.legend(loc="lower right")
    fig.suptitle(report.snapshot or "evaluation")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return json_path, png_path
