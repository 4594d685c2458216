"""The shared reward: its progress cap, and the incentive it gives a discounting learner."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rollout_workers.envs.embedded import EmbeddedDrivingEnv, EmbeddedEnvConfig
from rollout_workers.reward import RewardConfig, RoadState, reward
from rollout_workers.scripted import ScriptedDriver


def _state(progress_m: float, speed: float, dt_s: float) -> RoadState:
    return RoadState(progress_m=progress_m, speed=speed, lateral_m=0.0, heading_rad=0.0, collision=False,
                     off_road=False, dt_s=dt_s)


def test_progress_is_credited_up_to_the_target_speed() -> None:
    cfg = RewardConfig()  # target 8 m/s, speed term 1.0 at target, 0 at 16 m/s
    assert reward(_state(1.0, 5.0, 0.2), cfg) == pytest.approx(1.0 + 1.0 * (1 - 3 / 8))
    # 3.2 m in 0.2 s is 16 m/s: credited 8 m/s x 0.2 s = 1.6 m, and the speed term is 0
    assert reward(_state(3.2, 16.0, 0.2), cfg) == pytest.approx(1.6)
    assert reward(_state(3.2, 16.0, 0.2), replace(cfg, cap_progress=False)) == pytest.approx(3.2)
    assert reward(_state(3.2, 16.0, 0.0), cfg) == pytest.approx(3.2)  # no step length given: no cap
    assert reward(_state(-1.0, 0.0, 0.2), cfg) == pytest.approx(-1.0)  # going back is never capped


def _discounted_return(target_speed: float, seeds: range, gamma: float = 0.99) -> float:
    cfg = EmbeddedEnvConfig()
    driver = ScriptedDriver.for_env(cfg, target_speed=target_speed)
    returns = []
    for seed in seeds:
        env = EmbeddedDrivingEnv(cfg, seed=seed)
        obs, _ = env.reset()
        total, g, done = 0.0, 1.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(driver.act(obs))
            total, g, done = total + g * r, g * gamma, term or trunc
        env.close()
        returns.append(total)
    return float(np.mean(returns))


def test_a_discounting_learner_gains_nothing_by_speeding() -> None:
    # Uncapped (speed weight 0.1), the 12 m/s driver's discounted return was higher (155.0 vs 129.6 on 20
    # seeds) although it collided in 10% of episodes: TD3 learned to speed into the slower traffic ahead.
    seeds = range(1000, 1006)
    assert _discounted_return(8.0, seeds) > _discounted_return(12.0, seeds) + 20.0


def test_each_step_above_the_target_speed_earns_less() -> None:
    # The immediate signal, not only the discounted one: at speed weight 0.1 a step at 11 m/s earned 4%
    # less than one at 8 m/s and agents held 11-12 m/s; now 16% less.
    cfg = RewardConfig()
    at = {v: reward(_state(v * 0.2, v, 0.2), cfg) for v in (8.0, 11.0, 12.0)}
    assert at[11.0] < 0.9 * at[8.0] and at[12.0] < at[11.0]
