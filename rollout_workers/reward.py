"""The one reward design shared by the embedded simulator and the CARLA adapter.

Per step: progress along the route (metres, credited up to the target speed),
plus speed tracking, minus lane-centre and heading penalties; a fixed penalty
and termination on collision or leaving the road.

Why progress is capped at the target speed: uncapped, a metre is worth the same
at any speed, so with discounting a faster driver collects the same route sooner.
Measured with the scripted driver on 20 seeds of the embedded env (gamma 0.99):
the discounted return was 129.6 at the 8 m/s target, 155.0 at 12 m/s (10% of
episodes ending in a collision), so TD3, which maximises the discounted return,
learned to speed into the slower traffic. Capped, the target speed is the optimum. Both adapters compute the same `RoadState` and call
`reward()`, so an agent sees the same objective on either simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout_workers.envs.ego import wrap_angle


@dataclass(frozen=True)
class RewardConfig:
    target_speed: float = 8.0
    """Speed the agent is rewarded for holding, m/s."""
    progress_weight: float = 1.0
    """Reward per metre of progress along the route."""
    cap_progress: bool = True
    """Credit at most target_speed * dt metres of progress per step (see the module docstring)."""
    speed_weight: float = 1.0
    """Weight of the speed-tracking term (1 at target speed, 0 at rest or double). At 0.1 a step at
    11 m/s earned 1.46 against 1.52 at the 8 m/s target (4%): agents held 11-12 m/s. At 1.0, 2.02
    against 2.40 (16%); see docs/benchmarks.md, Learning."""
    lateral_weight: float = 0.2
    """Penalty per metre of distance from the lane centre."""
    heading_weight: float = 0.2
    """Penalty per radian of heading error."""
    collision_penalty: float = 10.0
    """Penalty on a collision (the episode terminates)."""
    off_road_penalty: float = 10.0
    """Penalty on leaving the road (the episode terminates)."""
    lane_half_width: float = 2.0
    """Lateral offset (m) beyond which the vehicle counts as off-road."""


@dataclass(frozen=True)
class RoadState:
    """What the reward needs from one simulator step."""

    progress_m: float
    """Metres advanced along the route during this step (negative when going back)."""
    speed: float
    """Forward speed, m/s."""
    lateral_m: float
    """Signed distance from the lane centre, m."""
    heading_rad: float
    """Signed angle between vehicle heading and lane direction, rad."""
    collision: bool
    off_road: bool
    dt_s: float = 0.0
    """Simulated seconds of this step; with `cap_progress` the progress credit is capped at
    target_speed * dt_s (0: no cap)."""


def reward(s: RoadState, cfg: RewardConfig) -> float:
    speed_term = max(0.0, 1.0 - abs(s.speed - cfg.target_speed) / cfg.target_speed)
    progress = s.progress_m
    if cfg.cap_progress and s.dt_s > 0.0:
        progress = min(progress, cfg.target_speed * s.dt_s)
    r = (
        cfg.progress_weight * progress
        + cfg.speed_weight * speed_term
        - cfg.lateral_weight * abs(s.lateral_m)
        - cfg.heading_weight * abs(wrap_angle(s.heading_rad))
    )
    if s.collision:
        r -= cfg.collision_penalty
    if s.off_road:
        r -= cfg.off_road_penalty
    return float(r)


def terminated(s: RoadState, route_completion: float) -> bool:
    return bool(s.collision or s.off_road or route_completion >= 1.0)
