"""Road geometry of the embedded simulator, vectorised with numpy.

Conventions (shared with the contract): world coordinates are highway-env's, whose
screen has y pointing down, so a positive heading change turns the vehicle clockwise
on screen: to the *right*, as in CARLA. Lateral offsets are positive to the right of
the lane direction; ego-frame points are (x forward, y right).

- `lane_local`: (longitudinal, lateral) of many points on one highway-env lane.
- `RouteLine`: a lane path as a closed polyline: projection of the ego (progress,
  lateral offset, heading error) and waypoints ahead.
- `LaneGrid`: for every cell of a grid over the track, the closest lane, so that
  highway-env's per-vehicle, per-substep closest-lane search (a Python loop over
  every lane, most of its step time) becomes one array lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from highway_env.road.lane import AbstractLane, CircularLane, StraightLane
from highway_env.road.road import LaneIndex, RoadNetwork

from rollout_workers.envs.ego import wrap_angle


def lane_local(lane: AbstractLane, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(longitudinal, lateral) of points (n, 2) on `lane`, as highway-env's `local_coordinates`."""
    if isinstance(lane, StraightLane):
        delta = pts - lane.start
        return delta @ lane.direction, delta @ lane.direction_lateral
    if isinstance(lane, CircularLane):
        delta = pts - lane.center
        phi = np.arctan2(delta[:, 1], delta[:, 0])
        phi = lane.start_phase + wrap_angle(phi - lane.start_phase)
        r = np.hypot(delta[:, 0], delta[:, 1])
        return lane.direction * (phi - lane.start_phase) * lane.radius, lane.direction * (lane.radius - r)
    # Other lane kinds are not on our track; stay correct, if slow.
    sr = np.array([lane.local_coordinates(p) for p in pts], dtype=np.float64).reshape(-1, 2)
    return sr[:, 0], sr[:, 1]


def lane_points(lane: AbstractLane, s: np.ndarray) -> np.ndarray:
    """Centre-line points (n, 2) of `lane` at longitudinal positions `s`."""
    if isinstance(lane, StraightLane):
        return lane.start + s[:, None] * lane.direction
    if isinstance(lane, CircularLane):
        phi = lane.direction * s / lane.radius + lane.start_phase
        return lane.center + lane.radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    return np.array([lane.position(float(x), 0.0) for x in s]).reshape(-1, 2)


@dataclass(frozen=True)
class Projection:
    """Where a position lies relative to a route."""

    s: float
    """Arc length along the route loop, in [0, length)."""
    lateral: float
    """Signed distance from the centre line, m (positive: right of the lane direction)."""
    heading: float
    """Route direction at the projection, rad."""
    index: int
    """Polyline segment index, a hint for the next projection."""


class RouteLine:
    """A closed lane path sampled as a polyline every `spacing` metres."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        seg = np.roll(self.points, -1, axis=0) - self.points
        self.seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self.tangents = seg / self.seg_len[:, None]
        self.headings = np.arctan2(self.tangents[:, 1], self.tangents[:, 0])
        self.cum = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.length = float(self.cum[-1])

    @classmethod
    def from_lanes(cls, lanes: list[AbstractLane], spacing: float = 0.5, smooth_m: float = 2.0) -> RouteLine:
        """Chain lanes into a loop, smoothed and resampled every `spacing` metres.

        highway-env's racetrack arcs overlap or leave gaps of up to 0.8 m where they
        meet, some sideways. Samples behind the path so far are dropped (they would
        make the route run backwards), then a moving average over +-`smooth_m` spreads
        each sideways step over a few metres, so the route heading (and the heading
        error in the observation) has no spikes. On a 15 m radius arc the average
        moves the line inward by about 0.05 m.
        """
        pts: list[np.ndarray] = []
        for lane in lanes:
            n = max(2, int(math.ceil(lane.length / spacing)))
            for p in lane_points(lane, np.linspace(0.0, lane.length, n, endpoint=False)):
                if len(pts) >= 2:
                    direction = pts[-1] - pts[-2]
                    if np.dot(p - pts[-1], direction) <= 1e-6:
                        continue
                pts.append(p)
        # The same at the seam: the last lane may run past the first point of the loop.
        while len(pts) > 3 and np.dot(pts[0] - pts[-1], pts[-1] - pts[-2]) <= 1e-6:
            pts.pop()
        return cls(_resample_loop(_smooth_loop(np.array(pts), max(1, round(smooth_m / spacing))), spacing))

    def _segment(self, pos: np.ndarray, hint: int | None) -> int:
        n = len(self.points)
        if hint is None:
            idx = np.arange(n)
        else:  # a local window keeps the search cheap and never jumps across the track
            idx = (hint + np.arange(-40, 120)) % n
        d = self.points[idx] - pos
        i = int(idx[np.argmin(d[:, 0] ** 2 + d[:, 1] ** 2)])
        if np.dot(pos - self.points[i], self.tangents[i]) < 0.0:
            i = (i - 1) % n
        return i

    def project(self, pos: np.ndarray, hint: int | None = None) -> Projection:
        i = self._segment(pos, hint)
        d = pos - self.points[i]
        t = self.tangents[i]
        along = float(np.clip(d[0] * t[0] + d[1] * t[1], 0.0, self.seg_len[i]))
        lateral = float(t[0] * d[1] - t[1] * d[0])
        return Projection((float(self.cum[i]) + along) % self.length, lateral, float(self.headings[i]), i)

    def sample(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points (n, 2) and headings (n,) at arc lengths `s` (wrapped around the loop)."""
        s = np.mod(s, self.length)
        i = np.clip(np.searchsorted(self.cum, s, side="right") - 1, 0, len(self.points) - 1)
        return self.points[i] + self.tangents[i] * (s - self.cum[i])[:, None], self.headings[i]

    def advance(self, s_from: float, s_to: float) -> float:
        """Signed progress from s_from to s_to, the short way round the loop."""
        return float((s_to - s_from + self.length / 2) % self.length - self.length / 2)


