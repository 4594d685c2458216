"""Angles and the ego frame, as the contract's vector defines them (shared by every simulator).

Kept free of simulator imports (no highway-env, no carla), so the reward, the embedded simulator and
the CARLA adapter all use these two functions.
"""

from __future__ import annotations

import math

import numpy as np


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Angle(s) in radians wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def to_ego(points: np.ndarray, pos: np.ndarray, heading: float) -> np.ndarray:
    """World points (n, 2) in the ego frame (x forward, y right) of a vehicle at `pos` heading `heading` rad."""
    c, s = math.cos(heading), math.sin(heading)
    d = points - pos
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
