"""Reading the ledger (chat.spend writes it): the usage page's report and a turn's receipt.

Both count what each call cost as ``chat.spend`` recorded it, so every number a user sees about
money comes from the one ledger: spent today and what is left come from ``chat.spend`` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.models import SpendEntry, SpendRole
from chat.spend import day_start, daily_limit, spent_today, usd


# --------------------------------------------------------------------------- the usage report


@dataclass
class ModelUsage:
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    estimated: bool = False  # some of it is an estimate (calls cut before the provider reported usage)


class DayUsage(TypedDict):
    day: date
    runs: int
    cost: Decimal
    estimated: int  # runs whose usage is partly an estimate
    share: float  # 0–1 of the busiest day's cost


@dataclass
class UsageReport:
    limit: Decimal | None
    spent_today: Decimal
    left_today: Decimal | None
    runs_today: int
    runs: int  # in the period
    cost: Decimal  # in the period
    days: list[DayUsage]  # newest first
    models: list[ModelUsage]  # most expensive first


def usage_report(*, user: User, days: int = 30) -> UsageReport:
    """Spend per day and per model over the last *days* days, from the ledger."""
    today = timezone.localdate()
    start = day_start(today - timedelta(days=days - 1))
    entries = SpendEntry.objects.filter(user=user, created_at__gte=start)
    rows = list(
        entries.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            runs=Count("run_id", distinct=True),
            cost=Sum("cost_usd"),
            estimated=Count("run_id", filter=Q(estimated=True), distinct=True),
        )
        .order_by("-day")
    )
    busiest = max((row["cost"] or Decimal(0) for row in rows), default=Decimal(0))
    per_day = [
        DayUsage(
            day=row["day"],
            runs=row["runs"],
            cost=row["cost"] or Decimal(0),
            estimated=row["estimated"],
            share=float((row["cost"] or Decimal(0)) / busiest) if busiest else 0.0,
        )
        for row in rows
    ]

    spent = spent_today(user=user)
    limit = daily_limit(user=user)
    return UsageReport(
        limit=limit,
        spent_today=spent,
        left_today=None if limit is None else max(Decimal(0), limit - spent),
        runs_today=entries.filter(created_at__gte=day_start(today)).values("run_id").distinct().count(),
        runs=entries.values("run_id").distinct().count(),
        cost=sum((row["cost"] for row in per_day), Decimal(0)),
        days=per_day,
        models=_per_model(entries),
    )


def _per_model(entries: QuerySet[SpendEntry]) -> list[ModelUsage]:
    """Calls, tokens and cost per model: panel members, analysts, writers and searches alike.

    Rows backfilled from runs older than the ledger (role ``run``) have no model: they are one
    line, "earlier runs".
    """
    by_model: dict[str, ModelUsage] = {}
    rows = entries.values("model", "role").annotate(
        calls=Count("pk"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_usd"),
        estimated=Count("pk", filter=Q(estimated=True)),
    )
    for row in rows:
        name = row["model"] or ("earlier runs" if row["role"] == SpendRole.RUN else "unknown model")
        m = by_model.setdefault(name, ModelUsage(name))
        m.calls += row["calls"]
        m.prompt_tokens += row["prompt"] or 0
        m.completion_tokens += row["completion"] or 0
        m.cost += row["cost"] or Decimal(0)
        m.estimated = m.estimated or bool(row["estimated"])
    return sorted(by_model.values(), key=lambda m: (-m.cost, m.model))


# --------------------------------------------------------------------------- a turn's receipt


class ReceiptLine(TypedDict):
    run: str
    attempt: int  # 1 for the turn's first run, 2 for its first retry or rewrite, …
    role: str
    slot: int | None
    model: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cost_text: str  # spend.usd; the page marks it ≈ when ``estimated``
    estimated: bool
    kept: bool | None  # its output is in the version shown; None for searches
    ttft_ms: int | None
    duration_ms: int | None


class Receipt(TypedDict):
    lines: list[ReceiptLine]
    runs: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cost_text: str
    estimated: bool
    kept_cost_text: str  # what the calls behind the version shown cost
    # The shown version's analyst and writer: their own time to first token, tokens and cost.
    analyst: ReceiptLine | None
    writer: ReceiptLine | None


def turn_receipt(*, turn_id: int, shown_run_id: Any = None) -> Receipt | None:
    """Every call of every run of a turn (the original, retries, rewrites), from the ledger.

    A call is *kept* when its output is in the version shown (*shown_run_id*, else the turn's
    latest run): the shown run's last completed call of each member, analyst and writer; for a
    member or an analysis the shown run carried over from an earlier run, that run's call. None
    when the ledger has nothing for the turn yet.
    """
    entries = list(SpendEntry.objects.filter(turn_id=turn_id).order_by("created_at", "pk"))
    if not entries:
        return None
    order: list[Any] = list(dict.fromkeys(e.run_id for e in entries))
    shown = next((r for r in order if str(r) == str(shown_run_id)), order[-1]) if shown_run_id else order[-1]
    kept = _kept_entries(entries, order[: order.index(shown) + 1])
    lines = [
        ReceiptLine(
            run=str(e.run_id),
            attempt=order.index(e.run_id) + 1,
            role=e.role,
            slot=e.slot,
            model=e.model,
            status=e.status,
            prompt_tokens=e.prompt_tokens,
            completion_tokens=e.completion_tokens,
            cost=float(e.cost_usd),
            cost_text=usd(e.cost_usd),
            estimated=e.estimated,
            kept=None if e.role in (SpendRole.SEARCH, SpendRole.RUN) else e.pk in kept,
            ttft_ms=e.ttft_ms,
            duration_ms=e.duration_ms,
        )
        for e in entries
    ]
    total = sum((e.cost_usd for e in entries), Decimal(0))
    kept_cost = sum((e.cost_usd for e in entries if e.pk in kept), Decimal(0))

    def own(role: str) -> ReceiptLine | None:
        return next((line for line in reversed(lines) if line["role"] == role and line["kept"]), None)

    return Receipt(
        lines=lines,
        runs=len(order),
        calls=len(lines),
        prompt_tokens=sum(e.prompt_tokens for e in entries),
        completion_tokens=sum(e.completion_tokens for e in entries),
        cost=float(total),
        cost_text=usd(total),
        estimated=any(e.estimated for e in entries),
        kept_cost_text=usd(kept_cost),
        analyst=own(SpendRole.ANALYST),
        writer=own(SpendRole.WRITER),
    )


def _kept_entries(entries: list[SpendEntry], runs: list[Any]) -> set[int]:
    """Ledger rows (pk) whose output is in the version of ``runs[-1]``, the run shown.

    Each member, the analyst and the writer: the last call of the newest run (up to the one
    shown) that made such a call, if it completed; a run that made none carried the output over.
    The writer is never carried over: its partial answer counts when it was stopped.
    """
    shown = runs[-1]
    kept: set[int] = set()
    keys = {(e.role, e.slot) for e in entries if e.role in (SpendRole.PANEL, SpendRole.ANALYST)}
    for role, slot in keys:
        for run in reversed(runs):
            calls = [e for e in entries if e.run_id == run and e.role == role and e.slot == slot]
            if calls:
                if calls[-1].status == "complete":
                    kept.add(calls[-1].pk)
                break
    writers = [e for e in entries if e.run_id == shown and e.role == SpendRole.WRITER]
    if writers and (writers[-1].status == "complete" or writers[-1].completion_tokens):
        kept.add(writers[-1].pk)
    return kept
