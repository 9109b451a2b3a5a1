"""The score formula: ``clamp(Σ weight·MET / Σ positive weights, 0, 1)``.

A criterion whose verdict is missing or null is a judge failure, never counted as unmet: the
score is then None rather than a number that blames the answer. No Django here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from chat.evals.tasks import Criterion, Task

Verdicts = Mapping[str, Mapping[str, Any]]  # criterion id → {"met": bool | None, "reason": str}


def task_score(task: Task, verdicts: Verdicts) -> float | None:
    """The task's score in 0–1, or None when any criterion has no verdict."""
    return _score(task.criteria, verdicts)


def section_scores(task: Task, verdicts: Verdicts) -> dict[str, float | None]:
    """The same formula within each section, in the rubric's order (None for a section without
    positive weights or with a missing verdict)."""
    sections: dict[str, list[Criterion]] = {}
    for criterion in task.criteria:
        sections.setdefault(criterion.section, []).append(criterion)
    return {name: _score(criteria, verdicts) for name, criteria in sections.items()}


def _score(criteria: Iterable[Criterion], verdicts: Verdicts) -> float | None:
    earned = 0.0
    possible = 0.0
    for criterion in criteria:
        verdict = verdicts.get(criterion.id)
        met = verdict.get("met") if isinstance(verdict, Mapping) else None
        if not isinstance(met, bool):
            return None
        if met:
            earned += criterion.weight
        if criterion.weight > 0:
            possible += criterion.weight
    if possible <= 0:
        return None
    return min(max(earned / possible, 0.0), 1.0)
