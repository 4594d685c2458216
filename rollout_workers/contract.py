"""The observation/action contract every environment obeys.

- image: uint8 (4, 84, 84), the four most recent grayscale frames, oldest first
- vector: float32 (3 + 2W,): speed, lateral deviation, heading error, then W
  route waypoints (x, y) in the ego frame, each normalised to roughly [-1, 1]
- action: float32 (2,) in [-1, 1]: steer, throttle_brake (>0 throttle, <0 brake)
- terminated (collision, off-road, route complete) is separate from truncated
  (time limit, simulator restart); info carries INFO_KEYS.

Sign conventions (CARLA's, which highway-env's screen frame also follows): the
ego frame is x forward, y to the right; steer > 0 turns right (toward +y); the
lateral deviation is > 0 right of the lane centre; the heading error is > 0 when
the vehicle points right of the lane direction. A controller written against the
vector (`rollout_workers.scripted`) then drives every environment alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from learner.common.errors import FleetError, SimulatorError  # noqa: F401  (SimulatorError: adapters import it from here)

FRAMES = 4
IMAGE_SIZE = 84
DEFAULT_WAYPOINTS = 10
ACTION_DIM = 2
VECTOR_BOUND = 5.0
"""Vector entries are normalised to roughly [-1, 1]; beyond this something is wrong."""

INFO_KEYS = ("route_completion", "collision", "off_road", "distance_m", "speed")


class ContractError(FleetError, ValueError):
    """An environment broke the contract; the message says which field and how."""


def vector_dim(waypoints: int = DEFAULT_WAYPOINTS) -> int:
    return 3 + 2 * waypoints


def observation_space(waypoints: int = DEFAULT_WAYPOINTS) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (FRAMES, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8),
            "vector": gym.spaces.Box(-VECTOR_BOUND, VECTOR_BOUND, (vector_dim(waypoints),), dtype=np.float32),
        }
    )


def action_space() -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)


def check_observation(obs: Any, waypoints: int = DEFAULT_WAYPOINTS) -> None:
    """Raise ContractError naming the first broken field of an observation."""
    if not isinstance(obs, Mapping) or set(obs) != {"image", "vector"}:
        keys = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
        raise ContractError(f"observation must be a dict with keys ['image', 'vector'], got {keys}")
    image, vector = obs["image"], obs["vector"]
    want_img = (FRAMES, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(image, np.ndarray) or image.shape != want_img or image.dtype != np.uint8:
        raise ContractError(f"image must be uint8 {want_img}, got {_describe(image)}")
    want_vec = (vector_dim(waypoints),)
    if not isinstance(vector, np.ndarray) or vector.shape != want_vec or vector.dtype != np.float32:
        raise ContractError(f"vector must be float32 {want_vec}, got {_describe(vector)}")
    bad = ~np.isfinite(vector)
    if bad.any():
        raise ContractError(f"vector has non-finite values at indices {np.flatnonzero(bad).tolist()}")
    big = np.abs(vector) > VECTOR_BOUND
    if big.any():
        raise ContractError(
            f"vector entries {np.flatnonzero(big).tolist()} exceed +-{VECTOR_BOUND} (not normalised?)"
        )


def check_action(action: Any) -> None:
    a = np.asarray(action)
    if a.shape != (ACTION_DIM,) or not np.isfinite(a).all() or np.abs(a).max() > 1.0:
        raise ContractError(f"action must be finite float32 (2,) in [-1, 1], got {_describe(action)}")


def check_step(result: tuple, waypoints: int = DEFAULT_WAYPOINTS) -> None:
    """Validate one `env.step` result: (obs, reward, terminated, truncated, info)."""
    if not isinstance(result, tuple) or len(result) != 5:
        raise ContractError("step must return (obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    check_observation(obs, waypoints)
    if not isinstance(reward, (float, int, np.floating)) or not np.isfinite(reward):
        raise ContractError(f"reward must be a finite float, got {reward!r}")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ContractError(f"{name} must be a bool, got {type(flag).__name__}")
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ContractError(f"info lacks {missing}")


def validate_env(env: gym.Env, steps: int = 100, seed: int = 0, waypoints: int = DEFAULT_WAYPOINTS) -> int:
    """Reset `env` and run `steps` random steps, checking every result; returns episodes finished.

    Raises ContractError at the first broken observation, step result or space.
    """
    if env.observation_space != observation_space(waypoints):
        raise ContractError(f"observation_space must be {observation_space(waypoints)}, got {env.observation_space}")
    if env.action_space != action_space():
        raise ContractError(f"action_space must be {action_space()}, got {env.action_space}")
    rng = np.random.default_rng(seed)
    obs, _info = env.reset(seed=seed)
    check_observation(obs, waypoints)
    episodes = 0
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, ACTION_DIM).astype(np.float32)
        result = env.step(action)
        check_step(result, waypoints)
        if result[2] or result[3]:
            episodes += 1
            obs, _info = env.reset()
            check_observation(obs, waypoints)
    return episodes


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {x.shape}"
    return type(x).__name__
