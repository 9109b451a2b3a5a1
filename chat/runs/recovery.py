"""Runs whose process died: how to tell (``stale_after``), and marking them ``interrupted``.

At start-up (``recover_interrupted_runs``, from ``manage.py recover_runs`` and fusionsite.asgi)
and in every process's sweep (chat.runs.live), a run left running by a dead process keeps its
partial text, counts what its calls cost, and leaves no member in a live status.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chat import spend
from chat.fusion.types import LIVE_STATUSES, MemberStatus
from chat.models import Run, RunStatus

log = logging.getLogger(__name__)

# This process: written on the runs it starts, so recovery never marks its own runs.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

INTERRUPTED_RUN = "The server restarted during this run. Retry a member or send the prompt again."
INTERRUPTED_MEMBER = "The server restarted while this member was answering."


def stale_after() -> timedelta:
    """How long a running run's heartbeat may be silent before its process counts as dead."""
    return timedelta(seconds=max(30, 10 * settings.FUSION_CHECKPOINT_INTERVAL_S))


def mark_interrupted(queryset: QuerySet[Run]) -> int:
    """Runs whose process died: keep their partial text, mark them ``interrupted``.

    Their calls reached providers, who bill them: what they cost is estimated from the last
    checkpoint (chat.spend.interrupted_calls) and goes to the ledger instead of the reservation. Every
    member still in a live status (waiting, thinking, streaming, searching) becomes stopped.
    """
    from chat.runs.services import build_request  # services → live → recovery: imported when needed

    count = 0
    for run in queryset.filter(status=RunStatus.RUNNING).select_related("conversation", "turn"):
        try:
            request = build_request(run.conversation, run.turn, run.config)
            calls = spend.priced_calls(spend.interrupted_calls(run=run, request=request))
        except Exception:  # a bug; the run must still stop counting as running
            log.exception("could not estimate the cost of interrupted run %s", run.pk)
            calls = []
        usage = spend.usage_total(c["usage"] for c in calls)
        with transaction.atomic():
            updated = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                status=RunStatus.INTERRUPTED,
                finished_at=timezone.now(),
                error_kind="interrupted",
                reserved_usd=0,
                error_message=INTERRUPTED_RUN,
                cost_usd=spend.cost_of(usage),
                usage=usage.to_dict(),
                calls=[c for c in calls if c["role"] != "panel"],
            )
            if not updated:  # its process finished it after all
                continue
            count += updated
            run.members.filter(status__in=[s.value for s in LIVE_STATUSES]).update(
                status=MemberStatus.STOPPED.value,
                error_kind="interrupted",
                error_message=INTERRUPTED_MEMBER,
            )
            for call in calls:
                if call["role"] == "panel":
                    run.members.filter(slot=call["slot"]).update(usage=call["usage"])
            spend.spend_record(
                user_id=run.user_id,
                run_id=run.pk,
                conversation_id=run.conversation_id,
                turn_id=run.turn_id,
                turn_index=run.turn.index,
                uses_server_key=run.uses_server_key,
                calls=calls,
            )
    return count


def recover_interrupted_runs(*, all_processes: bool = False) -> int:
    """At start-up: runs left running by a process that died become ``interrupted``."""
    qs = Run.objects.filter(status=RunStatus.RUNNING).exclude(process_id=PROCESS_ID)
    if not all_processes:
        qs = qs.filter(heartbeat_at__lt=timezone.now() - timedelta(seconds=30))
    return mark_interrupted(qs)
