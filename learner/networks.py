"""The seed agent's networks, with the key names and shapes of its checkpoints.

Shapes (defaults: 4 stacked 84x84 frames, 23-value vector, 2 actions):
  NatureCNN   features.{0,3,6}.{weight,bias}, fc.{weight,bias}: 4x84x84 uint8 -> 512
  Actor       fc1 (512+V -> 256), fc2 (256 -> 256), fc3 (256 -> 2), tanh
  Critic      Q1.l1 (512+V+2 -> 256), Q1.l2, Q1.l3 (-> 1), and Q2 the same
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class NetworkConfig:
    frames: int = 4
    """Stacked grayscale frames per observation."""
    image_size: int = 84
    """Side of the square grayscale frame in pixels."""
    waypoints: int = 10
    """Route waypoints in the state vector; vector size is 3 + 2 * waypoints."""
    feature_dim: int = 512
    """Output size of each Nature CNN."""
    hidden_dim: int = 256
    """Width of the actor and critic MLP layers."""
    action_dim: int = 2
    """Steer and throttle/brake."""
    feature_norm: bool = False
    """Layer-normalise each CNN's 512 features (no parameters, so the seed's keys are unchanged)."""
    critic_layernorm: bool = False
    """LayerNorm after each hidden layer of both Q heads, as BRO and TD-MPC2 do (adds the keys n1.*, n2.*
    to each head; off: the seed's critic)."""

    @property
    def vector_dim(self) -> int:
        return 3 + 2 * self.waypoints

    def __post_init__(self) -> None:
        if self.image_size != 84:
            raise ValueError("image_size must be 84: the Nature CNN's fc layer expects 64x7x7 features")
        if self.waypoints < 0 or self.frames < 1:
            raise ValueError("waypoints must be >= 0 and frames >= 1")


class NatureCNN(nn.Module):
    """Mnih et al. (2015) encoder. Takes uint8 frames and scales them to [0, 1] inside.

    The parameter-free slots after each ReLU keep the seed's state-dict indices
    (features.0, features.3, features.6) so its checkpoints load unchanged.
    """

    def __init__(self, in_channels: int = 4, feature_dim: int = 512, norm: bool = False) -> None:
        super().__init__()
        self.norm = norm
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Identity(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Identity(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(64 * 7 * 7, feature_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        h = self.fc(self.features(x))
        if self.norm:
            h = nn.functional.layer_norm(h, h.shape[-1:])
        return torch.relu(h)


class Actor(nn.Module):
    def __init__(self, feature_dim: int, vector_dim: int, action_dim: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(feature_dim + vector_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, action_dim)

    def preact(self, features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """The action before its tanh squashing (what a saturation penalty looks at)."""
        x = torch.cat([features, vector], dim=-1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def forward(self, features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.preact(features, vector))


class QHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layernorm: bool = False) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_dim, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)
        self.layernorm = layernorm
        if layernorm:
            self.n1, self.n2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layernorm:
            return self.l3(torch.relu(self.n2(self.l2(torch.relu(self.n1(self.l1(x))))))).squeeze(-1)
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x))))).squeeze(-1)


