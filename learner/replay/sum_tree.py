"""A vectorised sum tree for proportional prioritized replay (Schaul et al., 2016)."""

from __future__ import annotations

import numpy as np


class SumTree:
    """Leaf priorities with O(log n) batched update and proportional sampling.

    Parents are always recomputed from their children, never incremented, so
    float error does not accumulate over millions of updates.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 1 << max(0, int(np.ceil(np.log2(max(capacity, 1)))))
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    @property
    def leaves(self) -> np.ndarray:
        """View of the leaf priorities (length capacity); write through `update`, not here."""
        return self.tree[self.size:self.size + self.capacity]

    def update(self, idx: np.ndarray, values: np.ndarray | float) -> None:
        """Set leaves `idx` to `values` (with duplicates, the last one wins) and refresh their ancestors."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        node = idx + self.size
        self.tree[node] = values
        node = np.unique(node >> 1)
        while node[0] >= 1:
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node >> 1)

    def rebuild(self) -> None:
        """Recompute every parent from the leaves (after loading leaves in bulk)."""
        level = self.size
        while level > 1:
            half = level // 2
            self.tree[half:level] = self.tree[level:2 * level:2] + self.tree[level + 1:2 * level:2]
            level = half

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index for each prefix-sum `mass` in [0, total): leaf i is hit with probability p_i / total."""
        node = np.ones(mass.shape, dtype=np.int64)
        mass = mass.astype(np.float64, copy=True)
        while node[0] < self.size:
            left = self.tree[2 * node]
            right = mass >= left
            mass -= np.where(right, left, 0.0)
            node = 2 * node + right
        return np.minimum(node - self.size, self.capacity - 1)
