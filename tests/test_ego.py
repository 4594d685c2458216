"""The one angle wrap and ego-frame transform every simulator's vector and the reward use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout_workers.envs.ego import to_ego, wrap_angle


@pytest.mark.parametrize("angle, wrapped", [(0.0, 0.0), (math.pi / 2, math.pi / 2), (3 * math.pi / 2, -math.pi / 2),
                                            (-3 * math.pi / 2, math.pi / 2), (math.pi, -math.pi), (7.0, 7.0 - 2 * math.pi)])
def test_wrap_angle_lands_in_minus_pi_to_pi(angle: float, wrapped: float) -> None:
    assert wrap_angle(angle) == pytest.approx(wrapped)
    assert np.allclose(wrap_angle(np.array([angle])), [wrapped])


def test_to_ego_puts_ahead_on_plus_x_and_right_on_plus_y() -> None:
    # A car at (10, 5) heading +y in a world whose y grows to the right of +x (highway-env's and CARLA's).
    pos, heading = np.array([10.0, 5.0]), math.pi / 2
    points = np.array([[10.0, 8.0], [9.0, 5.0], [10.0, 5.0]])  # 3 m ahead, 1 m to its right, itself
    assert np.allclose(to_ego(points, pos, heading), [[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
