"""A driving route through a CARLA map, and the contract's state vector measured against it.

Pure numpy over (x, y, yaw) samples, so it is testable without a simulator. The
route is built by following `waypoint.next(spacing)` from a start waypoint;
the `carla` wheel on PyPI ships no `agents` package (no GlobalRoutePlanner), so
at a junction we keep the branch that turns least, which gives a consistent,
reproducible route from each start.

Coordinates are CARLA's: x forward, y to the right (left-handed), yaw in
degrees. In the ego frame +x is ahead and +y is to the vehicle's right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout_workers.contract import VECTOR_BOUND
from rollout_workers.envs.ego import to_ego, wrap_angle


@dataclass(frozen=True)
class VectorScales:
    """Divisors that bring vector entries to roughly [-1, 1], as the embedded env normalises them.

    Lateral deviation is divided by the reward's lane_half_width and waypoint
    coordinates by waypoint_spacing_m * waypoints (the look-ahead), both from
    the env config, again as in rollout_workers/envs/embedded.py.
    """

    speed: float = 20.0
    """m/s that maps to 1.0 (the embedded env's max_speed)."""
    heading: float = math.pi / 2
    """Radians of heading error that map to 1.0."""


@dataclass(frozen=True)
class RouteState:
    """Where the ego is relative to the route."""

    s_m: float
    """Arc length of the ego's projection onto the route, m."""
    lateral_m: float
    """Signed distance from the route centre line, m (positive: right of it)."""
    heading_rad: float
    """Ego yaw minus route yaw at the projection, wrapped to [-pi, pi)."""
    index: int
    """Route segment the ego projects onto."""


class Route:
    """A polyline of route points with cumulative arc length."""

    def __init__(self, xy: np.ndarray, yaw_deg: np.ndarray) -> None:
        if len(xy) < 2:
            raise ValueError("a route needs at least two points")
        self.xy = np.asarray(xy, dtype=np.float64)
        self.yaw = np.radians(np.asarray(yaw_deg, dtype=np.float64))
        seg = np.diff(self.xy, axis=0)
        self.seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.length = float(self.s[-1])

    def project(self, x: float, y: float, yaw_deg: float, hint: int = 0, window: int = 8) -> RouteState:
        """Project a pose onto segments near `hint`; a window keeps a looping route from jumping ahead."""
        lo = max(0, hint - window)
        hi = min(len(self.seg_len), hint + window + 1)
        best: tuple[float, int, float] | None = None
        p = np.array([x, y])
        for i in range(lo, hi):
            a, d, n = self.xy[i], self.xy[i + 1] - self.xy[i], self.seg_len[i]
            t = 0.0 if n == 0 else float(np.clip(np.dot(p - a, d) / (n * n), 0.0, 1.0))
            dist = float(np.linalg.norm(a + t * d - p))
            if best is None or dist < best[0] - 1e-12:
                best = (dist, i, t)
        assert best is not None
        _, i, t = best
        a, d, n = self.xy[i], self.xy[i + 1] - self.xy[i], self.seg_len[i]
        # Cross product sign: positive when the point lies to the right in CARLA's left-handed frame.
        cross = float(d[0] * (y - a[1]) - d[1] * (x - a[0]))
        lateral = cross / n if n > 0 else float(np.linalg.norm(p - a))
        seg_yaw = math.atan2(d[1], d[0]) if n > 0 else float(self.yaw[i])
        heading = wrap_angle(math.radians(yaw_deg) - seg_yaw)
        return RouteState(float(self.s[i] + t * n), lateral, heading, i)

    def ahead(self, s_m: float, spacing_m: float, count: int) -> np.ndarray:
        """Points at arc lengths s_m + spacing * (1..count), interpolated; clamped at the route's end."""
        s = np.minimum(s_m + spacing_m * np.arange(1, count + 1), self.length)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.seg_len) - 1)
        t = np.where(self.seg_len[i] > 0, (s - self.s[i]) / np.maximum(self.seg_len[i], 1e-12), 0.0)
        return self.xy[i] + (self.xy[i + 1] - self.xy[i]) * t[:, None]


def state_vector(
    speed: float, rs: RouteState, route: Route, pose: tuple[float, float, float],
    waypoints: int, spacing_m: float, lane_half_width: float, scales: VectorScales,
) -> np.ndarray:
    """The contract's (3 + 2W,) float32 vector: speed, lateral, heading, W waypoints ahead (ego frame)."""
    x, y, yaw_deg = pose
    local = to_ego(route.ahead(rs.s_m, spacing_m, waypoints), np.array([x, y]), math.radians(yaw_deg)) / (spacing_m * waypoints)
    head = [speed / scales.speed, rs.lateral_m / lane_half_width, rs.heading_rad / scales.heading]
    vec = np.concatenate([np.array(head), local.reshape(-1)]).astype(np.float32)
    return np.clip(vec, -VECTOR_BOUND, VECTOR_BOUND)


def build_route(start_waypoint: Any, length_m: float, spacing_m: float) -> Route:
    """Follow `waypoint.next(spacing)` for `length_m`, keeping the branch that turns least at forks.

    Stops early at a dead end; the caller decides whether a short route is acceptable.
    """
    wps = [start_waypoint]
    max_points = int(math.ceil(length_m / spacing_m))
    for _ in range(max_points):
        branches = list(wps[-1].next(spacing_m))
        if not branches:
            break
        yaw = wps[-1].transform.rotation.yaw
        wps.append(min(branches, key=lambda w: abs(wrap_angle(math.radians(w.transform.rotation.yaw - yaw)))))
    xy = np.array([[w.transform.location.x, w.transform.location.y] for w in wps])
    yaw_deg = np.array([w.transform.rotation.yaw for w in wps])
    return Route(xy, yaw_deg)