class Critic(nn.Module):
    """Twin Q networks over (image features, vector, action)."""

    def __init__(self, feature_dim: int, vector_dim: int, action_dim: int = 2, hidden: int = 256,
                 layernorm: bool = False) -> None:
        super().__init__()
        in_dim = feature_dim + vector_dim + action_dim
        self.Q1 = QHead(in_dim, hidden, layernorm)
        self.Q2 = QHead(in_dim, hidden, layernorm)

    def forward(
        self, features: torch.Tensor, vector: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, vector, action], dim=-1)
        return self.Q1(x), self.Q2(x)

    def q1(self, features: torch.Tensor, vector: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.Q1(torch.cat([features, vector, action], dim=-1))


def build_networks(cfg: NetworkConfig) -> dict[str, nn.Module]:
    """The four online networks, by their checkpoint names."""
    return {
        "actor_cnn": NatureCNN(cfg.frames, cfg.feature_dim, cfg.feature_norm),
        "critic_cnn": NatureCNN(cfg.frames, cfg.feature_dim, cfg.feature_norm),
        "actor": Actor(cfg.feature_dim, cfg.vector_dim, cfg.action_dim, cfg.hidden_dim),
        "critic": Critic(cfg.feature_dim, cfg.vector_dim, cfg.action_dim, cfg.hidden_dim, cfg.critic_layernorm),
    }


POLICY_COMPONENTS = ("actor_cnn", "actor")
"""What a worker or evaluator needs to act: the actor and its own encoder."""

POLICY_SOURCES: dict[str, tuple[str, str]] = {
    "online": POLICY_COMPONENTS,
    "averaged": ("actor_cnn_target", "actor_target"),
}
"""Which of a snapshot's two actors a policy is made of: the online actor the rollout workers act with, or
the Polyak average of it that TD3's targets use (and its encoder's average). Both are in every snapshot."""


def policy_components(source: str) -> tuple[str, str]:
    """The snapshot components (encoder, actor) of policy `source` ("online" or "averaged")."""
    try:
        return POLICY_SOURCES[source]
    except KeyError:
        raise ValueError(f"policy source must be one of {sorted(POLICY_SOURCES)}, got {source!r}") from None


def other_policy_source(source: str) -> str:
    """The source `source` is not ("averaged" for "online", and the reverse)."""
    policy_components(source)
    return next(name for name in POLICY_SOURCES if name != source)


def policy_weights(state: dict[str, dict[str, torch.Tensor]], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """`Policy.load_components` weights ({"actor_cnn", "actor"}) from a snapshot state holding `source`'s."""
    return dict(zip(POLICY_COMPONENTS, (state[name] for name in policy_components(source)), strict=True))


class Policy(nn.Module):
    """The acting half of the agent (actor_cnn + actor), for rollout and evaluation workers."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        nets = build_networks(cfg)
        self.cfg = cfg
        self.actor_cnn = nets["actor_cnn"]
        self.actor = nets["actor"]

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.actor(self.actor_cnn(image), vector)

    def load_components(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load {"actor_cnn": state_dict, "actor": state_dict}; strict."""
        missing = [c for c in POLICY_COMPONENTS if c not in weights]
        if missing:
            raise KeyError(f"policy weights lack component(s) {missing}")
        self.actor_cnn.load_state_dict(weights["actor_cnn"], strict=True)
        self.actor.load_state_dict(weights["actor"], strict=True)

    @torch.no_grad()
    def act(
        self,
        image: np.ndarray,
        vector: np.ndarray,
        noise_std: float | np.ndarray = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Actions in [-1, 1] for one observation (returns (2,)) or a batch (returns (N, 2))."""
        return act_with(self.actor_cnn, self.actor, image, vector, noise_std, rng)


def act_with(
    cnn: nn.Module,
    actor: nn.Module,
    image: np.ndarray,
    vector: np.ndarray,
    noise_std: float | np.ndarray,
    rng: np.random.Generator | None,
) -> np.ndarray:
    single = np.ndim(image) == 3
    device = next(actor.parameters()).device
    img = torch.as_tensor(np.asarray(image)[None] if single else np.asarray(image), device=device)
    vec = torch.as_tensor(
        np.asarray(vector, dtype=np.float32)[None] if single else np.asarray(vector, dtype=np.float32),
        device=device,
    )
    with torch.no_grad():
        action = actor(cnn(img), vec).float().cpu().numpy()
    if np.any(np.asarray(noise_std) > 0.0):  # a scalar, or one std per action dimension
        if rng is None:
            raise ValueError("exploration noise needs an explicit numpy Generator (rng=...)")
        action = action + rng.normal(0.0, noise_std, size=action.shape).astype(np.float32)
    action = np.clip(action, -1.0, 1.0).astype(np.float32)
    return action[0] if single else action
