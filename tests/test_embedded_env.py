"""The embedded simulator: checkers, determinism, vector semantics, frames, termination."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rollout_workers import contract
from rollout_workers.envs import EMBEDDED_ID, embedded_from_env_config, register_gym_envs
from rollout_workers.envs.embedded import EmbeddedEnvConfig, make_env
from rollout_workers.envs.render import EGO, OTHER
from rollout_workers.reward import RewardConfig
from rollout_workers.scripted import ScriptedDriver


@pytest.fixture
def env():
    e = make_env(seed=0)
    yield e
    e.close()


def run(env: gym.Env, actions: np.ndarray, seed: int) -> tuple[list[dict], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs)
    return observations, rewards


def test_gymnasium_env_checker_passes(env):
    check_env(env, skip_render_check=True)


def test_gym_registration_is_idempotent_and_makes_the_env():
    register_gym_envs()
    register_gym_envs()
    e = gym.make(EMBEDDED_ID, config=EmbeddedEnvConfig(vehicles_count=2), seed=3)
    try:
        obs, _ = e.reset()
        contract.check_observation(obs)
        check_env(e.unwrapped, skip_render_check=True)
    finally:
        e.close()


def test_rllib_env_runner_path():
    """What RLlib's SingleAgentEnvRunner does with a registered name: creator + gym.make_vec."""
    from ray.rllib.env.env_context import EnvContext
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from rollout_workers.envs import register_ray_envs

    register_ray_envs()
    register_ray_envs()
    creator = _global_registry.get(ENV_CREATOR, EMBEDDED_ID)
    ctx = EnvContext({"seed": 1, "vehicles_count": 3, "reward": {"target_speed": 7.0}}, worker_index=1)
    gym.register("carla-fleet-test/RLlibPath-v0", entry_point=lambda: creator(ctx),
                 vector_entry_point=lambda num_envs: creator(ctx | {"num_envs": num_envs}))
    vec = gym.make_vec("carla-fleet-test/RLlibPath-v0", num_envs=2, vectorization_mode="sync")
    try:
        obs, _ = vec.reset(seed=0)
        assert obs["image"].shape == (2, 4, 84, 84) and obs["vector"].shape == (2, 23)
        for _ in range(5):
            obs, reward, term, trunc, info = vec.step(np.tile([0.0, 0.5], (2, 1)).astype(np.float32))
        assert np.isfinite(reward).all() and obs["image"].dtype == np.uint8
    finally:
        vec.close()
        gym.registry.pop("carla-fleet-test/RLlibPath-v0", None)
    e = creator(ctx)
    assert e.unwrapped.config.reward.target_speed == 7.0 and e.unwrapped.config.vehicles_count == 3
    with pytest.raises(ValueError, match="unknown embedded env key"):
        embedded_from_env_config({"vehicle_count": 3})


@pytest.mark.parametrize("seed", [11, 2024])
def test_same_seed_and_actions_give_identical_episodes(seed):
    actions = np.random.default_rng(seed).uniform([-0.3, -0.3], [0.3, 1.0], (200, 2)).astype(np.float32)
    a, b = make_env(), make_env()
    try:
        obs_a, rew_a = run(a, actions, seed)
        obs_b, rew_b = run(b, actions, seed)
        obs_c, _ = run(a, actions, seed + 1)
    finally:
        a.close()
        b.close()
    assert len(rew_a) == 200 and rew_a == rew_b
    assert len(obs_a) == len(obs_b)
    for x, y in zip(obs_a, obs_b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["vector"], y["vector"])
    assert not np.array_equal(obs_a[0]["vector"], obs_c[0]["vector"])


def test_vector_at_reset_describes_the_lane_ahead(env):
    cfg = env.unwrapped.config
    obs, info = env.reset(seed=5)
    vec = obs["vector"]
    assert vec.shape == (23,) and vec.dtype == np.float32
    assert vec[0] == pytest.approx(info["speed"] / cfg.max_speed, abs=1e-6)
    assert abs(vec[1]) < 1e-3 and abs(vec[2]) < 1e-3  # spawned on the lane centre, along it
    wps = vec[3:].reshape(-1, 2) * cfg.waypoint_spacing_m * cfg.waypoints
    dist = np.hypot(wps[:, 0], wps[:, 1])
    assert wps[0] == pytest.approx([2.0, 0.0], abs=0.15)
    assert np.all(np.diff(dist) > 1.0)  # ordered ahead, about 2 m apart
    assert np.all(wps[:, 0] > 0)


def test_steer_sign_follows_the_contract():
    """Steer > 0 turns right: heading error, lateral offset and waypoint y all agree."""
    out = {}
    for steer in (-0.4, 0.4):
        e = make_env()
        e.reset(seed=8)
        for _ in range(4):
            obs, *_ = e.step(np.array([steer, 0.5], np.float32))
        out[steer] = obs["vector"]
        e.close()
    right, left = out[0.4], out[-0.4]
    assert right[2] > 0 > left[2]  # heading error
    assert right[1] > left[1]  # lateral offset
    assert right[3 + 2 * 4 + 1] < left[3 + 2 * 4 + 1]  # a waypoint ahead lies more to the left


