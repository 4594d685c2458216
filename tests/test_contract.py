"""The contract validator: it passes a conforming env and names what is wrong otherwise."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rollout_workers import contract
from rollout_workers.contract import ContractError, check_action, check_observation, check_step, validate_env
from rollout_workers.envs.embedded import make_env
from tests.env_double import TinyDrive


def good_obs() -> dict[str, np.ndarray]:
    return {"image": np.zeros((4, 84, 84), np.uint8), "vector": np.zeros(23, np.float32)}


def good_info() -> dict[str, object]:
    return {"route_completion": 0.0, "collision": False, "off_road": False, "distance_m": 0.0, "speed": 0.0}


def test_embedded_env_passes_the_validator():
    env = make_env(seed=0)
    try:
        episodes = validate_env(env, steps=150, seed=0)
    finally:
        env.close()
    # Uniform random actions leave the lane quickly, so resets are exercised too.
    assert episodes >= 1


def test_validator_passes_a_conforming_observation_and_step():
    check_observation(good_obs())
    check_step((good_obs(), 0.5, False, True, good_info()))
    check_action(np.array([0.0, 1.0], np.float32))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(image=np.zeros((4, 84, 83), np.uint8)),
         "image must be uint8 (4, 84, 84), got uint8 (4, 84, 83)"),
        (lambda o: o.update(image=np.zeros((4, 84, 84), np.float32)),
         "image must be uint8 (4, 84, 84), got float32 (4, 84, 84)"),
        (lambda o: o.update(image=np.zeros((84, 84, 4), np.uint8)),
         "image must be uint8 (4, 84, 84), got uint8 (84, 84, 4)"),
        (lambda o: o.update(vector=np.zeros(21, np.float32)),
         "vector must be float32 (23,), got float32 (21,)"),
        (lambda o: o.update(vector=np.zeros(23, np.float64)),
         "vector must be float32 (23,), got float64 (23,)"),
        (lambda o: o.update(vector=[0.0] * 23),
         "vector must be float32 (23,), got list"),
        (lambda o: o.pop("vector"),
         "observation must be a dict with keys ['image', 'vector'], got ['image']"),
    ],
)
def test_wrong_shapes_and_types_are_named(mutate, message):
    obs = good_obs()
    mutate(obs)
    with pytest.raises(ContractError, match=re.escape(message)):
        check_observation(obs)


def test_nan_and_inf_in_the_vector_are_reported_with_their_indices():
    obs = good_obs()
    obs["vector"][5] = np.nan
    obs["vector"][17] = np.inf
    with pytest.raises(ContractError, match=re.escape("vector has non-finite values at indices [5, 17]")):
        check_observation(obs)


def test_unnormalised_vector_is_reported():
    obs = good_obs()
    obs["vector"][0] = 12.0  # a speed in m/s, not normalised
    with pytest.raises(ContractError, match=re.escape("vector entries [0] exceed +-5.0 (not normalised?)")):
        check_observation(obs)


def test_observation_that_is_not_a_dict_is_reported():
    with pytest.raises(ContractError, match="got ndarray"):
        check_observation(np.zeros(23, np.float32))


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ((good_obs(), float("nan"), False, False, good_info()), "reward must be a finite float, got nan"),
        ((good_obs(), 0.0, 0, False, good_info()), "terminated must be a bool, got int"),
        ((good_obs(), 0.0, False, None, good_info()), "truncated must be a bool, got NoneType"),
        ((good_obs(), 0.0, False, False, {"speed": 1.0}),
         "info lacks ['route_completion', 'collision', 'off_road', 'distance_m']"),
        ((good_obs(), 0.0, False, False), "step must return (obs, reward, terminated, truncated, info)"),
    ],
)
def test_broken_step_results_are_named(result, message):
    with pytest.raises(ContractError, match=re.escape(message)):
        check_step(result)


@pytest.mark.parametrize("action", [np.array([0.0, 1.5]), np.array([np.nan, 0.0]), np.zeros(3)])
def test_bad_actions_are_rejected(action):
    with pytest.raises(ContractError, match="action must be finite float32"):
        check_action(action)


class NaNAfterTenSteps(TinyDrive):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self._t >= 10:
            obs["vector"][3] = np.nan
        return obs, reward, terminated, truncated, info


def test_validate_env_catches_an_env_that_goes_bad_mid_episode():
    with pytest.raises(ContractError, match=re.escape("non-finite values at indices [3]")):
        validate_env(NaNAfterTenSteps(seed=0), steps=50)


def test_validate_env_checks_the_spaces():
    env = TinyDrive(seed=0)
    env.observation_space = contract.observation_space(waypoints=5)
    with pytest.raises(ContractError, match="observation_space must be"):
        validate_env(env, steps=1)
