"""A test double of the subset of the `carla` 0.9.16 client API the CARLA adapter uses.

`FakeSim` is the server: a map with one curved road (60 m straight along +x,
a 90-degree right turn of radius 30 m, then 60 m along +y) and a side road
branching off to the left at s = 30 m; spawn points every 10 m along the main
road; a kinematic ego; sensors that deliver data for a tick's frame. Knobs make
it misbehave the way real servers do: late, stale, out-of-order or missing
camera frames, collisions, a hang (every call blocks for the client timeout and
raises the real client's RuntimeError) or death. `FakeCarla(sim)` is the
module object injected as `carla_module`.

`SERVER_BACKED` (a `ServerBackedCarla`) is a module object whose clients reach
fake server processes (tests/fake_carla_server.py) instead: a client talks to a
world only while the process on its port answers, and each server process (a
restart gives a new pid) is a fresh world, so supervisor, env and worker can be
tested together: `carla_server.client: tests.fake_carla:SERVER_BACKED`.

Camera images are uniform: every BGRA channel equals (reported frame id) % 256,
so the grayscale value in an observation names the frame it came from.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fake_carla_server import server_pid


@dataclass
class Location:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


@dataclass
class Rotation:
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0


@dataclass
class Vector3D:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


@dataclass
class Transform:
    location: Location = field(default_factory=Location)
    rotation: Rotation = field(default_factory=Rotation)


@dataclass
class VehicleControl:
    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0


@dataclass
class WorldSettings:
    synchronous_mode: bool = False
    fixed_delta_seconds: float | None = None
    no_rendering_mode: bool = False


class DestroyActor:
    def __init__(self, actor: Any) -> None:
        self.actor_id = actor if isinstance(actor, int) else actor.id


class _Command:
    DestroyActor = DestroyActor


@dataclass
class Response:
    error: str = ""
    actor_id: int = 0

    def has_error(self) -> bool:
        return bool(self.error)


@dataclass
class Image:
    frame: int
    width: int
    height: int
    raw_data: bytes


@dataclass
class Event:
    frame: int
    other_actor: Any = None


class Road:
    def __init__(self, pose: Callable[[float], tuple[float, float, float]], length: float) -> None:
        self.pose, self.length = pose, length
        self.branches: list[tuple[float, Road]] = []


def _main_pose(s: float) -> tuple[float, float, float]:
    straight, radius = 60.0, 30.0
    arc = radius * math.pi / 2
    if s <= straight:
        return s, 0.0, 0.0
    if s <= straight + arc:
        th = (s - straight) / radius
        return straight + radius * math.sin(th), radius * (1 - math.cos(th)), math.degrees(th)
    return straight + radius, radius + (s - straight - arc), 90.0


MAIN_ROAD = Road(_main_pose, 60.0 + 30.0 * math.pi / 2 + 60.0)
SIDE_ROAD = Road(lambda s: (30.0, -s, -90.0), 40.0)
MAIN_ROAD.branches.append((30.0, SIDE_ROAD))


class Waypoint:
    lane_width = 3.5

    def __init__(self, road: Road, s: float) -> None:
        self.road, self.s = road, s
        x, y, yaw = road.pose(s)
        self.transform = Transform(Location(x, y, 0.0), Rotation(yaw=yaw))

    def next(self, distance: float) -> list[Waypoint]:
        s2 = self.s + distance
        if s2 > self.road.length + 1e-9:
            return []
        out = [Waypoint(self.road, s2)]
        out += [Waypoint(b, s2 - bs) for bs, b in self.road.branches if self.s < bs <= s2]
        return out


class Map:
    def __init__(self, sim: FakeSim) -> None:
        self.sim = sim
        self.name = f"Carla/Maps/{sim.town}"

    def get_spawn_points(self) -> list[Transform]:
        out = []
        for s in self.sim.spawn_s:
            x, y, yaw = MAIN_ROAD.pose(float(s))
            out.append(Transform(Location(x, y, 0.3), Rotation(yaw=yaw)))
        return out

    def get_waypoint(self, location: Location, project_to_road: bool = True, lane_type: Any = None) -> Waypoint:
        steps = int(MAIN_ROAD.length * 10)
        s = min((i / 10 for i in range(steps + 1)),
                key=lambda s: math.dist(MAIN_ROAD.pose(s)[:2], (location.x, location.y)))
        return Waypoint(MAIN_ROAD, s)


class Blueprint:
    def __init__(self, id: str, **attributes: str) -> None:
        self.id = id
        self.attributes = dict(attributes)

    def set_attribute(self, key: str, value: str) -> None:
        self.attributes[key] = value

    def has_attribute(self, key: str) -> bool:
        return key in self.attributes

    def get_attribute(self, key: str) -> str:
        return self.attributes[key]


BLUEPRINTS = {
    "vehicle.tesla.model3": {"number_of_wheels": "4"},
    "vehicle.audi.a2": {"number_of_wheels": "4"},
    "vehicle.yamaha.yzf": {"number_of_wheels": "2"},
    "sensor.camera.rgb": {"image_size_x": "800", "image_size_y": "600", "fov": "90"},
    "sensor.other.collision": {},
    "sensor.other.lane_invasion": {},
}


class BlueprintLibrary:
    def find(self, id: str) -> Blueprint:
        if id not in BLUEPRINTS:
            raise IndexError(f"blueprint '{id}' not found")
        return Blueprint(id, **BLUEPRINTS[id])

    def filter(self, pattern: str) -> list[Blueprint]:
        return [Blueprint(k, **v) for k, v in BLUEPRINTS.items() if fnmatch.fnmatch(k, pattern)]


class Actor:
    def __init__(self, sim: FakeSim, bp: Blueprint, transform: Transform, parent: Actor | None) -> None:
        self.sim, self.type_id, self.attributes = sim, bp.id, bp.attributes
        self.id = next(sim.ids)
        self.transform, self.parent = transform, parent
        self.velocity = Vector3D()
        self.control = VehicleControl()
        self.autopilot: tuple[bool, int] | None = None
        self.callback: Callable[[Any], None] | None = None

    def get_transform(self) -> Transform:
        self.sim.gate()
        return Transform(Location(**vars(self.transform.location)), Rotation(**vars(self.transform.rotation)))

    def get_velocity(self) -> Vector3D:
        self.sim.gate()
        return Vector3D(**vars(self.velocity))

    def apply_control(self, control: VehicleControl) -> None:
        self.sim.gate()
        self.control = control

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self.autopilot = (enabled, tm_port)

    def listen(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback

    @property
    def is_listening(self) -> bool:
        return self.callback is not None

    def stop(self) -> None:
        self.sim.log.append(("stop", self.id))
        self.callback = None

    def destroy(self) -> bool:
        self.sim.gate()
        return self.sim.destroy(self.id)


class TrafficManager:
    def __init__(self, port: int) -> None:
        self.port = port
        self.synchronous = False
        self.hybrid = False

    def set_synchronous_mode(self, mode: bool) -> None:
        self.synchronous = mode

    def set_hybrid_physics_mode(self, enabled: bool) -> None:
        self.hybrid = enabled


class FakeSim:
    """The simulated server: world state, actors, sensor delivery, failure knobs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, town: str = "Town01") -> None:
        self.host, self.port, self.town = host, port, town
        self.settings = WorldSettings()
        self.spawn_s: list[float] = [float(s) for s in range(0, 130, 10)]
        """Spawn points: arc lengths along the main road."""
        self.frame = 100
        self.ids = itertools.count(1)
        self.live: dict[int, Actor] = {}
        self.log: list[tuple[str, int]] = []
        self.loads: list[str] = []
        self.tms: dict[int, TrafficManager] = {}
        self.timeout_s = 5.0
        self.hang = False
        """Every call blocks for the client timeout, then raises the real client's time-out error."""
        self.dead = False
        """Like hang, and the world is gone."""
        self.dynamics = True
        """Integrate the ego's control each tick; off, the pose changes only through `on_tick`."""
        self.on_tick: Callable[[int], None] | None = None
        """Called in tick after physics, before sensors deliver (set poses, schedule events)."""
        self.camera_deliveries: Callable[[int], list[tuple[int, float]]] | None = None
        """tick frame -> [(reported frame id, delay s)]; default [(frame, 0)]. Empty list: frame lost."""
        self.pending_events: list[tuple[str, int | None]] = []
        """(sensor type, reported frame or None for the tick's) delivered at the next tick."""
        self._timers: list[threading.Timer] = []
        self._wake = threading.Event()

    def gate(self, seconds: float | None = None) -> None:
        if self.hang or self.dead:
            wait = seconds if seconds else self.timeout_s
            self._wake.wait(wait)
            raise RuntimeError(
                f"time-out of {int(wait * 1000)}ms while waiting for the simulator, make sure the "
                f"simulator is ready and connected to {self.host}:{self.port}"
            )

    def die(self) -> None:
        self.dead = True
        self.live.clear()

    def destroy(self, actor_id: int) -> bool:
        self.log.append(("destroy", actor_id))
        return self.live.pop(actor_id, None) is not None

    def spawn(self, bp: Blueprint, tf: Transform, attach_to: Actor | None = None, strict: bool = True) -> Actor | None:
        self.gate()
        if bp.id.startswith("vehicle."):
            for a in self.live.values():
                if a.type_id.startswith("vehicle.") and math.dist(
                        (a.transform.location.x, a.transform.location.y), (tf.location.x, tf.location.y)) < 2.0:
                    if strict:
                        raise RuntimeError("Spawn failed because of collision at spawn position")
                    return None
        actor = Actor(self, bp, Transform(Location(**vars(tf.location)), Rotation(**vars(tf.rotation))), attach_to)
        self.live[actor.id] = actor
        return actor

    def set_pose(self, actor: Actor, x: float, y: float, yaw: float, speed: float) -> None:
        actor.transform = Transform(Location(x, y, 0.0), Rotation(yaw=yaw))
        r = math.radians(yaw)
        actor.velocity = Vector3D(speed * math.cos(r), speed * math.sin(r), 0.0)

    def tick(self, seconds: float = 0.0) -> int:
        self.gate(seconds)
        self.frame += 1
        dt = self.settings.fixed_delta_seconds or 0.05
        if self.dynamics:
            for a in self.live.values():
                if a.type_id.startswith("vehicle.") and a.autopilot is None:
                    self._integrate(a, dt)
        if self.on_tick is not None:
            self.on_tick(self.frame)
        self._deliver()
        return self.frame

    def _integrate(self, a: Actor, dt: float) -> None:
        yaw = math.radians(a.transform.rotation.yaw)
        v = math.hypot(a.velocity.x, a.velocity.y)
        v = max(0.0, v + (4.0 * a.control.throttle - 8.0 * a.control.brake) * dt)
        yaw += v * dt * math.tan(0.6 * a.control.steer) / 2.9
        a.transform.location.x += v * dt * math.cos(yaw)
        a.transform.location.y += v * dt * math.sin(yaw)
        a.transform.rotation.yaw = math.degrees(yaw)
        a.velocity = Vector3D(v * math.cos(yaw), v * math.sin(yaw), 0.0)

    def _deliver(self) -> None:
        events, self.pending_events = self.pending_events, []
        for sensor in list(self.live.values()):
            cb = sensor.callback
            if cb is None:
                continue
            if sensor.type_id == "sensor.camera.rgb":
                plan = self.camera_deliveries(self.frame) if self.camera_deliveries else [(self.frame, 0.0)]
                w, h = int(sensor.attributes["image_size_x"]), int(sensor.attributes["image_size_y"])
                for reported, delay in plan:
                    img = Image(reported, w, h, bytes([reported % 256]) * (w * h * 4))
                    self._send(cb, img, delay)
            for kind, reported in events:
                if sensor.type_id == f"sensor.other.{kind}":
                    self._send(cb, Event(self.frame if reported is None else reported), 0.0)

    def _send(self, cb: Callable[[Any], None], data: Any, delay: float) -> None:
        if delay <= 0:
            cb(data)
            return
        timer = threading.Timer(delay, cb, [data])
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def shutdown(self) -> None:
        """Stop pending deliveries and wake blocked calls (test teardown)."""
        for t in self._timers:
            t.cancel()
        self._wake.set()


