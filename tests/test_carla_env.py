"""The CARLA adapter against the carla API test double (tests/fake_carla.py), and the real client on a closed port."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from rollout_workers.carla.env import CarlaEnv, CarlaEnvConfig, make_carla_env
from rollout_workers.carla.server import Endpoint
from rollout_workers.contract import SimulatorError, check_observation, check_step
from tests.fake_carla import FakeCarla, FakeSim

FAST = CarlaEnvConfig(timeout_s=0.3, sensor_timeout_s=0.3, route_length_m=40.0, warmup_ticks=0)
# Steps of 0.25 s: the progress credit cap (target 8 m/s x 0.25 s = 2 m) leaves the scripted 1-2 m steps whole.
SLOW_STEPS = CarlaEnvConfig(**{**vars(FAST), "fixed_delta_seconds": 0.25})
WHERE = "127.0.0.1:2000"


@pytest.fixture
def sim() -> Iterator[FakeSim]:
    s = FakeSim()
    yield s
    s.shutdown()


def _env(sim: FakeSim, cfg: CarlaEnvConfig = FAST, **kw: object) -> CarlaEnv:
    return make_carla_env(cfg, seed=0, carla_module=FakeCarla(sim), **kw)


def _scripted(sim: FakeSim, env: CarlaEnv, poses: dict[int, tuple[float, float, float, float]],
              events: dict[int, list[tuple[str, int | None]]] | None = None) -> None:
    """Step n (1-based) puts the ego at poses[n] = (x, y, yaw deg, speed) and fires events[n]."""
    sim.dynamics = False
    start = sim.frame

    def on_tick(frame: int) -> None:
        n = frame - start
        if n in poses:
            sim.set_pose(env._ego, *poses[n])
        sim.pending_events += (events or {}).get(n, [])

    sim.on_tick = on_tick


A = (-1, 0)  # unused pedal/steer: scripted poses ignore control


def test_hand_computed_vector_reward_and_termination(sim: FakeSim) -> None:
    sim.spawn_s = [0.0]  # ego at (0, 0), heading +x; the route runs straight along +x for 40 m
    env = _env(sim, SLOW_STEPS)
    obs, info = env.reset()
    check_observation(obs)
    want0 = [0.0, 0.0, 0.0] + [v for k in range(1, 11) for v in (2 * k / 20, 0.0)]
    np.testing.assert_allclose(obs["vector"], want0, atol=1e-6)
    assert info["route_completion"] == 0.0 and info["distance_m"] == 0.0

    _scripted(sim, env, {1: (1.0, 0.5, 10.0, 5.0), 2: (3.0, 0.0, 0.0, 8.0)}, {2: [("collision", None)]})
    step = env.step(np.array(A, np.float32))
    check_step(step)
    obs, r, term, trunc, info = step
    # progress 1 m, speed term 1 - |5 - 8| / 8, lateral 0.5 m, heading 10 deg:
    # 1.0 + 1.0 * 0.625 - 0.2 * 0.5 - 0.2 * 0.17453293 = 1.49009341
    assert r == pytest.approx(1.49009341, abs=1e-6)
    assert (term, trunc) == (False, False)
    v = obs["vector"]
    # speed / 20 m/s, lateral / lane_half_width 2 m, heading / (pi / 2): as the embedded env
    np.testing.assert_allclose(v[:3], [5 / 20, 0.5 / 2, 10 / 90], atol=1e-6)
    # waypoints 2 m apart from the projection s = 1: first (3, 0), offset (2, -0.5) from the ego,
    # rotated by -10 deg = (1.88279142, -0.83970023) m, / (2 m * 10)
    np.testing.assert_allclose(v[3:5], [1.88279142 / 20, -0.83970023 / 20], atol=1e-6)
    # tenth (21, 0): offset (20, -0.5) -> (19.60933097, -3.96536743) m
    np.testing.assert_allclose(v[21:23], [19.60933097 / 20, -3.96536743 / 20], atol=1e-6)
    # distance_m is the odometer: |(1, 0.5)| = 1.11803399 m
    assert info == {**info, "route_completion": pytest.approx(1 / 40), "distance_m": pytest.approx(1.11803399),
                    "speed": pytest.approx(5.0), "collision": False, "off_road": False}

    obs, r, term, trunc, info = env.step(np.array(A, np.float32))
    # progress 2 m, at target speed (term 1.0), on the centre line, minus the collision penalty
    assert r == pytest.approx(2.0 + 1.0 - 10.0, abs=1e-6)
    assert term and not trunc and info["collision"] is True
    env.close()


def test_off_road_route_complete_and_time_limit(sim: FakeSim) -> None:
    sim.spawn_s = [0.0]
    env = _env(sim, SLOW_STEPS)
    env.reset()
    _scripted(sim, env, {1: (2.0, 2.5, 0.0, 4.0)})
    _, r, term, _, info = env.step(np.array(A, np.float32))
    # 2 + 1.0 * 0.5 - 0.2 * 2.5 - 10
    assert info["off_road"] and term and r == pytest.approx(2.0 + 0.5 - 0.5 - 10.0)
    env.reset()
    # the projection searches near the last one (a route may pass close to itself): move 14 m a step
    _scripted(sim, env, {1: (14.0, 0.0, 0.0, 8.0), 2: (28.0, 0.0, 0.0, 8.0), 3: (40.7, 0.0, 0.0, 8.0)})
    for _ in range(3):
        _, _, term, _, info = env.step(np.array(A, np.float32))
    assert term and info["route_completion"] == 1.0 and info["distance_m"] == pytest.approx(40.7)
    env = _env(sim, CarlaEnvConfig(**{**vars(FAST), "max_episode_steps": 3}))
    env.reset()
    sim.on_tick, sim.dynamics = None, False
    results = [env.step(np.array([0.0, 0.0], np.float32)) for _ in range(3)]
    assert [(t, tr) for _, _, t, tr, _ in results] == [(False, False), (False, False), (False, True)]
    env.close()


def test_drives_the_curved_road_under_the_contract(sim: FakeSim) -> None:
    sim.spawn_s = [40.0]  # 20 m of straight, then the 90-degree right turn
    env = _env(sim, CarlaEnvConfig(timeout_s=0.3, sensor_timeout_s=0.3, route_length_m=80.0))
    obs, _ = env.reset()
    heading_seen = []
    for _ in range(600):
        x, y = obs["vector"][7:9] * 20  # third waypoint ahead, ego frame (+y right)
        steer = float(np.clip(math.atan2(y, x) / 0.6 * 2.0, -1, 1))
        pedal = 0.6 if obs["vector"][0] < 0.4 else -0.1  # hold about 8 m/s
        step = env.step(np.array([steer, pedal], np.float32))
        check_step(step)
        obs, _, term, trunc, info = step
        heading_seen.append(env._ego.get_transform().rotation.yaw)
        if term or trunc:
            break
    assert term and info["route_completion"] == 1.0 and not info["off_road"] and not info["collision"]
    assert max(heading_seen) > 80.0  # it went round the bend, not down the straight side road
    env.close()


def test_stale_frames_dropped_and_the_ticks_frame_used(sim: FakeSim) -> None:
    env = _env(sim)
    _, info = env.reset()
    # Each tick delivers two older frames (one far in the past) before its own.
    sim.camera_deliveries = lambda f: [(f - 1, 0.0), (f - 7, 0.0), (f, 0.0)]
    for _ in range(4):
        obs, *_, info = env.step(np.array([0.0, 0.3], np.float32))
    f = info["frame"]
    # each grayscale frame equals its frame id (mod 256): the stack is the last four ticks, oldest first
    assert [int(obs["image"][k].mean()) for k in range(4)] == [(f - 3 + k) % 256 for k in range(4)]
    assert obs["image"].min() == obs["image"].max() - 3
    assert env._camera.stale_dropped == 8
    env.close()


def test_late_and_out_of_order_frames(sim: FakeSim) -> None:
    # A sensor timeout far above the frame's delay: a loaded machine never turns the late frame into a timeout.
    env = _env(sim, CarlaEnvConfig(**{**vars(FAST), "sensor_timeout_s": 60.0}))
    env.reset()
    # the tick's own frame arrives late, after a stale one: waited for, stale one dropped
    sim.camera_deliveries = lambda f: [(f - 1, 0.0), (f, 0.15)]
    t0 = time.monotonic()
    obs, *_, info = env.step(np.array([0.0, 0.3], np.float32))
    assert time.monotonic() - t0 >= 0.14  # it waited for the frame sent 0.15 s after the tick
    assert int(obs["image"][-1, 0, 0]) == info["frame"] % 256  # ... and took it, not the stale one
    assert env._camera.stale_dropped == 1
    # the next tick's frame arrives early (with this tick's): kept for the next step, which gets nothing new
    sim.camera_deliveries = lambda f: [(f + 1, 0.0), (f, 0.0)]
    obs, *_, info = env.step(np.array([0.0, 0.3], np.float32))
    sim.camera_deliveries = lambda f: []
    obs, *_, info = env.step(np.array([0.0, 0.3], np.float32))
    assert int(obs["image"][-1, 0, 0]) == info["frame"] % 256
    env.close()


def test_missing_frame_is_a_simulator_error_within_the_timeout(sim: FakeSim) -> None:
    env = _env(sim)
    env.reset()
    sim.camera_deliveries = lambda f: [(f - 1, 0.0)]  # only a stale frame, never the tick's
    t0 = time.monotonic()
    with pytest.raises(SimulatorError, match=rf"{WHERE}.*no camera data for frame \d+ within 0.3s"):
        env.step(np.array([0.0, 0.3], np.float32))
    # Its own 0.3 s, waited once: not a hang, nor the 2 s default (bounds no load can break).
    assert FAST.sensor_timeout_s * 0.9 <= time.monotonic() - t0 < 30.0
    env.close()  # server still answers: the episode's actors are cleaned up
    assert sim.live == {}


def test_hung_server_is_a_simulator_error_within_the_timeout(sim: FakeSim) -> None:
    env = _env(sim)
    env.reset()
    sim.hang = True
    calls = []
    gate = sim.gate
    sim.gate = lambda seconds=None: (calls.append(seconds), gate(seconds))[1]  # every client call passes here
    t0 = time.monotonic()
    with pytest.raises(SimulatorError, match=rf"{WHERE}: stepping failed: time-out of 300ms"):
        env.step(np.array([0.0, 0.3], np.float32))  # the client's timeout is the config's 0.3 s, not 5 s
    assert FAST.timeout_s * 0.9 <= time.monotonic() - t0 < 30.0  # it waited once; a hang would not return
    assert len(calls) == 1  # one call timed out; none was retried against the hung server
    env.close()  # a hung server is left to its supervisor, not waited on again
    assert len(calls) == 1
    with pytest.raises(SimulatorError, match="recreate the env"):
        env.reset()


def test_dead_server_and_unreachable_server(sim: FakeSim) -> None:
    env = _env(sim)
    env.reset()
    sim.die()
    with pytest.raises(SimulatorError, match=WHERE):
        env.step(np.array([0.0, 0.3], np.float32))
    env.close()
    nobody = make_carla_env(FAST, carla_module=FakeCarla(), server=("10.1.2.3", 2010))
    t0 = time.monotonic()
    with pytest.raises(SimulatorError, match=r"10.1.2.3:2010 did not answer within 0.3s.*running.*CARLA_HOSTS.*firewall"):
        nobody.reset()
    assert time.monotonic() - t0 < 30.0  # the message names the 0.3 s it waited; this only excludes a hang


def test_cleanup_destroys_every_actor_and_leaves_sync_mode(sim: FakeSim) -> None:
    sim.town = "Town03"
    env = _env(sim, CarlaEnvConfig(**{**vars(FAST), "npc_vehicles": 3}))
    env.reset()
    assert sim.settings.synchronous_mode and sim.settings.fixed_delta_seconds == 0.05
    tm = sim.tms[8000]
    assert tm.synchronous and tm.hybrid
    first = set(sim.live)
    assert len(first) == 1 + 3 + 3  # ego, NPCs, three sensors
    npcs = [a for a in sim.live.values() if a.type_id.startswith("vehicle.") and a is not env._ego]
    assert all(a.autopilot == (True, 8000) for a in npcs)
    env.step(np.array([0.0, 0.5], np.float32))
    env.reset()
    assert not first & set(sim.live)  # the first episode's actors are gone
    sensors = [a.id for a in sim.live.values() if a.type_id.startswith("sensor.")]
    env.close()
    assert sim.live == {}
    for sid in sensors:  # stopped before destroyed
        assert sim.log.index(("stop", sid)) < sim.log.index(("destroy", sid))
    assert not sim.settings.synchronous_mode and sim.settings.fixed_delta_seconds is None
    assert not tm.synchronous
    # the town was loaded once, for the first env; a second env on the same server does not reload it
    env2 = _env(sim)
    env2.reset()
    env2.reset()
    env2.close()
    assert sim.loads == ["Town01"] and sim.live == {}


def test_stale_collision_from_an_earlier_episode_is_ignored(sim: FakeSim) -> None:
    env = _env(sim)
    env.reset()
    old = sim.frame - 5  # an event reported for a frame before this episode began
    sim.pending_events = [("collision", old), ("lane_invasion", None)]
    _, _, term, _, info = env.step(np.array([0.0, 0.3], np.float32))
    assert not term and not info["collision"] and info["lane_invasions"] == 1
    env.close()


def test_server_endpoints() -> None:
    cfg = CarlaEnvConfig()
    env = make_carla_env(cfg, server=("10.0.0.5", 2010))
    assert (env.host, env.port, env.tm_port) == ("10.0.0.5", 2010, 8010)
    env = make_carla_env(cfg, server=Endpoint("h", 2020, 2023))
    assert (env.host, env.port, env.tm_port) == ("h", 2020, 2023)


def test_carla_is_imported_lazily() -> None:
    code = "import sys, rollout_workers.carla.env as m; m.make_carla_env(); assert 'carla' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_real_client_on_a_closed_port_fails_fast_and_clearly() -> None:
    pytest.importorskip("carla", reason="the carla client wheel is not installed here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    env = make_carla_env(CarlaEnvConfig(port=port, timeout_s=1.0))
    t0 = time.monotonic()
    with pytest.raises(SimulatorError) as err:
        env.reset()
    elapsed = time.monotonic() - t0
    # Its own 1 s timeout, not the client's default of CarlaEnvConfig().timeout_s (10 s): a bound that load
    # cannot reach, half of what the default would take.
    assert elapsed < CarlaEnvConfig().timeout_s / 2
    msg = str(err.value)
    for part in (f"127.0.0.1:{port}", "is running", "RPC port", "CARLA_HOSTS", "firewall"):
        assert part in msg
    env.close()


def test_validate_env_with_random_actions(sim: FakeSim) -> None:
    from rollout_workers.contract import validate_env

    env = _env(sim, CarlaEnvConfig(**{**vars(FAST), "max_episode_steps": 30, "npc_vehicles": 2}))
    assert validate_env(env, steps=100) >= 3
    env.close()
    assert sim.live == {}
