"""Re-running a turn: a new run (version) of a turn made from an earlier run of it.

Member retries, rewrites with another writer, "retry all stopped", "resend prompt" and "fuse what
we have" (``RERUN_MODES``). They share the run services' checks, start path and history
(``chat.runs.services``); this module decides what the new run reuses and starts it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chat import panels
from chat.dbthread import in_db_thread
from chat.fusion.member import STOPPED_MESSAGE
from chat.fusion.types import AnalysisCompleted, FusionRequest, ProviderError
from chat.memo import reads_once
from chat.models import MemberResponse, MemberStatus, Run, RunStatus
from chat.runs.checks import RunError, check_limits, check_models_and_keys, reserve_spend
from chat.runs.state import call_metrics
from chat.runs.services import (
    _active_for,
    _control,
    _create_run,
    engine_inputs,
    _owned_run,
    _run_started_frame,
    _start_active,
    build_request,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- re-running a turn

# How a new run (version) of a turn is made from an earlier run of it, by what the user asked:
#   retry_member  — that member only, the others as they were; ends after the panel (no analysis,
#                   no fused answer): re-fusing with the new answer is the user's next choice;
#   rewrite       — the same answers and analysis, the fused answer again with another writer;
#   retry_stopped — every member without an answer again, then analysis and fused answer;
#   resend        — the whole prompt again, nothing reused;
#   fuse          — the answers there are, the others left as they were, then analysis and answer.
RERUN_MODES = ("retry_member", "rewrite", "retry_stopped", "resend", "fuse")
INTERRUPTED_MEMBER = "Interrupted before it answered."


def _carried_error(member: MemberResponse, run: Run) -> ProviderError:
    """How a member that is not asked again ended in *run*."""
    if member.error_kind:
        return ProviderError(kind=member.error_kind, message=member.error_message or STOPPED_MESSAGE)
    if run.status == RunStatus.INTERRUPTED:
        return ProviderError(kind="cancelled", message=INTERRUPTED_MEMBER)
    return ProviderError(kind="cancelled", message=STOPPED_MESSAGE)


def _rerun_sync(
    *,
    user: User,
    conversation_id: int,
    client_run_id: str,
    slot: int | None,
    writer: str | None,
    mode: str | None = None,
    shown_runs: Collection[str] = (),
) -> tuple[Run, FusionRequest, dict[str, Any], str]:
    """A new run for the same turn made from an old one (see RERUN_MODES); returns the run, its
    request, the engine's extra arguments and the old run's id. Without *mode*: a rewrite when a
    *writer* is given, else a member retry when a *slot* is, else a retry of the stopped members."""
    mode = mode or ("rewrite" if writer is not None else "retry_member" if slot is not None else "retry_stopped")
    old = _owned_run(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    if old.status == RunStatus.RUNNING:
        raise RunError("busy", "Wait for the run to finish first.")
    panel = {k: v for k, v in old.config.items() if k != "version"}
    members = {m.slot: m for m in old.members.all()}
    if slot is not None and slot not in members:
        raise RunError("invalid", "No such member.")
    if writer is not None:
        try:
            panel["writer"] = panels.parse_panel({**panel, "writer": {"model": writer}})["writer"]
        except panels.PanelError as exc:
            raise RunError("invalid", str(exc)) from None
    complete = {s: m for s, m in members.items() if m.status == MemberStatus.COMPLETE}
    reuse = {} if mode == "resend" else {s: m for s, m in complete.items() if s != slot}
    carried: dict[int, MemberResponse] = {}
    if mode in ("retry_member", "rewrite", "fuse"):
        carried = {s: m for s, m in members.items() if s not in reuse and s != slot}
    if mode in ("rewrite", "fuse") and not reuse:
        raise RunError("invalid", "No member answered in this run, so there is nothing to fuse.")
    if mode == "retry_stopped" and len(reuse) == len(members):
        raise RunError("invalid", "Every member answered in this run: there is nothing to retry.")
    check_limits(user=user, conversation=old.conversation)
    check_models_and_keys(user=user, panel=panel)
    new_client_id = f"{old.client_run_id[:40]}-{uuid.uuid4().hex[:12]}"
    request = build_request(old.conversation, old.turn, panel, shown_runs=shown_runs)
    # Rewriting (a new writer over the same answers) keeps the analysis too.
    kept_analysis = old.analysis if mode == "rewrite" else None
    version: dict[str, Any] = {"kind": mode, "of": str(old.pk)}
    if slot is not None:
        version["slot"] = slot
    if writer is not None:
        version["writer"] = panel["writer"]["model"]
    try:
        with transaction.atomic():
            run = _create_run(
                user=user,
                conversation=old.conversation,
                turn=old.turn,
                client_run_id=new_client_id,
                panel={**panel, "version": version},
                writer=panel["writer"]["model"],
                reuse=reuse,
            )
            reserve_spend(
                user=user,
                run=run,
                request=request,
                reused_slots=[*reuse, *carried],
                reuse_analysis=kept_analysis is not None or mode == "retry_member",
            )
    except IntegrityError:
        raise RunError("busy", "A run is already going in this conversation.") from None
    engine: dict[str, Any] = {
        "reuse_answers": {s: m.content for s, m in reuse.items()},
        "reused": {s: call_metrics(m.ttft_ms, m.duration_ms, m.usage) for s, m in reuse.items()},
        "reuse_sources": {s: m.sources or [] for s, m in reuse.items()},
        "reused_research": {
            s: {"tool_calls": m.tool_calls, "sources": m.sources, "notes": m.notes} for s, m in reuse.items()
        },
        "carry_over": {s: _carried_error(m, old) for s, m in carried.items()},
        "carry_over_text": {s: m.content for s, m in carried.items() if m.content},
        "panel_only": mode == "retry_member",
        "reuse_analysis": None,
    }
    if kept_analysis is not None:
        engine["reuse_analysis"] = AnalysisCompleted(
            analyst_model=old.analyst_model, analysis=kept_analysis, label_map=old.label_map, records=[]
        )
        Run.objects.filter(pk=run.pk).update(
            analysis=kept_analysis, label_map=old.label_map, analyst_model=old.analyst_model
        )
        run.analysis, run.label_map = kept_analysis, old.label_map
    return run, request, engine, str(old.pk)


def _rerun_and_read(*, user: User, **rerun: Any) -> tuple[Run, FusionRequest, dict[str, Any], str, dict[str, Any]]:
    """``_rerun_sync`` and the engine's inputs in one call of a run-path database thread."""
    with reads_once():
        run, request, engine, old_id = _rerun_sync(user=user, **rerun)
        return run, request, engine, old_id, engine_inputs(user=user, request=request)


