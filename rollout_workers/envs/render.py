"""Top-down, ego-centred grayscale frames for the embedded simulator, drawn with numpy.

The static track (grass, road, lane markings) is painted once per process into a
world raster; each frame samples that raster on a rotated 84x84 grid around the
ego and paints the vehicles as oriented rectangles (about 0.07 ms a frame here).
Unlike highway-env's pygame GrayscaleObservation (world-aligned, about 0.11 ms),
the frame turns with the ego, as a car-mounted view does, and depends on no
display or font stack. The ego faces up (row 0 is ahead); columns grow to the
ego's right.
"""

from __future__ import annotations

import math

import numpy as np
from highway_env.road.lane import LineType
from highway_env.road.road import RoadNetwork

from rollout_workers.envs.geometry import GridSpec, all_lanes, lane_local

GRASS, ROAD, STRIPE, EDGE, EGO, OTHER = 0, 90, 170, 220, 150, 255
"""Gray levels: markings stand out from the road, other vehicles are the brightest."""
LINE_HALF_WIDTH = 0.3
"""Half width of painted lane lines, m; wide enough to survive 0.5 m/pixel sampling."""
STRIPE_PERIOD, STRIPE_ON = 6.0, 3.0
"""Dashed lines: 3 m painted every 6 m."""


def paint_track(network: RoadNetwork, spec: GridSpec) -> np.ndarray:
    """The static world raster (spec.rows, spec.cols) of road surface and lane markings."""
    centres = spec.centres()
    img = np.full(len(centres), GRASS, dtype=np.uint8)
    for lane in all_lanes(network).values():
        s, r = lane_local(lane, centres)
        # A little slack along the lane closes the small gaps where racetrack arcs meet.
        along = (s >= -0.5) & (s <= lane.length + 0.5)
        half = lane.width / 2
        np.maximum(img, np.where(along & (np.abs(r) <= half), ROAD, GRASS).astype(np.uint8), out=img)
        for side, offset in ((0, -half), (1, half)):
            kind = lane.line_types[side]
            on_line = along & (np.abs(r - offset) <= LINE_HALF_WIDTH)
            if kind in (LineType.CONTINUOUS, LineType.CONTINUOUS_LINE):
                img[on_line] = np.maximum(img[on_line], EDGE)
            elif kind == LineType.STRIPED:
                dashed = on_line & (np.mod(s, STRIPE_PERIOD) < STRIPE_ON)
                img[dashed] = np.maximum(img[dashed], STRIPE)
    return img.reshape(spec.rows, spec.cols)


class FrameRenderer:
    """Samples the world raster around the ego and paints vehicles into a (size, size) frame."""

    def __init__(
        self,
        world: np.ndarray,
        spec: GridSpec,
        size: int = 84,
        resolution: float = 0.5,
        ego_row: int = 60,
        vehicle_size: tuple[float, float] = (5.0, 2.0),
    ) -> None:
        self.world, self.spec = world, spec
        self.size, self.res, self.ego_row = size, resolution, ego_row
        self.length, self.width = vehicle_size
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
        self.fwd = (ego_row - rows) * resolution
        """Ego-frame forward coordinate of each pixel centre, m."""
        self.right = (cols - (size - 1) / 2) * resolution
        """Ego-frame rightward coordinate of each pixel centre, m."""
        self._fwd_flat, self._right_flat = self.fwd.ravel(), self.right.ravel()
        self.ego_mask = (np.abs(self.fwd) <= self.length / 2) & (np.abs(self.right) <= self.width / 2)
        self._reach = math.hypot(self.length, self.width) / 2

    def render(self, pos: np.ndarray, heading: float, others: np.ndarray) -> np.ndarray:
        """Frame (size, size) uint8; `others` is (n, 3): x, y, heading of every other vehicle."""
        c, s = math.cos(heading), math.sin(heading)
        spec = self.spec
        wx = pos[0] + self._fwd_flat * c - self._right_flat * s
        wy = pos[1] + self._fwd_flat * s + self._right_flat * c
        col = np.clip(((wx - spec.x0) / spec.res).astype(np.intp), 0, spec.cols - 1)
        row = np.clip(((wy - spec.y0) / spec.res).astype(np.intp), 0, spec.rows - 1)
        frame = self.world[row, col].reshape(self.size, self.size)
        for x, y, h in others:
            self._paint_vehicle(frame, pos, c, s, x, y, h - heading)
        frame[self.ego_mask] = EGO
        return frame

    def _paint_vehicle(self, frame: np.ndarray, pos: np.ndarray, c: float, s: float,
                       x: float, y: float, rel_heading: float) -> None:
        dx, dy = x - pos[0], y - pos[1]
        ex, ey = c * dx + s * dy, -s * dx + c * dy
        # Only the pixels of the vehicle's bounding circle are tested.
        pr, pc = self.ego_row - ex / self.res, (self.size - 1) / 2 + ey / self.res
        reach = self._reach / self.res + 1
        r0, r1 = max(int(pr - reach), 0), min(int(pr + reach) + 1, self.size)
        c0, c1 = max(int(pc - reach), 0), min(int(pc + reach) + 1, self.size)
        if r0 >= r1 or c0 >= c1:
            return
        du = self.fwd[r0:r1, c0:c1] - ex
        dv = self.right[r0:r1, c0:c1] - ey
        ch, sh = math.cos(rel_heading), math.sin(rel_heading)
        inside = (np.abs(du * ch + dv * sh) <= self.length / 2) & (np.abs(-du * sh + dv * ch) <= self.width / 2)
        frame[r0:r1, c0:c1][inside] = OTHER
