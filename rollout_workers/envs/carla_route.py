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


@dataclass(frozen=True)
class VectorScales:
    """Divisors that bring each vector entry to roughly [-1, 1] (the contract's normalisation)."""

    speed: float = 10.0
    """m/s that maps to 1.0 (a little above the default 8 m/s target speed)."""
    lateral: float = 2.0
    """Metres of lateral deviation that map to 1.0 (the default off-road threshold)."""
    heading: float = math.pi
    """Radians of heading error that map to 1.0."""
    waypoint: float = 20.0
    """Metres (ego frame) that map to 1.0 for waypoint coordinates (10 waypoints x 2 m)."""


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


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


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
        heading = _wrap(math.radians(yaw_deg) - seg_yaw)
        return RouteState(float(self.s[i] + t * n), lateral, heading, i)

    def ahead(self, s_m: float, count: int) -> np.ndarray:
        """The next `count` route points strictly beyond arc length `s_m`, padded with the last point."""
        first = int(np.searchsorted(self.s, s_m, side="right"))
        idx = np.minimum(np.arange(first, first + count), len(self.xy) - 1)
        return self.xy[idx]


def ego_frame(points: np.ndarray, x: float, y: float, yaw_deg: float) -> np.ndarray:
    """World points (N, 2) to the ego frame: +x ahead, +y to the right."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    d = points - np.array([x, y])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def state_vector(
    speed: float, rs: RouteState, route: Route, x: float, y: float, yaw_deg: float,
    waypoints: int, scales: VectorScales,
) -> np.ndarray:
    """The contract's (3 + 2W,) float32 vector: speed, lateral, heading, W waypoints ahead (ego frame)."""
    local = ego_frame(route.ahead(rs.s_m, waypoints), x, y, yaw_deg) / scales.waypoint
    head = [speed / scales.speed, rs.lateral_m / scales.lateral, rs.heading_rad / scales.heading]
    return np.concatenate([np.array(head), local.reshape(-1)]).astype(np.float32)


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
        wps.append(min(branches, key=lambda w: abs(_wrap(math.radians(w.transform.rotation.yaw - yaw)))))
    xy = np.array([[w.transform.location.x, w.transform.location.y] for w in wps])
    yaw_deg = np.array([w.transform.rotation.yaw for w in wps])
    return Route(xy, yaw_deg)