async def _rerun(
    *,
    user: User,
    conversation_id: int,
    client_run_id: str,
    mode: str,
    slot: int | None = None,
    writer: str | None = None,
    shown_runs: Collection[str] = (),
) -> dict[str, Any]:
    run, request, engine, old_id, inputs = await in_db_thread(
        _rerun_and_read,
        user=user,
        conversation_id=conversation_id,
        client_run_id=client_run_id,
        mode=mode,
        slot=slot,
        writer=writer,
        shown_runs=shown_runs,
    )
    frame = _run_started_frame(run, request, replaces=old_id)
    await _start_active(run, request, frame, **inputs, **engine)
    return frame


async def run_retry_member(
    *, user: User, conversation_id: int, client_run_id: str, slot: int, shown_runs: Collection[str] = ()
) -> None:
    """Retry one member. While the panel is answering it restarts in place; once the run is over,
    a new version re-runs that member only (see RERUN_MODES)."""
    run, active = await _active_for(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    if active is not None or run.status == RunStatus.RUNNING:  # still running: restart in place
        _, applied = await _control(
            user=user, conversation_id=conversation_id, client_run_id=client_run_id, action="retry_member", slot=slot
        )
        if applied is False:
            raise RunError("invalid", "Only a failed or stopped member can be retried, while the panel is answering.")
        return
    await _rerun(
        user=user,
        conversation_id=conversation_id,
        client_run_id=client_run_id,
        mode="retry_member",
        slot=slot,
        shown_runs=shown_runs,
    )


async def run_regenerate(
    *, user: User, conversation_id: int, client_run_id: str, writer: str, shown_runs: Collection[str] = ()
) -> None:
    await _rerun(
        user=user,
        conversation_id=conversation_id,
        client_run_id=client_run_id,
        mode="rewrite",
        writer=writer,
        shown_runs=shown_runs,
    )


async def run_rerun(
    *, user: User, conversation_id: int, client_run_id: str, mode: str, shown_runs: Collection[str] = ()
) -> None:
    """A new version of a finished run's turn: "retry_stopped", "resend" or "fuse" (RERUN_MODES)."""
    if mode not in ("retry_stopped", "resend", "fuse"):
        raise RunError("invalid", "mode must be retry_stopped, resend or fuse.")
    await _rerun(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id, mode=mode, shown_runs=shown_runs
    )
