"""Road layouts of the embedded simulator: highway-env's racetrack, and closed loops generated from a seed.

A generated loop (`loop-N`) is a polygon of 5 to 8 corners around a centre, each corner rounded by a
circular arc: straights of different lengths, turns of different radii, and, where a corner is reflex,
turns the other way; half the loops are driven clockwise, half counter-clockwise. Two lanes of 5 m, as
on the racetrack. A seed that gives a loop too tight (a corner sharper than 110 degrees, an arc under
12 m, two stretches of road within 22 m of each other, a loop under 450 m) is redrawn, so every name
gives one drivable loop, the same on every machine.

`TRAINING_LAYOUTS` and `HELD_OUT_LAYOUTS` are the sets the learning benchmark trains on and tests on;
`describe` gives each layout's lengths, radii and turn directions (docs/benchmarks.md lists them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from highway_env.road.lane import CircularLane, LineType, StraightLane
from highway_env.road.road import RoadNetwork

from learner.common.errors import ConfigError

RACETRACK = "racetrack"
TRAINING_LAYOUTS = ("racetrack", "loop-2", "loop-3", "loop-14")
"""Training draws one of these per episode; validation episodes run on them too. Chosen by their geometry
alone (`describe`): both directions of travel, turns of 16-45 m, straights up to 139 m."""
HELD_OUT_LAYOUTS = ("loop-22", "loop-36")
"""Never trained on: only a final evaluation (`--final`) drives them. Each has turns both ways (loop-22:
clockwise with a left turn; loop-36: counter-clockwise with two right turns), unlike most training loops."""
LANE_WIDTH = 5.0
_LOOP_RE = re.compile(r"loop-(\d{1,6})")


class LayoutError(ConfigError):
    """A layout name that names no layout (a ConfigError: a ValueError, and a FleetError the CLI prints)."""


@dataclass(frozen=True)
class LoopSpec:
    """A generated loop: its corners in driving order and each corner's arc radius (of the centre line)."""

    name: str
    corners: tuple[tuple[float, float], ...]
    radii: tuple[float, ...]


def check_name(name: str) -> str:
    """`name` if it names a layout (racetrack, loop-N), else a LayoutError."""
    if name != RACETRACK and not _LOOP_RE.fullmatch(name):
        raise LayoutError(f"unknown road layout {name!r}: use 'racetrack' or 'loop-N' (N a seed, e.g. "
                          f"{', '.join(TRAINING_LAYOUTS + HELD_OUT_LAYOUTS)})")
    return name


def _turns(corners: np.ndarray) -> np.ndarray:
    """Signed turn angle at each corner (positive: to the right on highway-env's y-down screen)."""
    d_in = corners - np.roll(corners, 1, axis=0)
    d_out = np.roll(corners, -1, axis=0) - corners
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    dot = (d_in * d_out).sum(axis=1)
    return np.arctan2(cross, dot)


@lru_cache(maxsize=64)
def loop_spec(name: str) -> LoopSpec:
    """The loop `loop-N` names: drawn from seed N, redrawn (deterministically) until it is drivable."""
    m = _LOOP_RE.fullmatch(check_name(name))
    if m is None:
        raise LayoutError(f"{name!r} is not a generated loop")
    rng = np.random.default_rng([7919, int(m.group(1))])
    for _attempt in range(500):
        n = int(rng.integers(5, 9))
        angles = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
        dist = rng.uniform(60.0, 140.0, n)
        corners = np.stack([dist * np.cos(angles), dist * np.sin(angles)], axis=1)
        if rng.random() < 0.5:  # driven the other way round
            corners = corners[::-1].copy()
        turns = _turns(corners)
        if np.abs(turns).max() > math.radians(110):
            continue
        edges = np.hypot(*(np.roll(corners, -1, axis=0) - corners).T)  # edge i: corner i -> i+1
        radii = rng.uniform(15.0, 45.0, n)
        tangent = radii * np.tan(np.abs(turns) / 2)
        # Each edge keeps a straight of at least 10 m between the two arcs at its ends.
        for i in range(n):
            j = (i + 1) % n
            room = edges[i] - 10.0
            if tangent[i] + tangent[j] > room:
                scale = room / (tangent[i] + tangent[j])
                radii[i], radii[j] = radii[i] * scale, radii[j] * scale
                tangent = radii * np.tan(np.abs(turns) / 2)
        if radii.min() < 12.0:
            continue
        spec = LoopSpec(name, tuple(map(tuple, corners.round(3).tolist())), tuple(radii.round(3).tolist()))
        line = centre_line(spec)
        if _length(line) < 450.0 or not _clear_of_itself(line, 22.0):
            continue
        return spec
    raise LayoutError(f"no drivable loop for {name!r} in 500 draws")


