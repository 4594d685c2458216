"""The CARLA adapter: a gymnasium.Env over a CARLA 0.9.16 server that obeys the contract.

`carla` is imported only when an env connects, so the rest of the project
works without the wheel; tests inject a test double through `carla_module`.
Every blocking call is bounded (client.set_timeout, world.tick(seconds=...),
queue waits), and every timeout or lost connection surfaces as
`SimulatorError` naming host:port: the rollout worker then truncates the
episode, restarts its server (rollout_workers.carla.server) and recreates the env.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rollout_workers import contract
from rollout_workers.carla.route import VectorScales, build_route, state_vector
from rollout_workers.carla.sensors import FrameQueue, to_gray84
from rollout_workers.contract import SimulatorError
from rollout_workers.reward import RewardConfig, RoadState, reward, terminated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CarlaEnvConfig:
    host: str = "127.0.0.1"
    """CARLA server host (overridden per worker by CARLA_HOSTS or a launched server)."""
    port: int = 2000
    """CARLA RPC port (the streaming port is port + 1)."""
    tm_port: int = 8000
    """Traffic Manager port; for a (host, port) override it is shifted by (port - self.port)."""
    timeout_s: float = 10.0
    """Client timeout for every RPC and for each world.tick; a slower answer is a SimulatorError."""
    load_timeout_s: float = 60.0
    """Timeout for loading the town (done once per server, not per episode)."""
    town: str = "Town01"
    """Map to drive in."""
    fixed_delta_seconds: float = 0.05
    """Simulated seconds per step (synchronous mode)."""
    hybrid_physics: bool = True
    """Traffic Manager hybrid physics: NPCs far from the ego skip full physics."""
    npc_vehicles: int = 0
    """NPC vehicles driven by the Traffic Manager."""
    ego_blueprint: str = "vehicle.tesla.model3"
    """Blueprint id of the ego vehicle."""
    camera_width: int = 84
    """Camera image width in pixels (resampled to 84 if different)."""
    camera_height: int = 84
    """Camera image height in pixels (resampled to 84 if different)."""
    camera_fov: float = 90.0
    """Camera horizontal field of view, degrees."""
    camera_position: tuple[float, float, float] = (1.5, 0.0, 2.4)
    """Camera x (ahead), y (right), z (up) relative to the ego, metres."""
    camera_pitch: float = -15.0
    """Camera pitch, degrees (negative looks down)."""
    waypoints: int = contract.DEFAULT_WAYPOINTS
    """Route waypoints in the vector (W); the vector has 3 + 2W entries."""
    waypoint_spacing_m: float = 2.0
    """Distance between route waypoints, metres."""
    route_length_m: float = 200.0
    """Route length; reaching its end completes (terminates) the episode."""
    max_episode_steps: int = 1000
    """Steps after which the episode is truncated."""
    sensor_timeout_s: float = 2.0
    """Wait for a tick's camera frame before the server counts as hung."""
    warmup_ticks: int = 2
    """Ticks after spawning before the first observation (lets the vehicle settle)."""
    spawn_attempts: int = 10
    """Spawn points tried before the episode start fails."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward and termination, shared with the embedded simulator."""
    scales: VectorScales = field(default_factory=VectorScales)
    """Normalisation of the vector entries."""


def unreachable_hint(host: str, port: int) -> str:
    return (
        f"Check that a CARLA server is running at {host}:{port} (CarlaUE4.sh -RenderOffScreen "
        f"-carla-rpc-port={port}), that {port} is its RPC port (streaming uses {port + 1}), that CARLA_HOSTS "
        f"lists host:port pairs correctly, and that no firewall blocks ports {port}-{port + 1}."
    )


