"""The embedded default simulator: lane following with traffic on highway-env's racetrack.

highway-env provides the road network, the kinematic ego vehicle and the IDM
traffic; this adapter provides everything the contract needs, computed from road
geometry rather than from highway-env's observations:

- the route: the ego's lane around the track, `route_length_m` long from a random start;
- the 23-value vector: speed, lateral offset, heading error, waypoints ahead (ego frame);
- top-down ego-centred 84x84 grayscale frames drawn with numpy (`render.py`), stacked by 4;
- reward and termination from `rollout_workers.reward` (the CARLA adapter uses the same).

Traffic sharing the ego's lane is faster than the target speed by default, so a
driver that keeps its lane at the target speed is never forced to brake; the
scripted reference driver (`rollout_workers.scripted`) relies on that, having no
perception of vehicles. Other vehicles never change lanes, for the same reason.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

# highway-env imports pygame; keep it headless and quiet (stdout carries CLI JSON).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from highway_env.envs.racetrack_env import RacetrackEnv  # noqa: E402
from highway_env.road.road import Road  # noqa: E402
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402

from rollout_workers import contract  # noqa: E402
from rollout_workers.envs.ego import to_ego, wrap_angle  # noqa: E402
from rollout_workers.envs.geometry import (  # noqa: E402
    GridRoadNetwork,
    GridSpec,
    LaneGrid,
    RouteLine,
)
from rollout_workers.envs.layouts import (  # noqa: E402
    RACETRACK,
    TRAINING_LAYOUTS,
    build_network,
    check_name,
    loop_spec,
)
from rollout_workers.envs.render import FrameRenderer, paint_track  # noqa: E402
from rollout_workers.reward import RewardConfig, RoadState, reward, terminated  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedEnvConfig:
    waypoints: int = contract.DEFAULT_WAYPOINTS
    """Route waypoints W in the observation vector (3 + 2W values); must equal network.waypoints."""
    waypoint_spacing_m: float = 2.0
    """Distance between consecutive waypoints along the route, m."""
    max_episode_steps: int = 300
    """Env steps before the episode is truncated (time limit; bootstraps)."""
    route_length_m: float = 300.0
    """Route length, m; about 40 s at the default target speed, well within the time limit."""
    vehicles_count: int = 6
    """Other vehicles on the track (fewer when no clear spot is found)."""
    traffic_speed: tuple[float, float] = (5.0, 11.0)
    """Range of desired speeds (m/s) of traffic in the other lane."""
    ego_lane_traffic_speed: tuple[float, float] = (10.0, 12.0)
    """Range of desired speeds (m/s) of traffic in the ego's lane: faster than the target speed."""
    spawn_clearance_m: float = 30.0
    """No other vehicle starts closer than this to the ego."""
    initial_speed_max: float = 4.0
    """The ego starts at a speed drawn uniformly from [0, this], m/s."""
    simulation_frequency: int = 15
    """Physics steps per simulated second."""
    policy_frequency: int = 5
    """Env steps (actions) per simulated second; must divide simulation_frequency."""
    max_speed: float = 20.0
    """Ego speed cap, m/s; also the scale of the speed entry of the vector."""
    max_acceleration: float = 4.0
    """Acceleration at full throttle (throttle_brake = 1), m/s^2."""
    max_braking: float = 8.0
    """Deceleration at full brake (throttle_brake = -1), m/s^2; braking stops at standstill, never reverses."""
    max_steering: float = math.pi / 4
    """Front wheel angle at full steer, rad."""
    image_resolution_m: float = 0.5
    """Metres per pixel of the 84x84 frames (42 m across)."""
    ego_row: int = 60
    """Image row of the ego's centre: 30 m visible ahead, 12 m behind at 0.5 m/pixel."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights, target speed and the off-road threshold (shared with CARLA)."""
    layouts: tuple[str, ...] = TRAINING_LAYOUTS
    """Road layouts an episode is drawn from, one per episode: 'racetrack' (highway-env's) or 'loop-N', a loop
    generated from seed N (rollout_workers/envs/layouts.py; its TRAINING_LAYOUTS and HELD_OUT_LAYOUTS).
    Default: the four training layouts; on validation seeds 10, 11 and 12 training on them reached the level
    as soon as on the racetrack alone (docs/benchmarks.md, "Roads and seeds for issue 28")."""

    def __post_init__(self) -> None:
        if self.waypoints < 1:
            raise ValueError(f"waypoints must be >= 1, got {self.waypoints}")
        if self.policy_frequency < 1 or self.simulation_frequency % self.policy_frequency:
            raise ValueError(
                f"policy_frequency ({self.policy_frequency}) must divide simulation_frequency "
                f"({self.simulation_frequency})"
            )
        for name in ("traffic_speed", "ego_lane_traffic_speed"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if min(self.max_episode_steps, self.route_length_m, self.max_speed, self.waypoint_spacing_m) <= 0:
            raise ValueError("max_episode_steps, route_length_m, max_speed and waypoint_spacing_m must be > 0")
        if not self.layouts:
            raise ValueError("layouts must name at least one road layout")
        for name in self.layouts:
            check_name(name)


@dataclass(frozen=True)
class _TrackAssets:
    """Static products of one layout's geometry, built once per process."""

    routes: tuple[RouteLine, ...]
    grid: LaneGrid
    world: np.ndarray
    spec: GridSpec


_ASSETS: dict[str, _TrackAssets] = {}
MAP_RESOLUTION_M = 0.25


def _lane_loop(network: Any, lane_id: int, start: str = "a") -> list[Any]:
    lanes, node = [], start
    while True:
        (nxt, edge), = network.graph[node].items()  # every layout is one loop of single edges from "a"
        lanes.append(edge[lane_id])
        node = nxt
        if node == start:
            return lanes


def _track_assets(layout: str, network: Any) -> _TrackAssets:
    if layout not in _ASSETS:
        spec = GridSpec.around(network, MAP_RESOLUTION_M, margin=10.0)
        routes = tuple(RouteLine.from_lanes(_lane_loop(network, k)) for k in range(2))
        _ASSETS[layout] = _TrackAssets(routes, LaneGrid(network, spec), paint_track(network, spec), spec)
        log.debug("built %s assets: %d x %d map, routes %s m", layout, spec.rows, spec.cols,
                  [round(r.length, 1) for r in routes])
    return _ASSETS[layout]


class _Track(RacetrackEnv):
    """highway-env's racetrack, or a generated loop, with our own vehicle placement and a grid lane lookup."""

    def __init__(self, cfg: EmbeddedEnvConfig) -> None:
        self.cfg = cfg  # before super().__init__, which already resets
        self.layout = cfg.layouts[0]
        """The layout the next reset builds (the env picks it per episode)."""
        self.assets: _TrackAssets | None = None
        self.route_lane = 0
        accel = (-cfg.max_braking, cfg.max_acceleration)
        super().__init__(config={
            # highway-env's own observation is unused; attributes [] is the cheapest kind.
            "observation": {"type": "AttributesObservation", "attributes": []},
            "action": {"type": "ContinuousAction", "longitudinal": True, "lateral": True,
                       "acceleration_range": accel, "steering_range": (-cfg.max_steering, cfg.max_steering),
                       "speed_range": (0.0, cfg.max_speed)},
            "simulation_frequency": cfg.simulation_frequency,
            "policy_frequency": cfg.policy_frequency,
            "other_vehicles": 0,
            "duration": 10**9,  # the adapter owns the time limit
        })

    def _make_road(self) -> None:
        if self.layout == RACETRACK:
            super()._make_road()
        else:
            self.road = Road(network=build_network(loop_spec(self.layout)), np_random=self.np_random,
                             record_history=self.config["show_trajectories"],
                             neighbour_vehicles_connected_lanes=self.config["neighbour_vehicles_connected_lanes"])
        self.assets = _track_assets(self.layout, self.road.network)
        self.road.network = GridRoadNetwork(self.road.network, self.assets.grid)
        for tos in self.road.network.graph.values():
            for lanes in tos.values():
                for lane in lanes:  # IDM caps desired speeds at the lane limit (10 m/s here)
                    lane.speed_limit = self.cfg.max_speed

    def _make_vehicles(self) -> None:
        cfg, rng, routes = self.cfg, self.np_random, self.assets.routes
        self.route_lane = int(rng.integers(len(routes)))
        route = routes[self.route_lane]
        pts, heads = route.sample(np.array([rng.uniform(0.0, route.length)]))
        ego = self.action_type.vehicle_class(self.road, pts[0], float(heads[0]),
                                             float(rng.uniform(0.0, cfg.initial_speed_max)))
        self.controlled_vehicles = [ego]
        self.road.vehicles.append(ego)
        taken = [pts[0]]
        for _ in range(cfg.vehicles_count):
            for _attempt in range(20):
                lane = int(rng.integers(len(routes)))
                p, h = routes[lane].sample(np.array([rng.uniform(0.0, routes[lane].length)]))
                gaps = np.hypot(*(np.array(taken) - p[0]).T)
                if gaps[0] >= cfg.spawn_clearance_m and gaps[1:].min(initial=np.inf) >= 12.0:
                    break
            else:
                continue
            lo, hi = cfg.ego_lane_traffic_speed if lane == self.route_lane else cfg.traffic_speed
            speed = float(rng.uniform(lo, hi))
            self.road.vehicles.append(IDMVehicle(self.road, p[0], float(h[0]), speed,
                                                 target_speed=speed, enable_lane_change=False))
            taken.append(p[0])


class EmbeddedDrivingEnv(gym.Env):
    """Lane following with traffic; obeys the observation/action contract (`contract.py`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, config: EmbeddedEnvConfig | None = None, seed: int | None = None,
                 render_mode: str | None = None) -> None:
        self.config = cfg = config or EmbeddedEnvConfig()
        self.render_mode = render_mode
        self.observation_space = contract.observation_space(cfg.waypoints)
        self.action_space = contract.action_space()
        self._sim = _Track(cfg)
        assets = self._sim.assets
        self._renderers: dict[str, FrameRenderer] = {}
        self._renderer = self._renderer_for(self._sim.layout)
        self._wp_offsets = cfg.waypoint_spacing_m * np.arange(1, cfg.waypoints + 1)
        self._wp_scale = cfg.waypoint_spacing_m * cfg.waypoints
        self._frames = np.zeros((contract.FRAMES, contract.IMAGE_SIZE, contract.IMAGE_SIZE), np.uint8)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
        self._route: RouteLine = assets.routes[0]
        self._s = self._travelled = self._odometer = 0.0
        self._hint = 0
        self._steps = 0
        self._pos = np.zeros(2)
        self._overview: FrameRenderer | None = None

    def _renderer_for(self, layout: str) -> FrameRenderer:
        if layout not in self._renderers:
            assets = _ASSETS[layout]
            self._renderers[layout] = FrameRenderer(assets.world, assets.spec, contract.IMAGE_SIZE,
                                                    self.config.image_resolution_m, self.config.ego_row)
        return self._renderers[layout]

    @property
    def layout(self) -> str:
        """The road layout of the current episode."""
        return self._sim.layout

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed  # the factory's seed drives the first episode
        self._pending_seed = None
        super().reset(seed=seed)
        layouts = self.config.layouts
        if len(layouts) > 1:  # one layout draws nothing here: its episodes are those of before layouts existed
            self._sim.layout = layouts[int(self.np_random.integers(len(layouts)))]
        # Everything random in an episode flows from our generator through this one draw.
        self._sim.reset(seed=int(self.np_random.integers(2**31 - 1)))
        if self._renderer is not self._renderer_for(self._sim.layout):
            self._renderer = self._renderer_for(self._sim.layout)
            self._overview = None
        self._route = self._sim.assets.routes[self._sim.route_lane]
        ego = self._sim.vehicle
        self._pos = ego.position.copy()
        proj = self._route.project(self._pos)
        self._s, self._hint = proj.s, proj.index
        self._travelled = self._odometer = 0.0
        self._steps = 0
        self._frames[:] = self._frame()
        return self._observation(proj), self._info(proj, False, False)

    def step(self, action: np.ndarray):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (contract.ACTION_DIM,) or not np.isfinite(a).all():
            raise contract.ContractError(f"action must be finite (2,) [steer, throttle_brake], got {action!r}")
        steer, throttle_brake = np.clip(a, -1.0, 1.0)
        cfg, ego = self.config, self._sim.vehicle
        accel = throttle_brake * (cfg.max_acceleration if throttle_brake >= 0 else cfg.max_braking)
        accel = max(accel, -ego.speed * cfg.policy_frequency)  # brake to a stop, never into reverse
        # highway-env's ContinuousAction takes [acceleration, steering], each mapped from [-1, 1].
        lo, hi = -cfg.max_braking, cfg.max_acceleration
        self._sim.step(np.array([2.0 * (accel - lo) / (hi - lo) - 1.0, steer]))
        self._steps += 1

        pos = ego.position.copy()
        proj = self._route.project(pos, self._hint)
        progress = self._route.advance(self._s, proj.s)
        self._s, self._hint = proj.s, proj.index
        self._travelled += progress
        self._odometer += float(np.hypot(*(pos - self._pos)))
        self._pos = pos
        off_road = abs(proj.lateral) > cfg.reward.lane_half_width
        state = RoadState(progress, float(ego.speed), proj.lateral, float(wrap_angle(ego.heading - proj.heading)),
                          bool(ego.crashed), off_road, dt_s=1.0 / cfg.policy_frequency)
        completion = self._completion()
        done = terminated(state, completion)
        truncated = not done and self._steps >= cfg.max_episode_steps
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = self._frame()
        return (self._observation(proj), reward(state, cfg.reward), done, truncated,
                self._info(proj, state.collision, off_road))

    def _completion(self) -> float:
        return float(np.clip(self._travelled / self.config.route_length_m, 0.0, 1.0))

    def _frame(self) -> np.ndarray:
        ego = self._sim.vehicle
        others = np.array([(v.position[0], v.position[1], v.heading) for v in self._sim.road.vehicles
                           if v is not ego]).reshape(-1, 3)
        return self._renderer.render(ego.position, float(ego.heading), others)

    def _observation(self, proj: Any) -> dict[str, np.ndarray]:
        cfg, ego = self.config, self._sim.vehicle
        vec = np.empty(contract.vector_dim(cfg.waypoints), dtype=np.float32)
        vec[0] = ego.speed / cfg.max_speed
        vec[1] = proj.lateral / cfg.reward.lane_half_width
        vec[2] = wrap_angle(ego.heading - proj.heading) / (math.pi / 2)
        pts, _ = self._route.sample(proj.s + self._wp_offsets)
        vec[3:] = (to_ego(pts, ego.position, float(ego.heading)) / self._wp_scale).ravel()
        np.clip(vec, -contract.VECTOR_BOUND, contract.VECTOR_BOUND, out=vec)
        return {"image": self._frames.copy(), "vector": vec}

    def _info(self, proj: Any, collision: bool, off_road: bool) -> dict[str, Any]:
        return {
            "route_completion": self._completion(),
            "collision": bool(collision),
            "off_road": bool(off_road),
            "distance_m": self._odometer,
            "speed": float(self._sim.vehicle.speed),
            "lateral_m": float(proj.lateral),
            "route_lane": self._sim.route_lane,
            "layout": self._sim.layout,
        }

    def overview(self, size: int = 256, resolution_m: float = 0.3) -> np.ndarray:
        """A top-down RGB view around the ego for videos, larger than the network's 84x84 input: the
        road and other vehicles (gray), the ego (red), the route ahead (green). (size, size, 3) uint8."""
        if self._overview is None or self._overview.size != size or self._overview.res != resolution_m:
            assets = self._sim.assets
            self._overview = FrameRenderer(assets.world, assets.spec, size, resolution_m, int(size * 0.7))
        view, ego = self._overview, self._sim.vehicle
        others = np.array([(v.position[0], v.position[1], v.heading) for v in self._sim.road.vehicles
                           if v is not ego]).reshape(-1, 3)
        gray = view.render(ego.position, float(ego.heading), others)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        pts, _ = self._route.sample(self._s + np.arange(2.0, 80.0, 2.0))
        local = to_ego(pts, ego.position, float(ego.heading))
        rows = np.round(view.ego_row - local[:, 0] / view.res).astype(int)
        cols = np.round((size - 1) / 2 + local[:, 1] / view.res).astype(int)
        for r, c in zip(rows, cols):
            if 1 <= r < size - 1 and 1 <= c < size - 1:
                rgb[r - 1:r + 2, c - 1:c + 2] = (40, 200, 60)
        rgb[view.ego_mask] = (220, 40, 40)
        return rgb

    def render(self) -> np.ndarray | None:
        """The newest frame as RGB (rgb_array mode), for videos and debugging."""
        if self.render_mode != "rgb_array":
            return None
        return np.repeat(self._frames[-1][:, :, None], 3, axis=2)

    def close(self) -> None:
        self._sim.close()


def make_env(config: EmbeddedEnvConfig | None = None, seed: int | None = None,
             render_mode: str | None = None) -> gym.Env:
    """The embedded simulator; `seed` seeds the first reset when reset() is given none."""
    return EmbeddedDrivingEnv(config, seed=seed, render_mode=render_mode)
