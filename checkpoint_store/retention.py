"""Which versions a retention policy keeps. Pure: the store does the deleting."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from checkpoint_store.manifest import Manifest


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 5
    """Keep the newest N versions."""
    keep_best: int = 0
    """Keep the K versions with the best value of `best_metric` (0 disables)."""
    best_metric: str | None = None
    """Metric name in the manifest's metrics, e.g. 'eval/route_completion'."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger ('max') or smaller ('min') metric value is better."""
    keep_every: int = 0
    """Keep the first version in every window of this many learner updates (0 disables)."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError("keep_last must be >= 1: the newest version is always kept")
        if self.keep_best < 0 or self.keep_every < 0:
            raise ValueError("keep_best and keep_every must be >= 0")
        if self.keep_best and not self.best_metric:
            raise ValueError("keep_best needs best_metric, the metric name to rank versions by")
        if self.best_mode not in ("max", "min"):
            raise ValueError("best_mode must be 'max' or 'min'")


@dataclass(frozen=True)
class RetentionReport:
    kept: list[str]
    deleted: list[str]
    reasons: dict[str, list[str]] = field(default_factory=dict)
    """Why each kept version is kept (e.g. ['last', 'best']), for `fleet snapshots gc` output."""
    blobs_deleted: int = 0
    bytes_freed: int = 0


def select(manifests: Sequence[Manifest], policy: RetentionPolicy,
           pinned: Iterable[str] = ()) -> dict[str, list[str]]:
    """{version: reasons} for every version the policy keeps; `pinned` (tag targets) always stay."""
    ordered = sorted(manifests, key=lambda m: m.version)
    keep: dict[str, list[str]] = {}

    def add(v: str, why: str) -> None:
        keep.setdefault(v, []).append(why)

    for m in ordered[-policy.keep_last:]:
        add(m.version, "last")
    if ordered:
        add(ordered[-1].version, "newest")
    known = {m.version for m in ordered}
    for v in pinned:
        if v in known:
            add(v, "tagged")
    if policy.keep_best and policy.best_metric:
        scored = [m for m in ordered if _number(m.metrics.get(policy.best_metric)) is not None]
        sign = 1.0 if policy.best_mode == "max" else -1.0
        # Ties go to the newer version.
        scored.sort(key=lambda m: (sign * _number(m.metrics[policy.best_metric]), m.version), reverse=True)
        for m in scored[:policy.keep_best]:
            add(m.version, "best")
    if policy.keep_every:
        seen: set[int] = set()
        for m in ordered:
            window = m.learner_updates // policy.keep_every
            if window not in seen:
                seen.add(window)
                add(m.version, "every")
    return keep


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)
