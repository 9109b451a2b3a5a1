"""Answer feedback: a user accepts or rejects a fused answer, with an optional note, and the usage
page's acceptance per preset. Services and selectors (HackSoft style).

Every run is looked up through its owner's conversation: another user's conversation or run is
"not found", exactly like a missing one. Only a finished run with a fused answer can be judged.

A run does not record which preset it ran; its conversation does (``Conversation.preset`` or
``builtin_preset``, set when a preset is chosen), so answers are counted under the conversation's
preset. A conversation whose preset was deleted keeps its panel and counts as "Custom panel".
Money comes from the ledger (``SpendEntry``), the one source of what runs cost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Count, Q, Sum
from django.utils import timezone

from chat import presets
from chat.conversations import conversation_get_for_user
from chat.errors import NotFound
from chat.models import AnswerFeedback, Run, RunStatus, SpendEntry

NOTE_MAX = 2000
CUSTOM_PANEL = "Custom panel"


class FeedbackError(ValueError):
    """Feedback a user can fix, or a run that cannot be judged; ``field`` names the input it is
    about ("accepted", "note"), or is None when it is about the run."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- selectors


def run_get_for_user(*, user: User, conversation_pk: int, run_id: uuid.UUID | str) -> Run:
    """Run *run_id* of the user's conversation *conversation_pk*; NotFound for a missing one, for
    someone else's, and for a run of another conversation."""
    conversation = conversation_get_for_user(user=user, pk=conversation_pk)
    try:
        return Run.objects.get(pk=run_id, conversation=conversation, user=user)
    except (Run.DoesNotExist, ValidationError, ValueError):
        raise NotFound("No such run.") from None


@dataclass(frozen=True)
class PresetAcceptance:
    """One line of the usage page's "Answers you accepted, per preset"."""

    name: str
    judged: int
    accepted: int
    rejected: int
    acceptance_rate: float  # 0–1
    cost: Decimal  # what the judged runs cost, from the ledger
    cost_per_accepted: Decimal | None  # cost / accepted; None when nothing was accepted
    estimated: bool  # part of the cost is an estimate (calls cut before the provider reported usage)


def feedback_by_preset(*, user: User, days: int = 30) -> list[PresetAcceptance]:
    """Per preset, the user's judged answers of runs started in the last *days* days (as on the
    usage page: today and the days before), most judged first.

    Cost per accepted answer is what all the judged runs of the preset cost, divided by the
    answers accepted: the price of one answer worth keeping, rejected ones included.
    """
    start = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=days - 1), time.min))
    judged = AnswerFeedback.objects.filter(user=user, run__user=user, run__created_at__gte=start)
    rows = list(
        judged.values(
            "run_id",
            "accepted",
            "run__conversation__preset_id",
            "run__conversation__preset__name",
            "run__conversation__builtin_preset",
        )
    )
    if not rows:
        return []
    # run id → (what its calls cost, whether part of that is an estimate)
    ledger: dict[uuid.UUID, tuple[Decimal, bool]] = {
        entry["run_id"]: (entry["cost"] or Decimal(0), bool(entry["estimated"]))
        for entry in SpendEntry.objects.filter(user=user, run_id__in=judged.values("run_id"))
        .values("run_id")
        .annotate(cost=Sum("cost_usd"), estimated=Count("pk", filter=Q(estimated=True)))
    }
    builtin_names = {b.key: b.name for b in presets.builtin_presets()}

    groups: dict[tuple[str, Any], dict[str, Any]] = {}
    for row in rows:
        preset_id, builtin = row["run__conversation__preset_id"], row["run__conversation__builtin_preset"]
        if preset_id is not None:
            key: tuple[str, Any] = ("preset", preset_id)
            name = row["run__conversation__preset__name"]
        elif builtin:
            key, name = ("builtin", builtin), builtin_names.get(builtin, builtin)
        else:
            key, name = ("custom", None), CUSTOM_PANEL
        group = groups.setdefault(
            key, {"name": name, "judged": 0, "accepted": 0, "cost": Decimal(0), "estimated": False}
        )
        cost, estimated = ledger.get(row["run_id"], (Decimal(0), False))
        group["judged"] += 1
        group["accepted"] += bool(row["accepted"])
        group["cost"] += cost
        group["estimated"] = group["estimated"] or estimated

    lines = [
        PresetAcceptance(
            name=g["name"],
            judged=g["judged"],
            accepted=g["accepted"],
            rejected=g["judged"] - g["accepted"],
            acceptance_rate=g["accepted"] / g["judged"],
            cost=g["cost"],
            cost_per_accepted=g["cost"] / g["accepted"] if g["accepted"] else None,
            estimated=g["estimated"],
        )
        for g in groups.values()
    ]
    return sorted(lines, key=lambda line: (-line.judged, line.name.casefold()))


# --------------------------------------------------------------------------- services


def _clean_note(note: str) -> str:
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise FeedbackError(f"The note is {len(note):,} characters; the limit is {NOTE_MAX:,}.", field="note")
    return note


def _check_judgeable(run: Run) -> None:
    if run.status == RunStatus.RUNNING:
        raise FeedbackError("This answer is still being written: accept or reject it once it is done.")
    if run.status != RunStatus.COMPLETE or not run.answer.strip():
        raise FeedbackError("Only a finished fused answer can be accepted or rejected; this run has none.")


def feedback_set(
    *, user: User, conversation_pk: int, run_id: uuid.UUID | str, accepted: bool, note: str = ""
) -> AnswerFeedback:
    """Accept or reject the fused answer of a run of the user's, with a note (trimmed, at most
    NOTE_MAX characters); a second call replaces the first."""
    run = run_get_for_user(user=user, conversation_pk=conversation_pk, run_id=run_id)
    _check_judgeable(run)
    note = _clean_note(note)
    now = timezone.now()
    feedback, _ = AnswerFeedback.objects.update_or_create(
        run=run,
        defaults={"user": user, "accepted": accepted, "note": note, "updated_at": now},
        create_defaults={"user": user, "accepted": accepted, "note": note, "created_at": now, "updated_at": now},
    )
    return feedback


def feedback_clear(*, user: User, conversation_pk: int, run_id: uuid.UUID | str) -> None:
    """Take back the verdict on a run's answer (nothing to take back is fine)."""
    run = run_get_for_user(user=user, conversation_pk=conversation_pk, run_id=run_id)
    AnswerFeedback.objects.filter(run=run).delete()