class CarlaEnv(gym.Env):
    """One ego vehicle on a route, in synchronous mode; one instance per server at a time."""

    metadata = {"render_modes": []}

    def __init__(self, config: CarlaEnvConfig | None = None, seed: int | None = None,
                 server: Any = None, carla_module: Any = None) -> None:
        self.config = cfg = config or CarlaEnvConfig()
        self.host, self.port, self.tm_port = _endpoint(cfg, server)
        self.where = f"{self.host}:{self.port}"
        self.observation_space = contract.observation_space(cfg.waypoints)
        self.action_space = contract.action_space()
        self._carla = carla_module
        self._first_seed = seed
        self._client: Any = None
        self._dead = False
        self._sensors: list[Any] = []
        self._vehicles: list[Any] = []
        self._camera = FrameQueue("camera")
        self._collisions = FrameQueue("collision")
        self._invasions = FrameQueue("lane_invasion")

    @contextlib.contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        """The carla client raises RuntimeError on time-outs and lost connections: make it SimulatorError."""
        try:
            yield
        except SimulatorError:
            raise
        except RuntimeError as exc:
            self._dead = True
            raise SimulatorError(f"CARLA server {self.where}: {what} failed: {exc}") from exc

    def _connect(self) -> None:
        cfg = self.config
        if self._carla is None:
            try:
                import carla
            except ImportError as exc:
                raise ImportError("the CARLA env needs the client: pip install carla==0.9.16") from exc
            self._carla = carla
        client = self._carla.Client(self.host, self.port)
        client.set_timeout(cfg.timeout_s)
        try:
            version = client.get_server_version()
        except RuntimeError as exc:
            self._dead = True
            raise SimulatorError(
                f"CARLA server {self.where} did not answer within {cfg.timeout_s:.1f}s ({exc}). "
                + unreachable_hint(self.host, self.port)
            ) from exc
        log.info("connected to CARLA %s at %s", version, self.where)
        with self._rpc("setting up the world"):
            world = client.get_world()
            if world.get_map().name.split("/")[-1] != cfg.town:
                client.set_timeout(cfg.load_timeout_s)
                world = client.load_world(cfg.town)
                client.set_timeout(cfg.timeout_s)
            settings = world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = cfg.fixed_delta_seconds
            world.apply_settings(settings)
            self._tm = client.get_trafficmanager(self.tm_port)
            self._tm.set_synchronous_mode(True)
            self._tm.set_hybrid_physics_mode(cfg.hybrid_physics)
            self._map = world.get_map()
            self._spawn_points = list(self._map.get_spawn_points())
            self._blueprints = world.get_blueprint_library()
        self._client, self._world = client, world

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        super().reset(seed=seed)
        if self._dead:
            raise SimulatorError(f"CARLA server {self.where} failed earlier; recreate the env after a restart")
        if self._client is None:
            self._connect()
        self._destroy_actors()
        with self._rpc("starting an episode"):
            self._spawn_ego()
            self._spawn_npcs()
            self._attach_sensors()
            for _ in range(self.config.warmup_ticks + 1):
                frame = self._tick()
        first = to_gray84(*self._image(frame))
        self._frames = deque([first] * contract.FRAMES, maxlen=contract.FRAMES)
        self._last_frame, self._t, self._s, self._index, self._odometer = frame, 0, 0.0, 0, 0.0
        obs, road, completion = self._observe(start=True)
        return obs, self._info(road, completion)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        steer, pedal = (float(v) for v in np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        with self._rpc("stepping"):
            self._ego.apply_control(self._carla.VehicleControl(
                throttle=max(pedal, 0.0), steer=steer, brake=max(-pedal, 0.0)))
            frame = self._tick()
        self._frames.append(to_gray84(*self._image(frame)))
        hits = self._collisions.events_until(frame, self._last_frame)
        self._invasion_count += len(self._invasions.events_until(frame, self._last_frame))
        self._last_frame = frame
        self._t += 1
        obs, road, completion = self._observe(collision=bool(hits))
        done = terminated(road, completion)
        truncated = not done and self._t >= self.config.max_episode_steps
        return obs, reward(road, self.config.reward), done, truncated, self._info(road, completion)

    def _tick(self) -> int:
        return int(self._world.tick(seconds=self.config.timeout_s))

    def _image(self, frame: int) -> tuple[bytes, int, int]:
        img = self._camera.get(frame, self.config.sensor_timeout_s, self.where)
        return img.raw_data, img.height, img.width

    def _observe(self, collision: bool = False, start: bool = False) -> tuple[dict, RoadState, float]:
        with self._rpc("reading the ego state"):
            tf, vel = self._ego.get_transform(), self._ego.get_velocity()
        x, y, yaw = tf.location.x, tf.location.y, tf.rotation.yaw
        rs = self._route.project(x, y, yaw, hint=self._index)
        # Forward speed: the velocity's component along the vehicle heading.
        speed = vel.x * math.cos(math.radians(yaw)) + vel.y * math.sin(math.radians(yaw))
        progress = 0.0 if start else rs.s_m - self._s
        if not start:
            self._odometer += math.hypot(x - self._xy[0], y - self._xy[1])
        self._s, self._index, self._xy = rs.s_m, rs.index, (x, y)
        road = RoadState(progress_m=progress, speed=speed, lateral_m=rs.lateral_m, heading_rad=rs.heading_rad,
                         collision=collision, off_road=bool(abs(rs.lateral_m) > self.config.reward.lane_half_width),
                         dt_s=self.config.fixed_delta_seconds)
        cfg = self.config
        vec = state_vector(speed, rs, self._route, (x, y, yaw), cfg.waypoints, cfg.waypoint_spacing_m,
                           cfg.reward.lane_half_width, cfg.scales)
        obs = {"image": np.stack(self._frames), "vector": vec}
        return obs, road, min(rs.s_m / self._route.length, 1.0)

    def _info(self, road: RoadState, completion: float) -> dict[str, Any]:
        return {"route_completion": completion, "collision": road.collision, "off_road": road.off_road,
                "distance_m": self._odometer, "speed": road.speed, "lane_invasions": self._invasion_count,
                "frame": self._last_frame}

    def _spawn_ego(self) -> None:
        cfg = self.config
        if not self._spawn_points:
            raise SimulatorError(f"CARLA server {self.where}: map {cfg.town} has no spawn points")
        order = self.np_random.permutation(len(self._spawn_points))[: cfg.spawn_attempts]
        bp = self._blueprints.find(cfg.ego_blueprint)
        bp.set_attribute("role_name", "hero")
        for i in order:
            sp = self._spawn_points[int(i)]
            route = build_route(self._map.get_waypoint(sp.location), cfg.route_length_m, cfg.waypoint_spacing_m)
            if route.length < 0.5 * cfg.route_length_m:
                continue  # a dead end close ahead would end the episode at once
            ego = self._world.try_spawn_actor(bp, sp)
            if ego is not None:
                self._vehicles.append(ego)
                self._ego, self._route, self._ego_spawn = ego, route, int(i)
                return
        raise SimulatorError(f"CARLA server {self.where}: no free spawn point with a route after "
                             f"{len(order)} attempts (too many NPCs, or leftover actors?)")

    def _spawn_npcs(self) -> None:
        if self.config.npc_vehicles <= 0:
            return
        bps = [b for b in self._blueprints.filter("vehicle.*")
               if not b.has_attribute("number_of_wheels") or int(b.get_attribute("number_of_wheels")) == 4]
        others = [i for i in self.np_random.permutation(len(self._spawn_points)) if i != self._ego_spawn]
        for i in others[: self.config.npc_vehicles]:
            npc = self._world.try_spawn_actor(bps[int(self.np_random.integers(len(bps)))], self._spawn_points[i])
            if npc is not None:
                self._vehicles.append(npc)
                npc.set_autopilot(True, self.tm_port)

    def _attach_sensors(self) -> None:
        cfg, c = self.config, self._carla
        cam = self._blueprints.find("sensor.camera.rgb")
        for key, value in (("image_size_x", cfg.camera_width), ("image_size_y", cfg.camera_height),
                           ("fov", cfg.camera_fov), ("sensor_tick", 0.0)):
            cam.set_attribute(key, str(value))
        x, y, z = cfg.camera_position
        mounts = (
            (cam, c.Transform(c.Location(x=x, y=y, z=z), c.Rotation(pitch=cfg.camera_pitch)), self._camera),
            (self._blueprints.find("sensor.other.collision"), c.Transform(), self._collisions),
            (self._blueprints.find("sensor.other.lane_invasion"), c.Transform(), self._invasions),
        )
        for bp, tf, inbox in mounts:
            inbox.clear()
            sensor = self._world.spawn_actor(bp, tf, attach_to=self._ego)
            self._sensors.append(sensor)
            sensor.listen(inbox.put)
        self._invasion_count = 0

    def _destroy_actors(self) -> None:
        """Stop sensors first (no callback may run into a destroyed actor), then destroy all we spawned."""
        sensors, vehicles = self._sensors, self._vehicles
        self._sensors, self._vehicles = [], []
        if not sensors and not vehicles:
            return
        with self._rpc("destroying actors"):
            for s in sensors:
                s.stop()
            batch = [self._carla.command.DestroyActor(a.id) for a in sensors + vehicles]
            for response in self._client.apply_batch_sync(batch, False):
                if response.error:
                    log.warning("CARLA server %s: destroy failed: %s", self.where, response.error)
        for inbox in (self._camera, self._collisions, self._invasions):
            inbox.clear()

    def close(self) -> None:
        """Destroy our actors and leave the server asynchronous; a dead server is left to its supervisor."""
        if self._client is None:
            return
        try:
            if not self._dead:
                self._destroy_actors()
                with self._rpc("leaving synchronous mode"):
                    self._tm.set_synchronous_mode(False)
                    settings = self._world.get_settings()
                    settings.synchronous_mode = False
                    settings.fixed_delta_seconds = None
                    self._world.apply_settings(settings)
        except SimulatorError as exc:
            log.warning("closing the CARLA env: %s", exc)
        finally:
            self._client = self._world = self._tm = None
            self._sensors, self._vehicles = [], []


def _endpoint(cfg: CarlaEnvConfig, server: Any) -> tuple[str, int, int]:
    """(host, rpc port, Traffic Manager port) from a server handle, a (host, port) pair, or the config."""
    if server is None:
        return cfg.host, cfg.port, cfg.tm_port
    if isinstance(server, tuple):
        host, port = server
        tm = cfg.tm_port + (int(port) - cfg.port)
        return str(host), int(port), tm if 1024 <= tm <= 65535 else cfg.tm_port
    return server.host, int(server.port), int(getattr(server, "tm_port", cfg.tm_port))


def make_carla_env(config: CarlaEnvConfig | None = None, seed: int | None = None, server: Any = None,
                   carla_module: Any = None) -> CarlaEnv:
    """Build the CARLA env; `server` is None (use the config), (host, port), or a handle with
    .host/.port/.tm_port such as `rollout_workers.carla.server.CarlaServer.endpoint`."""
    return CarlaEnv(config, seed=seed, server=server, carla_module=carla_module)
