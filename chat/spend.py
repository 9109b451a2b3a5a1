"""Spending: a per-user daily limit, reservations held while runs go, and the ledger (read by chat.usage).

Before a run, its high cost estimate is reserved on the run row (``Run.reserved_usd``); when
the run ends the reservation is released and each of its calls becomes a row of the ledger
(``SpendEntry``, written by ``spend_record`` in the run's final transaction). So what a user has
spent today is the sum of today's ledger plus what their running runs hold, and a run that would
take that past the limit is refused before any paid call. The ledger keeps no foreign key to
conversations: deleting one never changes what was spent, the usage page or what the limit allows.

``spend_reserve`` must run inside the transaction that creates the run. It locks the user's
``UserLimits`` row (SELECT … FOR UPDATE on PostgreSQL; on SQLite the IMMEDIATE transaction mode
of the settings already serialises writers), so two runs started at once are checked one after
the other and cannot overspend together (a batch of starts locks its users' rows at once, in
user order, and counts each reservation it makes for its later starts). A run paid with a
server key (``Run.uses_server_key``) is also checked against FUSION_SERVER_DAILY_LIMIT_USD, what
the server's keys may spend per day across all users, under a server-wide lock (an advisory
lock on PostgreSQL).

Every call that reached a provider counts, however it ended: completed, stopped, failed, timed
out, or cut by a process that died. Its cost is the provider-reported one; what the provider did
not report (a cut stream sends no usage) is estimated from the characters sent and received at
the catalogue price (``call_usage``), and the usage says ``"estimated": true``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from chat import model_catalogue
from chat.memo import MISSING, memo_entry, memo_update
from chat.fusion.types import FusionRequest, Usage
from chat.models import MemberResponse, MemberStatus, Run, RunStatus, SpendEntry, SpendRole, UserLimits

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")
# pg_advisory_xact_lock key of the server-wide cap ("fusion" in ASCII).
SERVER_CAP_LOCK = 0x667573696F6E


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


def daily_limit(*, user: User) -> Decimal | None:
    """Today's limit in USD; None means no limit (the setting or the override is 0)."""
    row = UserLimits.objects.filter(user=user).only("daily_spend_limit_usd").first()
    return _limit_of(row) if row is not None else _limit_of(UserLimits(daily_spend_limit_usd=None))


def day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def spent_today(*, user: User) -> Decimal:
    """Today's ledger plus what the running runs hold in reserve."""
    return _spent_today(SpendEntry.objects.filter(user=user), Run.objects.filter(user=user))


def server_daily_limit() -> Decimal | None:
    """FUSION_SERVER_DAILY_LIMIT_USD: what the server's keys may spend per day; None means no cap."""
    limit = Decimal(str(settings.FUSION_SERVER_DAILY_LIMIT_USD or 0))
    return None if limit <= 0 else limit


def server_spent_today() -> Decimal:
    """What today's calls paid with a server key cost, plus what running server-key runs hold, across all users."""
    return _spent_today(SpendEntry.objects.filter(uses_server_key=True), Run.objects.filter(uses_server_key=True))


def _spent_today(entries: QuerySet[SpendEntry], runs: QuerySet[Run]) -> Decimal:
    start = day_start(timezone.localdate())
    spent = entries.filter(created_at__gte=start).aggregate(total=Sum("cost_usd"))["total"]
    reserved = runs.filter(status=RunStatus.RUNNING).aggregate(total=Sum("reserved_usd"))["total"]
    return (spent or Decimal(0)) + (reserved or Decimal(0))


def cost_of(usage: Usage | dict[str, Any] | None) -> Decimal | None:
    """The cost of a call or of a run's calls, as stored; None when there is no cost to count."""
    cost = usage.get("cost") if isinstance(usage, dict) else getattr(usage, "cost", None)
    return None if cost is None else Decimal(str(cost)).quantize(MICRO)


# --------------------------------------------------------------------------- what calls cost


