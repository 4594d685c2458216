"""`Batch`: the transitions one update consumes, as the replay samples them.

It lives with the replay, which builds it, so the replay never imports the algorithm; `learner.td3`
imports it from here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """Transitions for one update. `discount` is gamma^n * (1 - terminated): truncation bootstraps."""

    image: torch.Tensor  # uint8 (B, 4, 84, 84)
    vector: torch.Tensor  # float32 (B, V)
    action: torch.Tensor  # float32 (B, 2)
    reward: torch.Tensor  # float32 (B,), n-step discounted sum when n > 1
    discount: torch.Tensor  # float32 (B,)
    next_image: torch.Tensor  # uint8 (B, 4, 84, 84)
    next_vector: torch.Tensor  # float32 (B, V)
    weight: torch.Tensor | None = None  # importance weights (prioritized replay), else None

    def to(self, device: torch.device) -> Batch:
        return Batch(*(None if t is None else t.to(device, non_blocking=True) for t in self))
