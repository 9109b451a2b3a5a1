"""The run services: start, steer, re-run and read runs (``run_<action>``), and their sync parts.

Every door (the websocket, ``manage.py fuse``, the API, MCP) starts a run here, so limits,
spend, keys and storage are the same whichever door a request used. The sync helpers validate
and write rows; the async services hand the run to this process's manager (chat.runs.live).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from chat import model_catalogue, panels, presets, spend
from chat.engine import (
    build_limits,
    build_registry,
    build_web_tools,
    known_secrets,
    research_settings,
    search_unavailable_reason,
)
from chat.errors import NotFound
from chat.fusion.client import ChatClient
from chat.fusion.transport import shared_http
from chat.fusion.pipeline import FusionRun
from chat.fusion.providers import ProviderRegistry
from chat.fusion.types import FusionRequest, Message
from chat.models import Conversation, FollowUpMode, MemberResponse, MemberStatus, Run, RunStatus, Turn
from chat.runs.checks import (
    RunError,
    check_limits,
    check_models_and_keys,
    count_started,
    search_price_usd,
    spend_hold,
)
from chat.memo import MISSING, memo_entry, memo_update, reads_once
from chat.runs import starts
from chat.runs.frames import frame_message
from chat.runs.live import ActiveRun, control_group, group_name, join_control_group, manager
from chat.runs.recovery import PROCESS_ID, mark_interrupted, stale_after
from chat.runs.state import RunState, turn_summary

log = logging.getLogger(__name__)

TITLE_CHARS = 60


# --------------------------------------------------------------------------- requests


def history_messages(
    conversation: Conversation,
    before_index: int,
    *,
    panel_size: int,
    shown_runs: Collection[str] = (),
    member_threads: bool = True,
) -> tuple[list[Message], dict[int, list[Message]]]:
    """The conversation before turn *before_index*: fused history for everyone, and each member's own thread.

    Each earlier turn contributes one of its runs (versions): the one in *shown_runs* (the version
    the user was looking at when sending), if it has a fused answer; else its newest complete one.
    Without *member_threads* the members' answers are not read and their threads hold the fused
    history (what a run in fused mode sends).
    """
    fused: list[Message] = []
    threads: dict[int, list[Message]] = {i: [] for i in range(panel_size)}
    shown = {str(r) for r in shown_runs}
    if before_index <= 0:
        return fused, threads
    read = memo_entry("history_turns", conversation.pk)  # a batch of starts read them (chat.runs.starts)
    if read is MISSING:
        turns = list(_history_turns(conversation.turns.filter(index__lt=before_index), members=member_threads))
    else:
        turns = [t for t in read if t.index < before_index]
    for turn in turns:
        runs = sorted(turn.runs.all(), key=lambda r: (r.created_at, str(r.pk)))
        done = (
            [r for r in runs if str(r.pk) in shown and r.answer]
            or [r for r in runs if r.status == RunStatus.COMPLETE and r.answer]
            or runs
        )
        run = done[-1] if done else None
        fused += list(turn.context or [])
        fused.append({"role": "user", "content": turn.prompt})
        if run and run.answer:
            fused.append({"role": "assistant", "content": run.answer})
        answers = (
            {m.slot: m.content for m in run.members.all() if m.status == MemberStatus.COMPLETE}
            if run and member_threads
            else {}
        )
        for slot in threads:
            threads[slot] += list(turn.context or [])
            threads[slot].append({"role": "user", "content": turn.prompt})
            own = answers.get(slot) or (run.answer if run else "")
            if own:
                threads[slot].append({"role": "assistant", "content": own})
    return fused, threads


def _history_turns(turns: QuerySet[Turn], *, members: bool) -> QuerySet[Turn]:
    """*turns* in order, with their runs (and, with *members*, the runs' member answers) read
    along: only the columns history needs (a run's analysis, config and calls are big JSON)."""
    runs_q = Run.objects.only("id", "turn_id", "created_at", "status", "answer")
    if members:
        answers = MemberResponse.objects.only("run_id", "slot", "status", "content")
        runs_q = runs_q.prefetch_related(Prefetch("members", queryset=answers))
    return (
        turns.only("id", "index", "prompt", "context", "conversation_id")
        .order_by("conversation_id", "index")
        .prefetch_related(Prefetch("runs", queryset=runs_q))
    )


def history_turns_of(conversation_ids: Collection[int]) -> dict[int, list[Turn]]:
    """The earlier turns of each conversation, for ``history_messages`` (a batch of starts)."""
    found: dict[int, list[Turn]] = {pk: [] for pk in conversation_ids}
    for turn in _history_turns(Turn.objects.filter(conversation_id__in=list(conversation_ids)), members=True):
        found[turn.conversation_id].append(turn)
    return found


def build_request(
    conversation: Conversation, turn: Turn, panel: dict[str, Any], *, shown_runs: Collection[str] = ()
) -> FusionRequest:
    """The engine's request for *turn* with *panel* (parsed by chat.panels.parse_panel);
    *shown_runs*: the versions of earlier turns to build on (see ``history_messages``)."""
    members = [panels.spec_from_dict(m) for m in panel["members"]]
    per_member = conversation.follow_up_mode == FollowUpMode.PER_MEMBER
    fused, threads = history_messages(
        conversation, turn.index, panel_size=len(members), shown_runs=shown_runs, member_threads=per_member
    )
    question: Message = {"role": "user", "content": turn.prompt}
    context = list(turn.context or [])
    member_messages = None
    if per_member:
        member_messages = {slot: thread + context + [question] for slot, thread in threads.items()}
    return FusionRequest(
        messages=fused + context + [question],
        panel=members,  # type: ignore[arg-type]
        analyst=panels.spec_from_dict(panel["analyst"]),  # type: ignore[arg-type]
        writer=panels.spec_from_dict(panel["writer"]),  # type: ignore[arg-type]
        fallback_analyst=panels.spec_from_dict(panel.get("fallback_analyst")),
        fallback_writer=panels.spec_from_dict(panel.get("fallback_writer")),
        member_messages=member_messages,
        research=research_settings(panel.get("research")),
    )


def _no_tool_models(request: FusionRequest) -> set[str]:
    """Members the model catalogue says cannot take tools (only when it lists parameters at all)."""
    if request.research is None or not request.research.web_tools:
        return set()
    try:
        lookup = model_catalogue.model_resolver()
        found = {spec.model: lookup(spec.model) for spec in request.panel}
    except Exception:  # the catalogue is a hint; a run never fails over it
        log.warning("could not read tool support from the model catalogue", exc_info=True)
        return set()
    return {
        model
        for model, info in found.items()
        if info is not None
        and getattr(info, "supported_parameters", None)
        and not getattr(info, "supports_tools", True)
    }


def _research_notice(request: FusionRequest) -> str | None:
    """Why web search is not offered although the panel asked for web tools, else None."""
    if request.research is None or not request.research.web_tools:
        return None
    return search_unavailable_reason()


# --------------------------------------------------------------------------- writing a run


def _create_run(
    *,
    user: User,
    conversation: Conversation,
    turn: Turn,
    client_run_id: str,
    panel: dict[str, Any],
    writer: str | None = None,
    reuse: dict[int, MemberResponse] | None = None,
    **run_fields: Any,
) -> Run:
    run = Run.objects.create(
        user=user,
        conversation=conversation,
        turn=turn,
        client_run_id=client_run_id,
        config=panel,
        analyst_model=panel["analyst"]["model"],
        writer_model=writer or panel["writer"]["model"],
        process_id=PROCESS_ID,
        **run_fields,
    )
    reuse = reuse or {}
    MemberResponse.objects.bulk_create(
        [
            MemberResponse(
                run=run,
                slot=i,
                model=m["model"],
                label=m.get("label", ""),
                **(
                    {
                        "status": MemberStatus.COMPLETE,
                        "content": reuse[i].content,
                        "reasoning": reuse[i].reasoning,
                        "ttft_ms": reuse[i].ttft_ms,
                        "duration_ms": reuse[i].duration_ms,
                        "usage": reuse[i].usage,
                        "tool_calls": reuse[i].tool_calls,
                        "sources": reuse[i].sources,
                        "notes": reuse[i].notes,
                    }
                    if i in reuse
                    else {}
                ),
            )
            for i, m in enumerate(panel["members"])
        ]
    )
    return run


def _resolve_preset(*, user: User, ref: Any) -> presets.ResolvedPreset:
    try:
        return presets.preset_resolve(user=user, ref=ref)
    except NotFound:
        raise RunError("not_found", "No such preset.") from None
    except presets.PresetError as exc:
        raise RunError("invalid", str(exc)) from None


def _checked_prompt(prompt: str) -> str:
    prompt = prompt.strip()
    if not prompt:
        raise RunError("invalid", "Write a prompt first.")
    if len(prompt) > settings.FUSION_MAX_PROMPT_CHARS:
        raise RunError(
            "invalid", f"The prompt is {len(prompt)} characters; the limit is {settings.FUSION_MAX_PROMPT_CHARS}."
        )
    return prompt


def _start_sync(
    *,
    user: User,
    conversation_id: int,
    client_run_id: str,
    prompt: str,
    panel_data: Any,
    follow_up_mode: str | None,
    preset_ref: Any = None,
    shown_runs: Collection[str] = (),
    context: list[Message] | None = None,
) -> tuple[Run, FusionRequest | None]:
    """Validate and write the turn and the run; return (run, request) or (existing run, None).

    A ``panel`` or ``preset`` sent with start is for this turn only; the conversation keeps its
    own panel, except that a conversation without one yet adopts it. *context*: messages an API
    request sent before its prompt (system, earlier turns), stored on the turn.
    """
    # A batch of starts (chat.runs.starts) read these for all of its starts at once.
    existing = memo_entry("existing_runs", (user.pk, client_run_id))
    if existing is MISSING:
        known = Run.objects.filter(user=user, client_run_id=client_run_id)
        prefetched = memo_entry("existing_runs_known", (user.pk, client_run_id), False)
        existing = None if prefetched or not known.exists() else known.select_related("turn").first()
    if existing is not None:
        if existing.conversation_id != conversation_id:
            raise RunError("not_found", "No such run.")
        return existing, None
    conversation = memo_entry("conversations", (user.pk, conversation_id), None)
    if conversation is None:
        conversation = Conversation.objects.filter(user=user, pk=conversation_id).first()
    if conversation is None:
        raise RunError("not_found", "No such conversation.")
    prompt = _checked_prompt(prompt)
    resolved = _resolve_preset(user=user, ref=preset_ref) if preset_ref is not None else None
    if resolved is not None:
        panel_data = resolved.panel
    try:
        panel = panels.parse_panel(
            panel_data if panel_data is not None else (conversation.panel or panels.default_panel())
        )
    except panels.PanelError as exc:
        raise RunError("invalid", str(exc)) from None
    check_limits(user=user, conversation=conversation)
    check_models_and_keys(user=user, panel=panel)
    try:
        with transaction.atomic():
            index = memo_entry("turn_counts", conversation.pk)  # a batch of starts counted them
            if index is MISSING:
                index = conversation.turns.count()
            turn = Turn.objects.create(conversation=conversation, index=index, prompt=prompt, context=context or [])
            if follow_up_mode in (FollowUpMode.FUSED, FollowUpMode.PER_MEMBER):
                conversation.follow_up_mode = follow_up_mode
            elif not conversation.panel and resolved is not None:
                conversation.follow_up_mode = resolved.follow_up_mode
            request = build_request(conversation, turn, panel, shown_runs=shown_runs)
            reserved, server_key = spend_hold(user=user, config=panel, request=request)
            run = _create_run(
                user=user,
                conversation=conversation,
                turn=turn,
                client_run_id=client_run_id,
                panel=panel,
                reserved_usd=reserved,
                uses_server_key=server_key,
            )
            if not conversation.panel:
                conversation.panel = panel
                if resolved is not None:
                    conversation.preset, conversation.builtin_preset = resolved.preset, resolved.builtin_key
            if index == 0 and conversation.title in ("", "New conversation"):
                conversation.title = title_from_prompt(prompt)
            conversation.updated_at = timezone.now()
            conversation.save(
                update_fields=["panel", "preset", "builtin_preset", "follow_up_mode", "title", "updated_at"]
            )
    except IntegrityError:
        # Another tab started a run here a moment ago, or the same client run id raced in.
        existing = Run.objects.filter(user=user, client_run_id=client_run_id).first()
        if existing is not None and existing.conversation_id == conversation_id:
            return existing, None
        raise RunError(
            "busy", "A run is already going in this conversation. Stop it or wait for it to finish."
        ) from None
    count_started(user=user)
    spend.spend_counted(user=user, amount=reserved)
    memo_update("turn_counts", {conversation.pk: index + 1})
    return run, request


def title_from_prompt(prompt: str) -> str:
    """The prompt's first words, cut at a word boundary; no "…" is stored (CSS ellipsizes)."""
    line = " ".join(prompt.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS]
    words = cut.rsplit(" ", 1)[0] if " " in cut and line[TITLE_CHARS] != " " else cut
    return words.rstrip(" ,;:.-–—") or cut


# --------------------------------------------------------------------------- launching


async def _start_active(run: Run, request: FusionRequest, frame: dict[str, Any], **launch_kw: Any) -> ActiveRun:
    """Listen for controls, tell the conversation the run started, then run it — in that order."""
    channel = await join_control_group(run.pk)
    await get_channel_layer().group_send(group_name(run.conversation_id), frame_message(frame))
    return _launch(run, request, control_channel=channel, **launch_kw)


def _launch(
    run: Run,
    request: FusionRequest,
    *,
    registry: ProviderRegistry,
    control_channel: str | None = None,
    price_lookup: Any = None,
    reused: dict[int, dict[str, Any]] | None = None,
    reused_research: dict[int, dict[str, Any]] | None = None,
    listener: Any = None,
    **fusion_kw: Any,
) -> ActiveRun:
    """Run the pipeline with *registry*: the run's user's own keys (chat.engine.build_registry).

    Web tools are built here from the request's research settings (chat.engine.build_web_tools).
    """
    # Error text is scrubbed of every key the process knows, not only the ones this run uses.
    client = ChatClient(registry, limits=build_limits(), extra_secrets=known_secrets(), http=shared_http())
    fusion = FusionRun(request, client, tools=build_web_tools(request.research), **fusion_kw)
    state = RunState.start(
        run,
        request.panel,
        reused=reused or {},
        price_lookup=price_lookup,
        research_notice=_research_notice(request),
        search_price_usd=search_price_usd(),
    )
    for slot, research in (reused_research or {}).items():  # answers carried over keep their research
        member = state.members[slot]
        member.tool_calls, member.sources, member.notes = (
            list(research.get(k) or []) for k in ("tool_calls", "sources", "notes")
        )
    active = ActiveRun(
        run=run,
        request=request,
        client=client,
        fusion=fusion,
        state=state,
        control_channel=control_channel,
        listener=listener,
    )
    manager.launch(active)
    return active


def _run_started_frame(run: Run, request: FusionRequest, replaces: str | None = None) -> dict[str, Any]:
    return {
        "type": "run.started",
        "run": str(run.pk),
        "client_run_id": run.client_run_id,
        "turn": turn_summary(run.turn, run.turn_id),
        "members": [{"slot": i, "model": s.model, "label": s.label or ""} for i, s in enumerate(request.panel)],
        "analyst": request.analyst.model,
        "writer": run.writer_model,
        "replaces": replaces,
        "version": (run.config or {}).get("version"),
        "research_notice": _research_notice(request),
        "started_at": run.created_at.isoformat(),
    }


def engine_inputs(*, user: User, request: FusionRequest) -> dict[str, Any]:
    """What the run reads before it starts: the user's keys, the catalogue's prices, tool support."""
    return {
        "registry": build_registry(user=user),
        "price_lookup": model_catalogue.model_resolver(),
        "no_tool_models": _no_tool_models(request),
    }


def _start_and_read(*, user: User, **start: Any) -> tuple[Run, FusionRequest | None, dict[str, Any]]:
    """``_start_sync`` and the engine's inputs in one call of a run-path database thread, each of
    the catalogue and the user's keys read once (``reads_once``)."""
    with reads_once():
        run, request = _start_sync(user=user, **start)
        return run, request, (engine_inputs(user=user, request=request) if request is not None else {})


async def run_start(
    *,
    user: User,
    conversation_id: int,
    client_run_id: str,
    prompt: str,
    panel: Any = None,
    follow_up_mode: str | None = None,
    preset: Any = None,
    shown_runs: Collection[str] = (),
    session: tuple[str, int] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Start a run, or attach to the one this client run id already started.

    *shown_runs*: the run (version) of each earlier turn the user is looking at. *session*:
    (session key, user id) that must still be valid (else ``SessionEnded``), checked with the start.
    Returns (state or run.started frame, created).
    """
    run, request, inputs = await starts.batcher().start(
        user=user,
        session=session,
        conversation_id=conversation_id,
        client_run_id=client_run_id,
        prompt=prompt,
        panel_data=panel,
        follow_up_mode=follow_up_mode,
        preset_ref=preset,
        shown_runs=shown_runs,
    )
    if request is None:
        return await run_snapshot(run_id=run.pk), False
    frame = _run_started_frame(run, request)
    await _start_active(run, request, frame, **inputs)
    return frame, True


# --------------------------------------------------------------------------- reading runs


def run_state(run: Run) -> dict[str, Any]:
    """The snapshot shape of docs/protocol.md, from the database (history, or another process's run)."""
    return RunState.from_rows(run).snapshot()


async def run_snapshot(*, run_id: uuid.UUID) -> dict[str, Any]:
    active = manager.get(run_id)
    if active is not None:
        return active.snapshot()
    run = await database_sync_to_async(
        lambda: Run.objects.select_related("turn").prefetch_related("members").get(pk=run_id)
    )()
    return await database_sync_to_async(run_state)(run)


async def run_request_live_snapshot(*, run_id: uuid.UUID, reply_to: str) -> None:
    """Ask the process that owns a running run for its live snapshot, sent to *reply_to*."""
    if manager.get(run_id) is None:
        await get_channel_layer().group_send(
            control_group(run_id), {"type": "run.control", "action": "snapshot", "reply_to": reply_to}
        )


def running_runs_for_conversation(*, user: User, conversation_id: int) -> list[uuid.UUID]:
    """Running runs of a conversation; runs whose owner process went silent become interrupted."""
    stale_before = timezone.now() - stale_after()
    runs = Run.objects.filter(user=user, conversation_id=conversation_id, status=RunStatus.RUNNING)
    ids = []
    for run in runs:
        if manager.get(run.pk) is None and run.heartbeat_at < stale_before:
            mark_interrupted(Run.objects.filter(pk=run.pk))
        else:
            ids.append(run.pk)
    return ids


# --------------------------------------------------------------------------- steering runs


def _owned_run(*, user: User, conversation_id: int, client_run_id: str) -> Run:
    run = (
        Run.objects.filter(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
        .select_related("turn", "conversation")
        .first()
    )
    if run is None:
        raise RunError("not_found", "No such run.")
    return run


async def _active_for(*, user: User, conversation_id: int, client_run_id: str) -> tuple[Run, ActiveRun | None]:
    run = await database_sync_to_async(_owned_run)(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id
    )
    return run, manager.get(run.pk)


async def _control(
    *, user: User, conversation_id: int, client_run_id: str, action: str, slot: int | None = None
) -> tuple[Run, bool | None]:
    """Steer a run wherever it runs: here directly, in another process through the channel layer.

    Returns (run, True/False) when this process owns the run (did the control apply?),
    (run, None) when it was sent to the owning process, (run, False) when the run is over.
    """
    run, active = await _active_for(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    if active is not None:
        return run, active.control(action, slot)
    if run.status == RunStatus.RUNNING:
        await get_channel_layer().group_send(
            control_group(run.pk), {"type": "run.control", "action": action, "slot": slot}
        )
        return run, None
    return run, False


async def run_stop(*, user: User, conversation_id: int, client_run_id: str) -> None:
    _, applied = await _control(user=user, conversation_id=conversation_id, client_run_id=client_run_id, action="stop")
    if applied is False:
        raise RunError("invalid", "This run is not running.")


async def run_stop_member(*, user: User, conversation_id: int, client_run_id: str, slot: int) -> None:
    _, applied = await _control(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id, action="stop_member", slot=slot
    )
    if applied is False:
        raise RunError("invalid", "That member is not running.")


async def run_fuse_now(*, user: User, conversation_id: int, client_run_id: str) -> None:
    _, applied = await _control(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id, action="fuse_now"
    )
    if applied is False:
        raise RunError("invalid", "Fuse now works only while panel members are still answering.")