def _segments(spec: LoopSpec, offset: float) -> list[tuple[str, Any]]:
    """The loop's lane at lateral `offset` (m, positive to the right) as straight and arc pieces, in driving
    order: ("straight", (start, end)) and ("arc", (centre, radius, start_phase, end_phase, clockwise))."""
    corners = np.array(spec.corners)
    n = len(corners)
    turns = _turns(corners)
    out: list[tuple[str, Any]] = []
    arcs = []
    for i in range(n):
        d_in = corners[i] - corners[i - 1]
        d_in /= np.hypot(*d_in)
        r, theta = spec.radii[i], turns[i]
        t = r * math.tan(abs(theta) / 2)
        p1 = corners[i] - d_in * t
        right = np.array([-d_in[1], d_in[0]])  # the right-hand normal on a y-down screen
        if theta >= 0:  # a right turn: the centre on the right, phases increasing
            centre = p1 + right * r
            phase0 = math.atan2(-d_in[0], d_in[1])
            arcs.append((centre, r - offset, phase0, phase0 + theta, True))
        else:
            centre = p1 - right * r
            phase0 = math.atan2(d_in[0], -d_in[1])
            arcs.append((centre, r + offset, phase0, phase0 + theta, False))
    for i in range(n):
        c, rad, a0, a1, cw = arcs[i]
        c2, rad2, b0, _b1, cw2 = arcs[(i + 1) % n]
        start = c + rad * np.array([math.cos(a1), math.sin(a1)])
        end = c2 + rad2 * np.array([math.cos(b0), math.sin(b0)])
        out.append(("arc", arcs[i]))
        out.append(("straight", (start, end)))
    return out


def centre_line(spec: LoopSpec, spacing: float = 2.0) -> np.ndarray:
    """Points of the loop's centre line every ~`spacing` m, in driving order."""
    pts = []
    for kind, geo in _segments(spec, 0.0):
        if kind == "straight":
            a, b = geo
            k = max(2, int(np.hypot(*(b - a)) / spacing))
            pts.append(a + (b - a) * np.linspace(0, 1, k, endpoint=False)[:, None])
        else:
            c, r, p0, p1, _cw = geo
            k = max(2, int(abs(p1 - p0) * r / spacing))
            phi = np.linspace(p0, p1, k, endpoint=False)
            pts.append(c + r * np.stack([np.cos(phi), np.sin(phi)], axis=1))
    return np.concatenate(pts)


def _length(line: np.ndarray) -> float:
    return float(np.hypot(*(np.roll(line, -1, axis=0) - line).T).sum())


def _clear_of_itself(line: np.ndarray, gap: float) -> bool:
    """No two points of the line closer than `gap` m unless they are within 3 * gap of each other along it."""
    seg = np.hypot(*(np.roll(line, -1, axis=0) - line).T)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    total = seg.sum()
    d = np.hypot(line[:, None, 0] - line[None, :, 0], line[:, None, 1] - line[None, :, 1])
    along = np.abs(s[:, None] - s[None, :])
    along = np.minimum(along, total - along)
    return bool(((d >= gap) | (along <= 3 * gap)).all())


def build_network(spec: LoopSpec, speed_limit: float = 10.0) -> RoadNetwork:
    """The loop as a highway-env RoadNetwork: one edge per piece, nodes "a", "b", ... (a closed chain of
    single edges, as on the racetrack), two lanes each: lane 0 on the left, lane 1 on the right."""
    net = RoadNetwork()
    lanes = [_segments(spec, (k - 0.5) * LANE_WIDTH) for k in range(2)]
    lines = [(LineType.CONTINUOUS, LineType.STRIPED), (LineType.STRIPED, LineType.CONTINUOUS)]
    count = len(lanes[0])
    names = [_node(i) for i in range(count)]
    for i in range(count):
        a, b = names[i], names[(i + 1) % count]
        for k in range(2):
            kind, geo = lanes[k][i]
            if kind == "straight":
                lane: Any = StraightLane(geo[0], geo[1], line_types=lines[k], width=LANE_WIDTH, speed_limit=speed_limit)
            else:
                c, r, p0, p1, cw = geo
                lane = CircularLane(c, r, p0, p1, clockwise=cw, width=LANE_WIDTH, line_types=lines[k],
                                    speed_limit=speed_limit)
            net.add_lane(a, b, lane)
    return net


def _node(i: int) -> str:
    """a, b, ..., z, aa, ab, ...: node "a" starts the loop, as on the racetrack."""
    letters = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def describe(name: str) -> dict[str, Any]:
    """A layout's figures: centre-line length, straights, arc radii, and turns each way."""
    if name == RACETRACK:
        return {"layout": name, "kind": "highway-env's racetrack"}
    spec = loop_spec(name)
    turns = _turns(np.array(spec.corners))
    straights = [float(np.hypot(*(geo[1] - geo[0]))) for kind, geo in _segments(spec, 0.0) if kind == "straight"]
    return {"layout": name, "length_m": round(_length(centre_line(spec, 0.5)), 1), "corners": len(spec.corners),
            "straights_m": [round(x, 1) for x in straights], "radii_m": [round(r, 1) for r in spec.radii],
            "right_turns": int((turns > 0).sum()), "left_turns": int((turns < 0).sum()),
            "turns_deg": [round(math.degrees(t)) for t in turns]}
