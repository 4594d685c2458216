"""Proportional prioritization (Schaul et al., 2016): P(i) ~ (|td_i| + eps)^alpha over a sum tree."""

from __future__ import annotations

import numpy as np
import torch

from learner.replay.rings import Rings
from learner.replay.sum_tree import SumTree


class Priorities:
    """Priority of every step slot; a new step starts at the highest priority seen so far.

    A step's leaf is zero until its n-step window completes, and again once it leaves the
    sampling window, so draws only land on sampleable steps (or are redrawn).
    """

    def __init__(self, rings: Rings, alpha: float, eps: float, beta: float, beta_final: float,
                 beta_anneal_samples: int) -> None:
        self.rings, self.alpha, self.eps = rings, alpha, eps
        self.beta0, self.beta_final, self.beta_anneal_samples = beta, beta_final, beta_anneal_samples
        self.tree = SumTree(rings.capacity)
        self.max_priority = 1.0

    @property
    def nbytes(self) -> int:
        return self.tree.tree.nbytes

    @property
    def leaves(self) -> np.ndarray:
        return self.tree.leaves

    def zero(self, slots: np.ndarray) -> None:
        """Steps not (or no longer) sampleable."""
        self.tree.update(slots, 0.0)
        self.rings.mark("prio", slots)

    def admit(self, slots: np.ndarray | list[int]) -> None:
        """Steps whose n-step window completed: the highest priority so far."""
        slots = np.asarray(slots, np.int64)
        self.tree.update(slots, self.max_priority ** self.alpha)
        self.rings.mark("prio", slots)

    def beta(self, samples: int) -> float:
        """Importance-weight exponent after `samples` batches (linear anneal, then constant)."""
        if self.beta_anneal_samples <= 0:
            return self.beta0
        return self.beta0 + (self.beta_final - self.beta0) * min(1.0, samples / self.beta_anneal_samples)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """Global step ids drawn proportionally to priority; None when every priority is zero."""
        if self.tree.total <= 0:
            return None
        return self.rings.ids(self.tree.find(rng.random(n) * self.tree.total))

    def reject(self, ids: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Add to `bad` the draws whose leaf is zero, and zero the leaves of all bad draws, so drawing
        again stays proportional over the valid ones."""
        cap = self.rings.capacity
        bad = bad | (self.tree.leaves[ids % cap] <= 0)
        self.tree.update(ids[bad] % cap, 0.0)
        return bad

    def nonzero(self, ids: np.ndarray) -> np.ndarray:
        return ids[self.tree.leaves[ids % self.rings.capacity] > 0]

    def choose(self, ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` of `ids` drawn proportionally to their priorities (the fallback when rejection fails)."""
        p = self.tree.leaves[ids % self.rings.capacity]
        return rng.choice(ids, n, p=p / p.sum())

    def weights(self, slots: np.ndarray, samples: int) -> torch.Tensor:
        """(N P_i)^-beta / max_j (N P_j)^-beta over the batch: N and the total cancel."""
        p = self.tree.leaves[slots]
        return torch.from_numpy((p.min() / p) ** self.beta(samples)).float()

    def update(self, ids: np.ndarray, td: np.ndarray) -> None:
        """Set priorities (|td| + eps)^alpha of still-sampleable ids (`td` already |td| + eps)."""
        ok = self.rings.valid(ids) & np.isfinite(td)
        if ok.any():
            self.max_priority = max(self.max_priority, float(td[ok].max()))
            slots = ids[ok] % self.rings.capacity
            self.tree.update(slots, td[ok] ** self.alpha)
            self.rings.mark("prio", slots)

    def fill_uniform(self, ids: np.ndarray) -> None:
        """Every one of `ids` at the highest priority (a uniform replay resumed as prioritized)."""
        self.tree.leaves[ids % self.rings.capacity] = self.max_priority ** self.alpha