def test_throttle_moves_and_brake_stops_without_reversing(env):
    env.reset(seed=1)
    for _ in range(10):
        _, _, _, _, info = env.step(np.array([0.0, 1.0], np.float32))
    # The start speed is at most 4 m/s; 2 s at 4 m/s^2 adds 8 m/s.
    assert info["speed"] > 8.0 and info["distance_m"] > 10.0
    for _ in range(10):
        _, _, _, _, info = env.step(np.array([0.0, -1.0], np.float32))
    assert info["speed"] == pytest.approx(0.0, abs=1e-6)
    assert info["route_completion"] > 0


def test_frames_are_stacked_oldest_first_and_show_ego_and_traffic(env):
    obs, _ = env.reset(seed=2)
    assert all(np.array_equal(obs["image"][0], f) for f in obs["image"])  # reset fills the stack
    driver = ScriptedDriver.for_env()
    saw_traffic = False
    for _ in range(150):
        nxt, _, terminated, truncated, _ = env.step(driver.act(obs))
        np.testing.assert_array_equal(nxt["image"][:-1], obs["image"][1:])
        saw_traffic |= bool((nxt["image"][-1] == OTHER).any())
        obs = nxt
        if terminated or truncated:
            break
    assert (obs["image"][-1][55:66, 38:46] == EGO).sum() >= 30  # the ego's 10x4 pixel box
    assert saw_traffic


def test_leaving_the_lane_terminates_with_the_penalty(env):
    env.reset(seed=4)
    for _ in range(50):
        _, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0], np.float32))
        if terminated:
            break
    assert terminated and not truncated and info["off_road"] and not info["collision"]
    # at most ~1.6 m of progress and the speed term (<= speed_weight) before the penalty
    assert reward < -RewardConfig().off_road_penalty + 1.7 + RewardConfig().speed_weight


def test_hitting_a_vehicle_terminates_with_the_collision_penalty(env):
    from highway_env.vehicle.kinematics import Vehicle

    env.reset(seed=6)
    sim = env.unwrapped._sim
    route = sim.assets.routes[sim.route_lane]
    s = route.project(sim.vehicle.position).s
    p, h = route.sample(np.array([s + 15.0]))
    sim.road.vehicles.append(Vehicle(sim.road, p[0], float(h[0]), speed=0.0))  # a stopped car ahead
    driver = ScriptedDriver.for_env()
    obs = env.unwrapped._observation(route.project(sim.vehicle.position))
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(driver.act(obs))
        if terminated:
            break
    assert terminated and info["collision"] and not info["off_road"] and info["route_completion"] < 0.1
    assert reward < -RewardConfig().collision_penalty + 1.7 + RewardConfig().speed_weight


def test_time_limit_truncates():
    e = make_env(EmbeddedEnvConfig(max_episode_steps=5))
    obs, _ = e.reset(seed=0)
    driver = ScriptedDriver.for_env()
    flags = []
    for _ in range(5):
        obs, _, terminated, truncated, _ = e.step(driver.act(obs))
        flags.append((terminated, truncated))
    e.close()
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_route_completion_terminates():
    cfg = EmbeddedEnvConfig(route_length_m=30.0)
    e = make_env(cfg)
    obs, _ = e.reset(seed=0)
    driver = ScriptedDriver.for_env(cfg)
    steps = 0
    for steps in range(1, 101):  # noqa: B007 (the count is the result)
        obs, _, terminated, truncated, info = e.step(driver.act(obs))
        if terminated or truncated:
            break
    e.close()
    assert terminated and info["route_completion"] == 1.0 and not info["collision"] and not info["off_road"]
    assert 25.0 < info["distance_m"] < 40.0 and steps < 40


def test_config_validation_and_loading():
    from cluster.runtime.config import ConfigError, from_dict

    with pytest.raises(ValueError, match="must divide simulation_frequency"):
        EmbeddedEnvConfig(policy_frequency=4)
    with pytest.raises(ValueError, match="traffic_speed"):
        EmbeddedEnvConfig(traffic_speed=(9.0, 3.0))
    cfg = from_dict(EmbeddedEnvConfig, {"waypoints": 6, "traffic_speed": [4, 6], "reward": {"target_speed": 6}})
    assert cfg.waypoints == 6 and cfg.traffic_speed == (4.0, 6.0) and cfg.reward.target_speed == 6.0
    with pytest.raises(ConfigError, match="reward.target_sped"):
        from_dict(EmbeddedEnvConfig, {"reward": {"target_sped": 6}})
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen


def test_fewer_waypoints_change_the_vector_size():
    e = make_env(EmbeddedEnvConfig(waypoints=4), seed=0)
    obs, _ = e.reset()
    e.close()
    contract.check_observation(obs, waypoints=4)
    assert obs["vector"].shape == (11,)


def test_route_projection_recovers_arc_length_and_offset():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    e = make_env(seed=0)
    routes = e.unwrapped._sim.assets.routes
    e.close()

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, len(routes) - 1), st.floats(0.0, 1.0, exclude_max=True), st.floats(-2.0, 2.0))
    def check(k: int, frac: float, lateral: float) -> None:
        route = routes[k]
        s = frac * route.length
        p, h = route.sample(np.array([s]))
        right = np.array([-np.sin(h[0]), np.cos(h[0])])  # the contract's "right" in highway-env's frame
        proj = route.project(p[0] + lateral * right)
        assert abs(route.advance(s, proj.s)) < 0.6  # vertices are 0.5 m apart; a curve bends the offset
        assert proj.lateral == pytest.approx(lateral, abs=0.05)

    check()