def call_usage(call: dict[str, Any], *, lookup: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The usage of one call (``CallRecord.to_dict()``), with what the provider did not report estimated.

    A stream that was stopped, failed or timed out often reports no usage, yet the provider bills
    the prompt and what it streamed. Those requests' characters (``prompt_chars``,
    ``streamed_chars``) count as tokens (``model_catalogue.tokens_of_chars``) at the catalogue price; so
    do reported tokens without a reported cost. The result then says ``"estimated": true``. (The
    engine leaves out requests refused with an HTTP error or never sent: providers bill neither.)
    """
    usage = dict(call.get("usage") or {})
    prompt_chars, streamed_chars = int(call.get("prompt_chars") or 0), int(call.get("streamed_chars") or 0)
    extra_prompt, extra_completion = (
        model_catalogue.tokens_of_chars(prompt_chars),
        model_catalogue.tokens_of_chars(streamed_chars),
    )
    reported_prompt, reported_completion = (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
    unpriced = usage.get("cost") is None and (reported_prompt or reported_completion)
    if not (extra_prompt or extra_completion or unpriced):
        return usage
    lookup = lookup or model_catalogue.model_resolver()
    price = model_catalogue.call_price(
        lookup(str(call.get("model") or "")),
        prompt_tokens=extra_prompt + (reported_prompt if unpriced else 0),
        completion_tokens=extra_completion + (reported_completion if unpriced else 0),
    )
    if price is None and not (extra_prompt or extra_completion):
        return usage
    usage.update(
        prompt_tokens=reported_prompt + extra_prompt,
        completion_tokens=reported_completion + extra_completion,
        total_tokens=int(usage.get("total_tokens") or 0) + extra_prompt + extra_completion,
        estimated=True,
    )
    if price is not None:
        usage["cost"] = round(float(usage.get("cost") or 0) + price, 10)
    return usage


def priced_calls(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Call records (``CallRecord.to_dict()``) with their usage priced by ``call_usage``."""
    resolver: Callable[[str], Any] | None = None

    def lookup(model: str) -> Any:  # one catalogue read, and only when something needs a price
        nonlocal resolver
        resolver = resolver or model_catalogue.model_resolver()
        return resolver(model)

    return [{**call, "usage": call_usage(call, lookup=lookup)} for call in calls]


def usage_total(usages: Iterable[dict[str, Any]]) -> Usage:
    """The sum of calls' usages; ``estimated`` when any part is."""
    total = Usage()
    for usage in usages:
        total.add(
            Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                reasoning_tokens=int(usage.get("reasoning_tokens") or 0),
                total_tokens=int(usage.get("total_tokens") or 0),
                cost=None if usage.get("cost") is None else float(usage["cost"]),
                estimated=bool(usage.get("estimated")),
            )
        )
    return total


def interrupted_calls(*, run: Run, request: FusionRequest) -> list[dict[str, Any]]:
    """The calls of a run whose process died, rebuilt from its last checkpoint, to be estimated.

    What the providers reported died with the process (except usage already written), so each
    call is its characters: a member's thread and what it had written (a member that failed with
    nothing was refused: not billed); the analyst once the panel was over; the writer once it had
    an analysis or text. Answers and an analysis copied from an earlier run of the turn (a retry)
    made no call.
    """
    members = list(run.members.order_by("slot"))
    earlier = Run.objects.filter(turn_id=run.turn_id, created_at__lt=run.created_at)
    copies = {
        (slot, content)
        for slot, content in MemberResponse.objects.filter(run__in=earlier, status=MemberStatus.COMPLETE).values_list(
            "slot", "content"
        )
    }
    overhead = model_catalogue.PROMPT_OVERHEAD_TOKENS * 4  # the instructions around the answers
    question = _chars(request.messages)
    calls: list[dict[str, Any]] = []
    answers = 0
    for m in members:
        if m.status == MemberStatus.COMPLETE:
            answers += len(m.content)
            if (m.slot, m.content) in copies:
                continue
        if m.usage:  # its call ended and was written before the process died: what was reported
            calls.append({**_estimated_call("panel", m.model, 0, 0, slot=m.slot), "usage": dict(m.usage)})
            continue
        streamed = len(m.content) + len(m.reasoning)
        if m.status == MemberStatus.FAILED and not streamed:
            continue
        spec = request.panel[m.slot] if m.slot < len(request.panel) else None
        thread = (request.member_messages or {}).get(m.slot) or request.messages
        calls.append(
            _estimated_call(
                "panel",
                m.model,
                _chars(thread) + len(getattr(spec, "system_prompt", None) or ""),
                streamed,
                slot=m.slot,
            )
        )
    panel_over = answers and all(
        m.status in (MemberStatus.COMPLETE, MemberStatus.FAILED, MemberStatus.STOPPED) for m in members
    )
    analysis = len(json.dumps(run.analysis)) if run.analysis is not None else 0
    copied_analysis = run.analysis is not None and run.analysis in earlier.values_list("analysis", flat=True)
    if run.calls:  # the analyst's and writer's calls were written: what was reported
        return calls + [dict(c) for c in run.calls]
    if panel_over and run.analyst_model and not copied_analysis:
        calls.append(_estimated_call("analyst", run.analyst_model, question + answers + overhead, analysis))
    if panel_over and run.writer_model and (run.answer or run.analysis is not None):
        calls.append(
            _estimated_call("writer", run.writer_model, question + answers + analysis + overhead, len(run.answer))
        )
    return calls


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