class World:
    def __init__(self, sim: FakeSim) -> None:
        self.sim = sim

    def get_map(self) -> Map:
        self.sim.gate()
        return Map(self.sim)

    def get_settings(self) -> WorldSettings:
        self.sim.gate()
        return WorldSettings(**vars(self.sim.settings))

    def apply_settings(self, settings: WorldSettings, seconds: float = 0.0) -> int:
        self.sim.gate(seconds)
        self.sim.settings = WorldSettings(**vars(settings))
        return self.sim.frame

    def get_blueprint_library(self) -> BlueprintLibrary:
        self.sim.gate()
        return BlueprintLibrary()

    def try_spawn_actor(self, bp: Blueprint, tf: Transform, attach_to: Actor | None = None) -> Actor | None:
        return self.sim.spawn(bp, tf, attach_to, strict=False)

    def spawn_actor(self, bp: Blueprint, tf: Transform, attach_to: Actor | None = None) -> Actor:
        actor = self.sim.spawn(bp, tf, attach_to)
        assert actor is not None
        return actor

    def tick(self, seconds: float = 0.0) -> int:
        return self.sim.tick(seconds)


class Client:
    def __init__(self, module: FakeCarla, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0):
        self.module, self.host, self.port = module, host, port
        # No server at this address behaves like a dead one: every call times out.
        self.sim = module.sims.get((host, port)) or _unreachable(host, port)

    def set_timeout(self, seconds: float) -> None:
        self.sim.timeout_s = seconds

    def get_server_version(self) -> str:
        self.sim.gate()
        return "0.9.16"

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_world(self) -> World:
        self.sim.gate()
        return World(self.sim)

    def load_world(self, town: str, reset_settings: bool = True) -> World:
        self.sim.gate()
        self.sim.loads.append(town)
        self.sim.town = town
        self.sim.live.clear()
        if reset_settings:
            self.sim.settings = WorldSettings()
        return World(self.sim)

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        self.sim.gate()
        return self.sim.tms.setdefault(port, TrafficManager(port))

    def apply_batch_sync(self, commands: list[Any], do_tick: bool = False) -> list[Response]:
        self.sim.gate()
        out = []
        for cmd in commands:
            ok = self.sim.destroy(cmd.actor_id)
            out.append(Response("" if ok else f"actor {cmd.actor_id} not found", cmd.actor_id))
        return out


