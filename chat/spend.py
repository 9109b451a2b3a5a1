"""Spending: a per-user daily limit, reservations held while runs go, and the usage report.

Before a run, its high cost estimate is reserved on the run row (``Run.reserved_usd``); when
the run ends the reservation becomes the provider-reported cost (``Run.cost_usd``). So what a
user has spent today is the cost of today's finished runs plus what their running runs hold,
and a run that would take that past the limit is refused before any paid call.

``spend_reserve`` must run inside the transaction that creates the run. It locks the user's
``UserLimits`` row (SELECT … FOR UPDATE on PostgreSQL; on SQLite the IMMEDIATE transaction mode
of the settings already serialises writers), so two runs started at once are checked one after
the other and cannot overspend together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.fusion.types import Usage
from chat.models import MemberResponse, Run, RunStatus, UserLimits

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


class SpendLimitExceeded(Exception):
    """A run that would take the user past today's limit; the message says by how much."""


def usd(amount: Decimal | float | None) -> str:
    """$0.42, or $0.0031 for amounts below a cent."""
    value = Decimal(str(amount or 0))
    if value != 0 and abs(value) < CENT:
        return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_CEILING)}"
    return f"${value.quantize(CENT)}"


def to_decimal(amount: float | Decimal | None) -> Decimal:
    """A dollar amount as stored (six places), rounded up: reservations must not fall short."""
    return Decimal(str(amount or 0)).quantize(MICRO, rounding=ROUND_CEILING)


# --------------------------------------------------------------------------- selectors


def daily_limit(*, user: Any) -> Decimal | None:
    """Today's limit in USD; None means no limit (the setting or the override is 0)."""
    override = UserLimits.objects.filter(user=user).values_list("daily_spend_limit_usd", flat=True).first()
    limit = Decimal(str(settings.FUSION_DAILY_SPEND_LIMIT_USD)) if override is None else override
    return None if limit <= 0 else limit


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def spent_today(*, user: Any) -> Decimal:
    """What today's finished runs cost plus what the running ones hold in reserve."""
    start = _day_start(timezone.localdate())
    finished = (
        Run.objects.filter(user=user, created_at__gte=start).exclude(status=RunStatus.RUNNING)
        .aggregate(total=Sum("cost_usd"))["total"]
    )
    reserved = Run.objects.filter(user=user, status=RunStatus.RUNNING).aggregate(total=Sum("reserved_usd"))["total"]
    return (finished or Decimal(0)) + (reserved or Decimal(0))


def cost_of(usage: Usage | None) -> Decimal | None:
    """The provider-reported cost of a run's calls, as stored; None when no provider reported one."""
    if usage is None or usage.cost is None:
        return None
    return Decimal(str(usage.cost)).quantize(MICRO)


# --------------------------------------------------------------------------- services


def _lock_limits(*, user: Any) -> None:
    """Lock the user's UserLimits row for the current transaction, creating it if needed."""
    if not UserLimits.objects.filter(user=user).exists():
        try:
            # In a savepoint: a concurrent creation by the other run just means the row exists.
            with transaction.atomic():
                UserLimits.objects.create(user=user)
        except IntegrityError:
            pass
    UserLimits.objects.select_for_update().get(user=user)


def spend_reserve(*, user: Any, high_usd: float | Decimal) -> Decimal:
    """Check that a run costing up to *high_usd* fits today's limit; return the amount to reserve.

    Call inside the transaction that creates the run with ``reserved_usd`` set to the result, so
    the check and the reservation are one step for every other run of this user.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("spend_reserve must run inside the transaction that creates the run.")
    amount = to_decimal(high_usd)
    _lock_limits(user=user)
    limit = daily_limit(user=user)
    if limit is None:
        return amount
    left = max(Decimal(0), limit - spent_today(user=user))
    if amount > left:
        raise SpendLimitExceeded(
            f"This run could cost up to {usd(amount)}; you have {usd(left)} left today "
            f"(daily limit {usd(limit)})."
        )
    return amount


# --------------------------------------------------------------------------- the usage report


@dataclass
class ModelUsage:
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)

    def add(self, usage: dict[str, Any]) -> None:
        self.calls += 1
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if usage.get("cost") is not None:
            self.cost += Decimal(str(usage["cost"]))


@dataclass
class UsageReport:
    limit: Decimal | None
    spent_today: Decimal
    left_today: Decimal | None
    runs_today: int
    runs: int  # in the period
    cost: Decimal  # in the period
    days: list[dict[str, Any]]  # newest first: {day, runs, cost, share (0–1 of the busiest day)}
    models: list[ModelUsage]  # most expensive first


def usage_report(*, user: Any, days: int = 30) -> UsageReport:
    """Spend per day and per model over the last *days* days, from the stored usage."""
    today = timezone.localdate()
    start = _day_start(today - timedelta(days=days - 1))
    runs = Run.objects.filter(user=user, created_at__gte=start)
    per_day = list(
        runs.annotate(day=TruncDate("created_at")).values("day")
        .annotate(runs=Count("pk"), cost=Sum("cost_usd")).order_by("-day")
    )
    busiest = max((row["cost"] or Decimal(0) for row in per_day), default=Decimal(0))
    for row in per_day:
        row["cost"] = row["cost"] or Decimal(0)
        row["share"] = float(row["cost"] / busiest) if busiest else 0.0

    spent = spent_today(user=user)
    limit = daily_limit(user=user)
    return UsageReport(
        limit=limit,
        spent_today=spent,
        left_today=None if limit is None else max(Decimal(0), limit - spent),
        runs_today=runs.filter(created_at__gte=_day_start(today)).count(),
        runs=sum(row["runs"] for row in per_day),
        cost=sum((row["cost"] for row in per_day), Decimal(0)),
        days=per_day,
        models=_per_model(runs),
    )


def _per_model(runs: Any) -> list[ModelUsage]:
    """Calls, tokens and cost per model: panel members, analysts and writers alike.

    A retry or a regenerated answer copies the answers it reuses (and their usage) into the new
    run; those copies made no call and are not counted twice.
    """
    by_model: dict[str, ModelUsage] = {}
    seen: set[tuple[int, int, str]] = set()  # (turn, slot, usage) of answers already counted
    members = (
        MemberResponse.objects.filter(run__in=runs)
        .values_list("run__turn_id", "slot", "model", "usage")
        .order_by("run__created_at", "slot")
    )
    for turn_id, slot, model, usage in members:
        if not usage:
            continue
        key = (turn_id, slot, repr(sorted(usage.items())))
        if key in seen:
            continue
        seen.add(key)
        by_model.setdefault(model, ModelUsage(model)).add(usage)
    for calls in runs.values_list("calls", flat=True):
        for call in calls or []:
            if isinstance(call, dict) and call.get("model") and call.get("role") != "panel" and call.get("usage"):
                by_model.setdefault(call["model"], ModelUsage(call["model"])).add(call["usage"])
    return sorted(by_model.values(), key=lambda m: (-m.cost, m.model))
