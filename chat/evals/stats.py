"""Small statistics for the report: means, percentiles, bootstrap intervals, paired differences,
judge agreement, pass spread, the cost/score frontier. Pure Python (no numpy), deterministic
given a seed. No Django here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def mean(xs: Iterable[float]) -> float | None:
    values = list(xs)
    return math.fsum(values) / len(values) if values else None


def percentile(xs: Iterable[float], q: float) -> float | None:
    """The *q*-th percentile (0–100), interpolating linearly between the closest ranks."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, not {q}")
    values = sorted(xs)
    if not values:
        return None
    position = (len(values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def bootstrap_ci(
    xs: Iterable[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean; ``(x, x)`` for one value, None for none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    values = list(xs)
    if not values:
        return None
    if len(values) == 1:
        return values[0], values[0]
    rng = random.Random(seed)
    n = len(values)
    means = [math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    low, high = percentile(means, tail), percentile(means, 100 - tail)
    assert low is not None and high is not None
    return low, high


@dataclass(frozen=True)
class PairedDiff:
    """a − b over the tasks both have: the mean difference, its interval, and the task counts."""

    n: int
    mean: float | None
    ci: tuple[float, float] | None
    wins: int
    ties: int
    losses: int


def paired_difference(
    a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 2000, seed: int = 0, tie: float = 0.005
) -> PairedDiff:
    """a − b task by task, over the task ids in both; a difference within ±*tie* is a tie."""
    diffs = [a[task_id] - b[task_id] for task_id in sorted(a.keys() & b.keys())]
    return PairedDiff(
        n=len(diffs),
        mean=mean(diffs),
        ci=bootstrap_ci(diffs, resamples=resamples, seed=seed),
        wins=sum(1 for d in diffs if d > tie),
        ties=sum(1 for d in diffs if abs(d) <= tie),
        losses=sum(1 for d in diffs if d < -tie),
    )


def judge_agreement(items: Iterable[list[dict[str, bool | None]]]) -> float | None:
    """The share of (answer, criterion) pairs judged alike in every pass, over the pairs with a
    verdict in at least two passes (a pass without one, a judge failure, is left out)."""
    agreed = judged = 0
    for passes in items:
        verdicts: dict[str, list[bool]] = {}
        for pass_verdicts in passes:
            for criterion_id, met in pass_verdicts.items():
                if met is not None:
                    verdicts.setdefault(criterion_id, []).append(met)
        for seen in verdicts.values():
            if len(seen) >= 2:
                judged += 1
                agreed += len(set(seen)) == 1
    return agreed / judged if judged else None


def score_spread(per_task_pass_scores: Iterable[list[float]]) -> float | None:
    """The mean, over tasks with at least two scored passes, of the highest minus the lowest."""
    return mean(max(scores) - min(scores) for scores in per_task_pass_scores if len(scores) >= 2)


def pareto_frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, score) points no other point beats (cost ≤ and score ≥, one of
    them strictly), cheapest first. Equal points all stay: neither beats the other."""

    def beaten(i: int) -> bool:
        cost, score = points[i]
        return any(c <= cost and s >= score and (c < cost or s > score) for j, (c, s) in enumerate(points) if j != i)

    frontier = [i for i in range(len(points)) if not beaten(i)]
    return sorted(frontier, key=lambda i: (points[i][0], -points[i][1], i))


def cost_per_accepted(total_cost: float, accepted: int) -> float | None:
    """What one accepted answer cost, counting everything spent; None when nothing was accepted."""
    return total_cost / accepted if accepted > 0 else None