def _estimated_call(
    role: str, model: str, prompt_chars: int, streamed_chars: int, slot: int | None = None
) -> dict[str, Any]:
    return {
        "role": role,
        "model": model,
        "slot": slot,
        "status": "cancelled",
        "usage": Usage().to_dict(),
        "error": None,
        "prompt_chars": prompt_chars,
        "streamed_chars": streamed_chars,
    }


# --------------------------------------------------------------------------- services


def _lock_limits(*, user: User) -> UserLimits:
    """Lock the user's UserLimits row for the current transaction, creating it if needed."""
    row = UserLimits.objects.select_for_update().filter(user=user).first()
    if row is not None:
        return row
    try:
        # In a savepoint: a concurrent creation by the other run just means the row exists.
        with transaction.atomic():
            UserLimits.objects.create(user=user)
    except IntegrityError:
        pass
    return UserLimits.objects.select_for_update().get(user=user)


def lock_for_starts(user_ids: Iterable[int]) -> None:
    """For a batch of starts (chat.runs.starts), in its transaction: lock the users' UserLimits
    rows in one query, in user order (creating the missing ones), and read what each has spent
    today, for ``spend_reserve``. Each start that writes its run adds its reservation
    (``spend_counted``), so the batch's later starts of a user count the earlier ones."""
    ids = sorted(set(user_ids))

    def locked(pks: list[int]) -> dict[int, UserLimits]:
        return {
            r.user_id: r for r in UserLimits.objects.select_for_update().filter(user_id__in=pks).order_by("user_id")
        }

    rows = locked(ids)
    missing = [pk for pk in ids if pk not in rows]
    if missing:  # a concurrent creation just means the row exists
        UserLimits.objects.bulk_create([UserLimits(user_id=pk) for pk in missing], ignore_conflicts=True)
        rows.update(locked(missing))
    start = day_start(timezone.localdate())
    spent = dict(
        SpendEntry.objects.filter(user_id__in=ids, created_at__gte=start)
        .order_by()
        .values("user_id")
        .annotate(total=Sum("cost_usd"))
        .values_list("user_id", "total")
    )
    held = dict(
        Run.objects.filter(user_id__in=ids, status=RunStatus.RUNNING)
        .order_by()
        .values("user_id")
        .annotate(total=Sum("reserved_usd"))
        .values_list("user_id", "total")
    )
    memo_update(
        "spend_today",
        {pk: (_limit_of(rows[pk]), (spent.get(pk) or Decimal(0)) + (held.get(pk) or Decimal(0))) for pk in rows},
    )


def spend_counted(*, user: User, amount: Decimal) -> None:
    """A run of *user* holding *amount* was written in a batch of starts: its later starts count it."""
    entry = memo_entry("spend_today", user.pk)
    if entry is not MISSING:
        memo_update("spend_today", {user.pk: (entry[0], entry[1] + amount)})


