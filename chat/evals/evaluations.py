"""Evaluations: selectors and services (HackSoft style). Each is looked up through its owner."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from chat.errors import NotFound
from chat.evals.configs import DRACO_GUARD_HOSTS, EvalConfigError, configs_from_refs, guard_hosts_parse
from chat.evals.runner import ensure_items
from chat.evals.tasks import Task
from chat.model_catalogue import validate_models
from chat.models import Evaluation

MAX_PASSES = 10
MAX_CONCURRENCY = 16
MAX_TASKS = 1000


def evaluation_list_for_user(*, user: User) -> QuerySet[Evaluation]:
    return Evaluation.objects.filter(user=user)


def evaluation_get_for_user(*, user: User, pk: Any) -> Evaluation:
    """NotFound for a missing id and for someone else's, alike."""
    try:
        return Evaluation.objects.get(pk=int(pk), user=user)
    except (Evaluation.DoesNotExist, TypeError, ValueError, OverflowError):
        raise NotFound("No such evaluation.") from None


def _bounded_int(value: Any, *, field: str, low: int, high: int, what: str) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise EvalConfigError(f"{what} must be a whole number from {low} to {high}.", field=field) from None
    if not low <= number <= high:
        raise EvalConfigError(f"{what} must be from {low} to {high} (got {number}).", field=field)
    return number


def _max_cost(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise EvalConfigError("The cost limit must be an amount in USD, such as 2.50.", field="max_cost") from None
    if not amount.is_finite() or amount <= 0 or amount > Decimal("100000"):
        raise EvalConfigError("The cost limit must be more than $0 (at most $100,000).", field="max_cost")
    return amount.quantize(Decimal("0.000001"))


def _threshold(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EvalConfigError("The acceptance threshold must be a score from 0 to 100.", field="threshold") from None
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise EvalConfigError("The acceptance threshold must be a score from 0 to 100.", field="threshold")
    return number


def evaluation_create(
    *,
    user: User,
    tasks: list[Task],
    config_refs: list[str],
    judge_model: str,
    name: str = "",
    tasks_name: str = "",
    passes: Any = 3,
    research: Any = None,
    guard_hosts: Any = DRACO_GUARD_HOSTS,
    accept_threshold: Any = 70,
    baseline: str = "",
    concurrency: Any = 4,
    max_cost_usd: Any = None,
    limit: int | None = None,
) -> Evaluation:
    """A stored evaluation, its items made; EvalConfigError (with ``field``) for bad settings."""
    if not tasks:
        raise EvalConfigError("The task file has no tasks.", field="tasks")
    if limit is not None:
        tasks = tasks[: max(1, limit)]
    if len(tasks) > MAX_TASKS:
        raise EvalConfigError(f"At most {MAX_TASKS} tasks per evaluation (use a limit).", field="tasks")
    judge_model = (judge_model or "").strip()
    if not judge_model:
        raise EvalConfigError("Choose the judge model.", field="judge")
    problems = validate_models([judge_model])
    if problems:
        raise EvalConfigError(problems[0], field="judge")
    guard = guard_hosts_parse(guard_hosts)
    configs = configs_from_refs(user=user, refs=config_refs, research=research, guard=guard)
    models = [
        s["model"] for c in configs for s in [*c["config"]["members"], c["config"]["analyst"], c["config"]["writer"]]
    ]
    problems = validate_models(list(dict.fromkeys(models)))
    if problems:
        raise EvalConfigError(problems[0], field="configs")
    keys = [c["key"] for c in configs]
    baseline = (baseline or "").strip()
    if baseline and baseline not in keys:
        by_ref = {c["ref"]: c["key"] for c in configs}
        if baseline not in by_ref:
            raise EvalConfigError(
                f"The baseline must be one of the configurations ({', '.join(keys)}).", field="baseline"
            )
        baseline = by_ref[baseline]
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            user=user,
            name=(name or "").strip()[:200] or f"{len(tasks)} tasks × {len(configs)} configurations",
            tasks_name=(tasks_name or "")[:200],
            tasks=[t.to_dict() for t in tasks],
            configs=configs,
            judge_model=judge_model,
            passes=_bounded_int(passes, field="passes", low=1, high=MAX_PASSES, what="Passes"),
            research=configs[0]["config"]["research"],
            guard_hosts=guard,
            accept_threshold=_threshold(accept_threshold),
            baseline=baseline or (keys[0] if len(keys) > 1 else ""),
            concurrency=_bounded_int(concurrency, field="concurrency", low=1, high=MAX_CONCURRENCY, what="Concurrency"),
            max_cost_usd=_max_cost(max_cost_usd),
        )
        ensure_items(evaluation)
    return evaluation


def evaluation_update_limits(
    *, evaluation: Evaluation, max_cost_usd: Any = None, concurrency: Any = None
) -> Evaluation:
    """Raise (or clear) the cost limit or change the concurrency before resuming."""
    evaluation.max_cost_usd = _max_cost(max_cost_usd)
    if concurrency not in (None, ""):
        evaluation.concurrency = _bounded_int(
            concurrency, field="concurrency", low=1, high=MAX_CONCURRENCY, what="Concurrency"
        )
    evaluation.save(update_fields=["max_cost_usd", "concurrency"])
    return evaluation


def evaluation_delete(*, evaluation: Evaluation) -> None:
    """The evaluation and its items; its runs' conversations stay (and what they cost stays spent)."""
    evaluation.delete()
