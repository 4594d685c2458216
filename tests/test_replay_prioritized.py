"""Proportional prioritized sampling: proportions, importance weights, annealing, stale updates."""

from __future__ import annotations

import numpy as np
import pytest
from test_replay_support import V, episode_chunks

from learner.replay import ReplayConfig, ReplayMemory, SumTree


def filled(n: int, capacity: int, **cfg: object) -> ReplayMemory:
    mem = ReplayMemory(ReplayConfig(capacity=capacity, prioritized=True, **cfg), V, 0.9)  # type: ignore[arg-type]
    for c in episode_chunks(n, chunk_steps=16, p_end=0.0):
        mem.add(c)
    return mem


def test_sum_tree_find_and_update() -> None:
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 0.0, 3.0, 0.5, 0.5]))
    assert tree.total == pytest.approx(5.0)
    assert tree.find(np.array([0.0, 0.99, 1.0, 3.99, 4.0, 4.49, 4.5, 4.99])).tolist() == [0, 0, 2, 2, 3, 3, 4, 4]
    tree.update(np.array([2, 2]), np.array([7.0, 2.0]))  # the last duplicate wins
    assert tree.total == pytest.approx(4.0)
    leaves = tree.leaves.copy()
    tree.rebuild()
    assert tree.total == pytest.approx(leaves.sum())


def test_sampling_is_proportional_to_priority_alpha() -> None:
    mem = filled(20, 20, alpha=0.7)
    ids = np.arange(mem.rings.tail, mem.rings.steps_written)
    assert mem.valid(ids).all() and len(ids) == 20
    td = np.linspace(0.1, 3.0, 20)
    mem.update_priorities(ids, td)
    p = (td + mem.cfg.eps) ** 0.7
    p /= p.sum()
    rng = np.random.default_rng(0)
    draws = np.concatenate([mem.sample_ids(256, rng) for _ in range(400)])
    counts = np.bincount(draws - mem.rings.tail, minlength=20)
    expected = p * len(draws)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8  # chi-square, 19 degrees of freedom, p = 0.001
    np.testing.assert_allclose(counts / len(draws), p, atol=0.005)


def test_importance_weights_exact() -> None:
    mem = filled(30, 30, beta=0.4)
    ids = np.arange(mem.rings.tail, mem.rings.steps_written)
    td = np.random.default_rng(1).uniform(0, 2, len(ids))
    mem.update_priorities(ids, td)
    batch, got = mem.sample(64, np.random.default_rng(2))
    prio = (np.abs(td) + mem.cfg.eps) ** mem.cfg.alpha
    prob = prio[got - mem.rings.tail] / prio.sum()
    w = (len(mem) * prob) ** -0.4
    np.testing.assert_allclose(batch.weight.numpy(), w / w.max(), rtol=1e-5)
    assert batch.weight.dtype.is_floating_point and batch.weight.shape == (64,)


def test_beta_anneals_to_final() -> None:
    mem = filled(10, 10, beta=0.4, beta_final=1.0, beta_anneal_samples=4)
    betas = []
    for _ in range(6):
        betas.append(mem.beta())
        mem.sample(2, np.random.default_rng(0))
    np.testing.assert_allclose(betas, [0.4, 0.55, 0.7, 0.85, 1.0, 1.0])


def test_new_steps_get_max_priority_and_stale_updates_are_ignored() -> None:
    mem = filled(10, 10)
    ids = np.arange(mem.rings.tail, mem.rings.steps_written)
    mem.update_priorities(ids, np.full(10, 4.0))
    assert mem.priorities.max_priority == pytest.approx(4.0 + mem.cfg.eps)
    old = ids.copy()
    for c in episode_chunks(5, chunk_steps=5, p_end=0.0, seed=9):
        mem.add(c)
    leaves = mem.priorities.leaves  # type: ignore[union-attr]
    # The 5 newest steps (one still waits for nothing: n=1) start at max priority^alpha.
    new = np.arange(mem.rings.steps_written - 5, mem.rings.steps_written) % 10
    np.testing.assert_allclose(leaves[new], (4.0 + mem.cfg.eps) ** 0.6)
    before = leaves.copy()
    mem.update_priorities(old, np.full(10, 100.0))  # half of these slots now hold newer steps
    changed = np.flatnonzero(leaves != before)
    assert sorted(changed.tolist()) == sorted((old[5:] % 10).tolist())