def _limit_of(row: UserLimits) -> Decimal | None:
    override = row.daily_spend_limit_usd
    limit = Decimal(str(settings.FUSION_DAILY_SPEND_LIMIT_USD)) if override is None else override
    return None if limit <= 0 else limit


def _lock_server_cap() -> None:
    """Serialise the server-wide cap's check and reservation across users, for this transaction.

    PostgreSQL: a transaction-level advisory lock. SQLite: the settings' IMMEDIATE transactions
    already let one writer at a time through, so there is nothing more to take.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SERVER_CAP_LOCK])


def spend_reserve(*, user: User, high_usd: float | Decimal, server_key: bool = False) -> Decimal:
    """Check that a run costing up to *high_usd* fits today's limit; return the amount to reserve.

    *server_key*: the run uses a server key, so it must also fit what is left of the server's
    daily cap across all users. Call inside the transaction that creates the run with
    ``reserved_usd`` (and ``uses_server_key``) set, so the check and the reservation are one step
    for every other run.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("spend_reserve must run inside the transaction that creates the run.")
    amount = to_decimal(high_usd)
    entry = memo_entry("spend_today", user.pk)  # a batch of starts locked and read it (lock_for_starts)
    if entry is MISSING:
        limit = _limit_of(_lock_limits(user=user))
        spent = spent_today(user=user) if limit is not None else Decimal(0)
    else:
        limit, spent = entry
    if limit is not None:
        left = max(Decimal(0), limit - spent)
        if amount > left:
            raise SpendLimitExceeded(
                f"This run could cost up to {usd(amount)}; you have {usd(left)} left today (daily limit {usd(limit)})."
            )
    server_limit = server_daily_limit() if server_key else None
    if server_limit is not None:
        _lock_server_cap()  # always after the user's row: one order, no deadlock
        left = max(Decimal(0), server_limit - server_spent_today())
        if amount > left:
            raise SpendLimitExceeded(
                f"The server's shared key has reached today's limit: this run could cost up to {usd(amount)} "
                f"and {usd(left)} is left for everyone today. Add your own key in Settings → Keys."
            )
    return amount


def spend_record(
    *,
    user_id: int,
    run_id: Any,
    conversation_id: int | None,
    turn_id: int | None,
    turn_index: int | None,
    uses_server_key: bool,
    calls: Iterable[dict[str, Any]],
    search_cost_usd: float | Decimal | None = None,
    searches: int = 0,
) -> list[SpendEntry]:
    """Write one ledger row per call of a run that reached a provider (priced by ``priced_calls``).

    Call inside the transaction that ends the run (the one that releases its reservation), so
    the reservation and the ledger never both count, nor neither. The ids are plain values: a
    run whose conversation was deleted while it streamed still records what its calls cost.
    Paid web searches are one more row (role ``search``).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("spend_record must run inside the transaction that ends the run.")
    now = timezone.now()
    common = {
        "user_id": user_id,
        "run_id": run_id,
        "conversation_id": conversation_id,
        "turn_id": turn_id,
        "turn_index": turn_index,
        "uses_server_key": uses_server_key,
        "created_at": now,
    }
    entries = []
    for call in calls:
        usage = call.get("usage") or {}
        entries.append(
            SpendEntry(
                **common,
                role=call.get("role") or SpendRole.PANEL,
                slot=call.get("slot"),
                model=str(call.get("model") or ""),
                status=str(call.get("status") or ""),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                reasoning_tokens=int(usage.get("reasoning_tokens") or 0),
                cost_usd=cost_of(usage) or Decimal(0),
                estimated=bool(usage.get("estimated")),
                ttft_ms=call.get("ttft_ms"),
                duration_ms=call.get("duration_ms"),
            )
        )
    if search_cost_usd:
        entries.append(
            SpendEntry(
                **common,
                role=SpendRole.SEARCH,
                model="web search",
                status=f"{searches} searches" if searches else "",
                cost_usd=to_decimal(search_cost_usd),
            )
        )
    return SpendEntry.objects.bulk_create(entries)