def _unreachable(host: str, port: int) -> FakeSim:
    sim = FakeSim(host, port)
    sim.dead = True
    return sim


class FakeCarla:
    """Stands in for the `carla` module; clients reach the sims registered by (host, port)."""

    Location, Rotation, Transform, Vector3D = Location, Rotation, Transform, Vector3D
    VehicleControl, WorldSettings = VehicleControl, WorldSettings
    command = _Command

    def __init__(self, *sims: FakeSim) -> None:
        self.sims = {(s.host, s.port): s for s in sims}

    def Client(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> Client:  # noqa: N802
        return Client(self, host, port, worker_threads)


class ServerBackedSim(FakeSim):
    """The world of one fake server process: every call first checks that the process `pid` still
    answers on the port, and fails like the real client's time-out once it died, hangs (after the
    client's timeout), or was replaced by a restart."""

    def __init__(self, host: str, port: int, pid: int | None) -> None:
        super().__init__(host, port)
        self.pid = pid
        self.dead = pid is None

    def gate(self, seconds: float | None = None) -> None:
        wait = seconds if seconds else self.timeout_s
        if not self.dead:
            self.dead = server_pid(self.host, self.port, wait) != self.pid
        if self.dead:
            raise RuntimeError(
                f"time-out of {int(wait * 1000)}ms while waiting for the simulator, make sure the "
                f"simulator is ready and connected to {self.host}:{self.port}"
            )


class ServerBackedCarla(FakeCarla):
    """Stands in for the `carla` module; clients reach fake server processes, one world per process."""

    connect_timeout_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.worlds: dict[tuple[str, int, int], ServerBackedSim] = {}

    def Client(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> Client:  # noqa: N802
        client = Client(self, host, port, worker_threads)
        pid = server_pid(host, port, self.connect_timeout_s)
        client.sim = ServerBackedSim(host, port, None) if pid is None else self.worlds.setdefault(
            (host, port, pid), ServerBackedSim(host, port, pid))
        return client


SERVER_BACKED = ServerBackedCarla()
"""`carla_server.client: tests.fake_carla:SERVER_BACKED` drives launched fake server processes."""