def _smooth_loop(points: np.ndarray, half_window: int) -> np.ndarray:
    """Circular moving average over 2 * half_window + 1 points."""
    return np.mean([np.roll(points, k, axis=0) for k in range(-half_window, half_window + 1)], axis=0)


def _resample_loop(points: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` metres of arc length around a closed polyline."""
    closed = np.vstack([points, points[:1]])
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    s = np.arange(0.0, cum[-1] - spacing / 2, spacing)
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


@dataclass(frozen=True)
class GridSpec:
    """A raster over the world: cell (row, col) covers x0 + col*res, y0 + row*res."""

    x0: float
    y0: float
    res: float
    rows: int
    cols: int

    @classmethod
    def around(cls, network: RoadNetwork, res: float, margin: float) -> GridSpec:
        pts = np.concatenate(
            [lane_points(lane, np.linspace(0.0, lane.length, 16)) for lane in all_lanes(network).values()]
        )
        lo, hi = pts.min(axis=0) - margin, pts.max(axis=0) + margin
        cols, rows = np.ceil((hi - lo) / res).astype(int)
        return cls(float(lo[0]), float(lo[1]), res, int(rows), int(cols))

    def centres(self) -> np.ndarray:
        """World coordinates (rows*cols, 2) of every cell centre, row-major."""
        xs = self.x0 + (np.arange(self.cols) + 0.5) * self.res
        ys = self.y0 + (np.arange(self.rows) + 0.5) * self.res
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)


def all_lanes(network: RoadNetwork) -> dict[LaneIndex, AbstractLane]:
    return {
        (a, b, i): lane
        for a, tos in network.graph.items()
        for b, lanes in tos.items()
        for i, lane in enumerate(lanes)
    }


class LaneGrid:
    """Closest lane per grid cell, by the L1 lane distance highway-env itself uses."""

    def __init__(self, network: RoadNetwork, spec: GridSpec) -> None:
        self.spec = spec
        self.lane_indices = list(all_lanes(network))
        lanes = all_lanes(network)
        centres = spec.centres()
        best = np.full(len(centres), np.inf)
        ids = np.zeros(len(centres), dtype=np.int16)
        for k, index in enumerate(self.lane_indices):
            lane = lanes[index]
            s, r = lane_local(lane, centres)
            dist = np.abs(r) + np.maximum(s - lane.length, 0.0) + np.maximum(-s, 0.0)
            closer = dist < best
            best[closer], ids[closer] = dist[closer], k
        self.ids = ids.reshape(spec.rows, spec.cols)

    def closest(self, pos: np.ndarray) -> LaneIndex | None:
        """The closest lane to `pos`, or None outside the grid."""
        col = math.floor((pos[0] - self.spec.x0) / self.spec.res)
        row = math.floor((pos[1] - self.spec.y0) / self.spec.res)
        if 0 <= row < self.spec.rows and 0 <= col < self.spec.cols:
            return self.lane_indices[self.ids[row, col]]
        return None


class GridRoadNetwork(RoadNetwork):
    """A RoadNetwork whose closest-lane query is a grid lookup (heading is ignored).

    Ignoring heading is safe on a track where lanes sharing space run the same way;
    outside the grid it falls back to highway-env's exhaustive search.
    """

    def __init__(self, network: RoadNetwork, grid: LaneGrid) -> None:
        super().__init__()
        self.graph = network.graph
        self.grid = grid

    def get_closest_lane_index(self, position: np.ndarray, heading: float | None = None) -> LaneIndex:
        found = self.grid.closest(position)
        return found if found is not None else super().get_closest_lane_index(position, heading)
