"""Runs: the services that start and steer them, and the per-process manager that owns them.

A run is owned by an ``ActiveRun`` task in this process, never by a websocket consumer:
consumers only subscribe to the conversation's channel-layer group. The task turns engine
events into

* coalesced frames for the group (about every ``FUSION_FRAME_INTERVAL_MS``; the first delta of
  each member at once), rendered once on the server (finished Markdown blocks + unfinished tail);
* checkpoints of partial text to the database about once a second, and the final state in one
  transaction, sent to clients only after it committed.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from chat import model_catalogue, keys, panels, presets, spend
from chat.engine import build_limits, build_registry, build_web_tools, known_secrets, research_settings, search_unavailable_reason
from chat.fusion.analysis import distinct_model_ids
from chat.fusion.client import ChatClient
from chat.fusion.providers import ProviderRegistry
from chat.fusion.pipeline import FusionRun
from chat.fusion.types import (
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    FinalDelta,
    FinalStarted,
    FusionRequest,
    Message,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelNote,
    PanelReasoningDelta,
    PanelToolFinished,
    PanelToolStarted,
    PipelineEvent,
    RunCompleted,
    RunFailed,
)
from chat.models import Conversation, FollowUpMode, MemberResponse, MemberStatus, Run, RunStatus, Turn
from chat.render import IncrementalRenderer, RenderUpdate, render_markdown
from chat.ws_security import inactive_users

log = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
TITLE_CHARS = 60


# Whole answers are rendered once in a worker thread (_render_ahead) and read back here.
_render_whole = functools.lru_cache(maxsize=64)(render_markdown)


class RunError(Exception):
    """A request about runs that cannot be honoured; ``code`` and ``message`` go to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def group_name(conversation_id: int) -> str:
    return f"conv_{conversation_id}"


def control_group(run_id: uuid.UUID) -> str:
    """The group a run's owning process listens on for stop/stop member/retry/fuse now."""
    return f"runctl_{run_id.hex}"


# --------------------------------------------------------------------------- state shapes



def _metrics(ttft_ms: int | None, duration_ms: int | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"ttft_ms": ttft_ms, "duration_ms": duration_ms, "usage": usage or {}}


def _text_state(content: str, finished: bool) -> dict[str, Any]:
    """A stream's text for a snapshot: whole HTML when finished, else blocks + consumed."""
    if finished:
        return {"content": content, "html": render_markdown(content) if content else "", "blocks_html": "", "consumed": len(content)}
    renderer = IncrementalRenderer()
    update = renderer.feed(content)
    return {"content": content, "html": None, "blocks_html": "".join(update.blocks), "consumed": renderer.consumed}


def run_state(run: Run) -> dict[str, Any]:
    """The snapshot shape of docs/protocol.md, from the database (history, or another process's run)."""
    members = list(run.members.all())
    keys = distinct_model_ids([m.model for m in members])
    done = run.status != RunStatus.RUNNING
    member_states = []
    for m in members:
        finished = done or m.status in (MemberStatus.COMPLETE, MemberStatus.FAILED, MemberStatus.STOPPED)
        state = {
            "slot": m.slot,
            "model": m.model,
            "key": keys[m.slot] if m.slot < len(keys) else m.model,
            "label": m.label,
            "status": m.status if not (done and m.status in _LIVE_STATUSES) else MemberStatus.STOPPED,
            "reasoning": m.reasoning,
            "error": {"kind": m.error_kind, "message": m.error_message} if m.error_kind else None,
            "metrics": _metrics(m.ttft_ms, m.duration_ms, m.usage),
            "attempt": m.attempt,
            "tool_calls": m.tool_calls or [],
            "sources": m.sources or [],
            "notes": m.notes or [],
        }
        state.update(_text_state(m.content, finished))
        member_states.append(state)
    if run.status == RunStatus.RUNNING:
        phase = "final" if run.answer or run.writer_model and run.analysis is not None else "panel"
    else:
        phase = "done"
    return {
        "run": str(run.pk),
        "client_run_id": run.client_run_id,
        "status": run.status,
        "phase": phase,
        "turn": {"id": run.turn_id, "index": run.turn.index, "prompt": run.turn.prompt},
        "members": member_states,
        "analyst": run.analyst_model,
        "writer": run.writer_model,
        "analysis": run.analysis,
        "label_map": run.label_map,
        "models": {k: i for i, k in enumerate(keys)},
        "analysis_error": run.analysis_error,
        "final": _text_state(run.answer, done),
        "usage": run.usage,
        "timings": run.timings,
        "failed_models": run.failed_models,
        "error": {"kind": run.error_kind, "message": run.error_message} if run.error_kind else None,
        "sources": run.sources or [],
        "tool_usage": run.tool_usage or {},
        "research_notice": (run.tool_usage or {}).get("notice"),
        "started_at": run.created_at.isoformat(),
        "can_retry": run.status in (RunStatus.INTERRUPTED, RunStatus.ERROR, RunStatus.CANCELLED, RunStatus.TIMEOUT),
    }


# Live statuses: a finished run shows a member still in one of them as stopped.
_LIVE_STATUSES = (MemberStatus.WAITING.value, MemberStatus.STREAMING.value, "thinking", "searching")


def _merge_sources(into: list[dict[str, Any]], sources: list[dict[str, Any]]) -> None:
    """Add sources ({url, title, …}, URLs already normalised by the engine) not yet in *into*."""
    known = {s.get("url") for s in into}
    for source in sources:
        if source.get("url") and source["url"] not in known:
            known.add(source["url"])
            into.append(dict(source))


def _run_sources(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's sources from its members' ([{url, title, members}]), for runs that did not complete."""
    merged: dict[str, dict[str, Any]] = {}
    for m in members:
        for source in m.get("sources") or []:
            entry = merged.setdefault(source["url"], {"url": source["url"], "title": "", "members": []})
            entry["title"] = entry["title"] or source.get("title") or ""
            if m["key"] not in entry["members"]:
                entry["members"].append(m["key"])
    return list(merged.values())


def _tool_usage(usage: dict[str, Any], notice: str | None) -> dict[str, Any]:
    """The engine's tool counts, with the configured price of searches and the research notice."""
    usage = dict(usage or {})
    price = float(settings.FUSION_SEARCH_PRICE_USD or 0)
    if price > 0 and usage.get("searches"):
        usage["search_cost_usd"] = round(price * int(usage["searches"]), 6)
    if notice:
        usage["notice"] = notice
    return usage


# --------------------------------------------------------------------------- the live run


@dataclass
class _Stream:
    """One streamed text (a member's answer or the fused answer) and its live renderer."""

    text: str = ""
    reasoning: str = ""
    renderer: IncrementalRenderer = field(default_factory=IncrementalRenderer)
    blocks: list[str] = field(default_factory=list)
    html: str | None = None
    first_sent: bool = False

    def reset(self) -> None:
        self.text, self.reasoning, self.html, self.first_sent = "", "", None, False
        self.renderer = IncrementalRenderer()
        self.blocks = []

    def feed(self, delta: str, update: RenderUpdate | None = None) -> dict[str, Any]:
        """Append *delta*; *update* is the renderer's result when it was computed ahead, off the loop."""
        offset = len(self.text)
        self.text += delta
        update = update if update is not None else self.renderer.feed(delta)
        self.blocks.extend(update.blocks)
        return {"offset": offset, "delta": delta, "blocks": list(update.blocks), "consumed": self.renderer.consumed}

    def state(self) -> dict[str, Any]:
        if self.html is not None:
            return {"content": self.text, "html": self.html, "blocks_html": "", "consumed": len(self.text)}
        return {"content": self.text, "html": None, "blocks_html": "".join(self.blocks), "consumed": self.renderer.consumed}


class ActiveRun:
    """A running pipeline: engine events → frames for the group + database checkpoints."""

    def __init__(self, *, run: Run, request: FusionRequest, client: ChatClient, fusion: FusionRun,
                 reused: dict[int, dict[str, Any]] | None = None) -> None:
        self.run_id = run.pk
        self.client_run_id = run.client_run_id
        self.user_id = run.user_id
        self.conversation_id = run.conversation_id
        self.turn = {"id": run.turn_id, "index": run.turn.index, "prompt": run.turn.prompt}
        self.request = request
        self.client = client
        self.fusion = fusion
        self.started_at = run.created_at
        self.t0 = time.monotonic()
        models = [m.model for m in request.panel]
        self.keys = distinct_model_ids(models)
        self.members: list[dict[str, Any]] = [
            {
                "slot": i,
                "model": spec.model,
                "key": self.keys[i],
                "label": spec.label or "",
                "status": MemberStatus.WAITING.value,
                "error": None,
                "metrics": _metrics(None, None, None),
                "attempt": 1,
                "tool_calls": [],
                "sources": [],
                "notes": [],
            }
            for i, spec in enumerate(request.panel)
        ]
        # Web research: why search is not offered (when asked for), the run's sources and counts.
        self.research_notice: str | None = None
        self.sources: list[dict[str, Any]] = []
        self.tool_usage: dict[str, Any] = {}
        self.streams = [_Stream() for _ in request.panel]
        # Answers carried over from an earlier run of the turn keep that run's metrics.
        self.reused = reused or {}
        self.loop = asyncio.get_running_loop()
        self._ahead: RenderUpdate | None = None
        self.control_channel: str | None = None
        # The catalogue's prices, read once before the run (the event loop must not query).
        self.price_lookup: Any = None
        self.final = _Stream()
        self.phase = "panel"
        self.analyst = run.analyst_model
        self.writer = run.writer_model
        self.analysis: dict[str, Any] | None = run.analysis
        self.label_map: dict[str, str] = run.label_map or {}
        self.analysis_error = ""
        self.analysis_calls: list[dict[str, Any]] = []
        self.status = RunStatus.RUNNING.value
        self.result: RunCompleted | RunFailed | None = None
        self._pending: list[dict[str, Any]] = []
        self._pending_delta: dict[tuple[str, int], int] = {}
        self._dirty = False
        self._flush_now = asyncio.Event()
        self._closing = False
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- snapshot

    def snapshot(self) -> dict[str, Any]:
        members = []
        for m, s in zip(self.members, self.streams):
            state = dict(m)
            state["reasoning"] = s.reasoning
            state.update(s.state())
            members.append(state)
        return {
            "run": str(self.run_id),
            "client_run_id": self.client_run_id,
            "status": self.status,
            "phase": self.phase,
            "turn": self.turn,
            "members": members,
            "analyst": self.analyst,
            "writer": self.writer,
            "analysis": self.analysis,
            "label_map": self.label_map,
            "models": {k: i for i, k in enumerate(self.keys)},
            "analysis_error": self.analysis_error,
            "final": self.final.state(),
            "usage": self.result.usage.to_dict() if self.result else {},
            "timings": getattr(self.result, "timings", {}) if self.result else {},
            "failed_models": self.result.failed_models if self.result else [],
            "error": None,
            "sources": self.sources,
            "tool_usage": self.tool_usage,
            "research_notice": self.research_notice,
            "started_at": self.started_at.isoformat(),
            "can_retry": False,
        }

    # ----------------------------------------------------------------- frames

    def _emit(self, frame: dict[str, Any], *, now: bool = False) -> None:
        frame["run"] = str(self.run_id)
        kind = frame["type"]
        if kind in ("panel.delta", "panel.reasoning.delta", "final.delta"):
            key = (kind, frame.get("slot", -1))
            idx = self._pending_delta.get(key)
            if idx is not None:
                merged = self._pending[idx]
                merged["delta"] += frame["delta"]
                if "blocks" in frame:
                    merged["blocks"].extend(frame["blocks"])
                    merged["consumed"] = frame["consumed"]
            else:
                self._pending_delta[key] = len(self._pending)
                self._pending.append(frame)
        else:
            # Any other event is a barrier: later deltas must not merge into earlier ones.
            self._pending_delta.clear()
            self._pending.append(frame)
        if now:
            self._flush_now.set()

    async def _send(self, frames: list[dict[str, Any]]) -> None:
        if not frames:
            return
        payload = frames[0] if len(frames) == 1 else {"type": "batch", "events": frames}
        await get_channel_layer().group_send(group_name(self.conversation_id), {"type": "run.frame", "frame": payload})

    async def flush(self) -> None:
        frames, self._pending = self._pending, []
        self._pending_delta.clear()
        await self._send(frames)

    async def _flusher(self) -> None:
        interval = settings.FUSION_FRAME_INTERVAL_MS / 1000
        while not self._closing:
            try:
                await asyncio.wait_for(self._flush_now.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._flush_now.clear()
            await self.flush()

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(settings.FUSION_CHECKPOINT_INTERVAL_S)
            try:
                if self._dirty:
                    self._dirty = False
                    await database_sync_to_async(self._checkpoint)()
                else:
                    # A quiet run (a slow analyst, a long first token) is still alive: other
                    # processes mark runs whose heartbeat stopped as interrupted.
                    await database_sync_to_async(self._heartbeat)()
            except Exception:  # a failed checkpoint must not kill the run; the final write retries
                log.exception("checkpoint of run %s failed", self.run_id)

    def _heartbeat(self) -> None:
        Run.objects.filter(pk=self.run_id, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())

    def _checkpoint(self) -> None:
        for m, s in zip(self.members, self.streams):
            MemberResponse.objects.filter(run_id=self.run_id, slot=m["slot"]).update(
                content=s.text, reasoning=s.reasoning, status=m["status"],
                tool_calls=m["tool_calls"], sources=m["sources"], notes=m["notes"],
            )
        Run.objects.filter(pk=self.run_id, status=RunStatus.RUNNING).update(
            answer=self.final.text, heartbeat_at=timezone.now(), analysis=self.analysis, label_map=self.label_map,
            writer_model=self.writer,
        )

    # ----------------------------------------------------------------- driving

    def control(self, action: str, slot: int | None = None) -> bool:
        """Apply a user's control to this run; False when it does not apply now."""
        if action == "stop":
            self.fusion.cancel()
            return True
        if slot is not None and not 0 <= slot < len(self.members):
            return False
        if action == "stop_member" and slot is not None:
            return self.fusion.stop_member(slot)
        if action == "retry_member" and slot is not None:
            return self.fusion.retry_member(slot)
        if action == "fuse_now":
            return self.fusion.fuse_now()
        return False

    async def _control_listener(self) -> None:
        """Controls sent by consumers of other processes (several Daphne workers behind Redis).

        The channel joined the run's control group before ``run.started`` went out (see
        _start_active), so a control sent right after it is not lost.
        """
        layer = get_channel_layer()
        channel = self.control_channel or await join_control_group(self.run_id)
        try:
            while True:
                message = await layer.receive(channel)
                if message.get("type") != "run.control":
                    continue
                action = str(message.get("action"))
                if action == "snapshot":
                    # A socket on another process joined: give it the live state, not the last
                    # checkpoint, so its offsets line up with the frames that follow.
                    reply_to = message.get("reply_to")
                    if isinstance(reply_to, str):
                        frame = {"type": "snapshot", "runs": [self.snapshot()]}
                        await layer.send(reply_to, {"type": "run.frame", "frame": frame})
                    continue
                slot = message.get("slot")
                self.control(action, slot if isinstance(slot, int) else None)
        finally:
            await layer.group_discard(control_group(self.run_id), channel)

    async def drive(self) -> None:
        flusher = asyncio.create_task(self._flusher())
        checkpointer = asyncio.create_task(self._checkpointer())
        listener = asyncio.create_task(self._control_listener())
        try:
            async for event in self.fusion.events():
                await self._render_ahead(event)
                self._apply(event)
        except Exception as exc:  # a bug in the engine: fail the run loudly, keep what we have
            log.exception("run %s crashed", self.run_id)
            self.result = None
            self.status = RunStatus.ERROR.value
            self._error = ("internal", f"The run stopped on an internal error ({type(exc).__name__}).")
        finally:
            checkpointer.cancel()
            listener.cancel()
            await self.client.aclose()
            try:
                await database_sync_to_async(self._finalize)()
            except Exception:
                log.exception("final write of run %s failed", self.run_id)
            self._emit(self._terminal_frame())
            # Never cancel the flusher: cancelled in the middle of a group_send, the frames it
            # had taken would be lost (the last deltas of the fused answer, say). Let it finish.
            self._closing = True
            self._flush_now.set()
            await flusher
            await self.flush()
            self.done.set()

    async def _render_ahead(self, event: PipelineEvent) -> None:
        """Run Markdown rendering in a worker thread, so a long answer never stalls the event loop.

        Only deltas with a newline can finish a block (a Markdown call); other deltas are just
        appended to the tail, inline. Whole answers are rendered into the cache _apply reads.
        """
        if isinstance(event, (PanelDelta, FinalDelta)):
            stream = self.final if isinstance(event, FinalDelta) else self.streams[event.slot]
            if "\n" in event.delta:
                self._ahead = await asyncio.to_thread(stream.renderer.feed, event.delta)
        elif isinstance(event, PanelCompleted) and event.content:
            await asyncio.to_thread(_render_whole, event.content)
        elif isinstance(event, PanelFailed) and (event.partial_content or self.streams[event.slot].text):
            await asyncio.to_thread(_render_whole, event.partial_content or self.streams[event.slot].text)
        elif isinstance(event, RunCompleted) and event.answer:
            await asyncio.to_thread(_render_whole, event.answer)

    def _priced_usage(self, record: Any) -> dict[str, Any]:
        """A call's usage for its card, with what the provider did not report estimated (chat.spend)."""
        if self.price_lookup is None:
            return record.usage.to_dict()
        try:
            return spend.call_usage(record.to_dict(), lookup=self.price_lookup)
        except Exception:  # the card can do without a price; the final write prices again
            log.warning("could not price a call of run %s", self.run_id, exc_info=True)
            return record.usage.to_dict()

    def _take_ahead(self) -> RenderUpdate | None:
        update, self._ahead = self._ahead, None
        return update

    def _apply(self, event: PipelineEvent) -> None:
        self._dirty = True
        if isinstance(event, PanelAdded):
            m, s = self.members[event.slot], self.streams[event.slot]
            attempt = getattr(event, "attempt", 1)
            if attempt > 1:
                s.reset()
                m.update(error=None, metrics=_metrics(None, None, None), tool_calls=[], sources=[], notes=[])
            m.update(status=MemberStatus.WAITING.value, attempt=attempt)
            self._emit({"type": "panel.added", "slot": event.slot, "model": event.model, "attempt": attempt}, now=True)
        elif isinstance(event, PanelDelta):
            m, s = self.members[event.slot], self.streams[event.slot]
            m["status"] = MemberStatus.STREAMING.value
            frame = {"type": "panel.delta", "slot": event.slot, **s.feed(event.delta, self._take_ahead())}
            first = not s.first_sent
            s.first_sent = True
            self._emit(frame, now=first)
        elif isinstance(event, PanelReasoningDelta):
            s = self.streams[event.slot]
            offset = len(s.reasoning)
            s.reasoning += event.delta
            if self.members[event.slot]["status"] == MemberStatus.WAITING.value:
                self.members[event.slot]["status"] = "thinking"
            self._emit({"type": "panel.reasoning.delta", "slot": event.slot, "offset": offset, "delta": event.delta})
        elif isinstance(event, PanelCompleted):
            m, s = self.members[event.slot], self.streams[event.slot]
            s.text = event.content
            s.html = _render_whole(event.content)
            metrics = self.reused.get(event.slot) or _metrics(
                event.record.ttft_ms, event.record.duration_ms, self._priced_usage(event.record)
            )
            m.update(status=MemberStatus.COMPLETE.value, metrics=metrics, sources=list(event.sources))
            self._emit({"type": "panel.completed", "slot": event.slot, "model": event.model, "html": s.html, "metrics": metrics,
                        "sources": m["sources"]})
        elif isinstance(event, PanelFailed):
            m, s = self.members[event.slot], self.streams[event.slot]
            status = MemberStatus.STOPPED.value if event.error.kind == "cancelled" else MemberStatus.FAILED.value
            s.text = event.partial_content or s.text
            s.html = _render_whole(s.text) if s.text else ""  # rendered ahead, off the loop
            metrics = _metrics(event.record.ttft_ms, event.record.duration_ms, self._priced_usage(event.record))
            error = {"kind": event.error.kind, "message": event.error.message}
            m.update(status=status, error=error, metrics=metrics, sources=list(event.sources) or m["sources"])
            for call in m["tool_calls"]:  # a call cut short by the stop
                if call.get("status") == "running":
                    call.update(status="failed", ok=False, summary="stopped")
            self._emit(
                {"type": "panel.failed", "slot": event.slot, "model": event.model, "status": status, "error": error,
                 "metrics": metrics, "html": s.html, "sources": m["sources"]},
                now=True,
            )
        elif isinstance(event, PanelToolStarted):
            m = self.members[event.slot]
            call = {"id": event.call_id, "name": event.name, "arguments": event.arguments, "status": "running",
                    "ok": None, "summary": "", "sources": []}
            m["tool_calls"].append(call)
            m["status"] = "searching"
            self._emit({"type": "panel.tool.started", "slot": event.slot, "model": event.model, "call_id": event.call_id,
                        "name": event.name, "arguments": event.arguments}, now=True)
        elif isinstance(event, PanelToolFinished):
            m, s = self.members[event.slot], self.streams[event.slot]
            call = next((c for c in reversed(m["tool_calls"]) if c["id"] == event.call_id), None)
            if call is None:
                call = {"id": event.call_id, "name": event.name, "arguments": {}}
                m["tool_calls"].append(call)
            call.update(status="done" if event.ok else "failed", ok=event.ok, summary=event.summary,
                        sources=list(event.sources))
            _merge_sources(m["sources"], event.sources)
            if m["status"] == "searching" and not any(c.get("status") == "running" for c in m["tool_calls"]):
                m["status"] = MemberStatus.STREAMING.value if s.text else MemberStatus.WAITING.value
            self._emit({"type": "panel.tool.finished", "slot": event.slot, "model": event.model, "call_id": event.call_id,
                        "name": event.name, "ok": event.ok, "summary": event.summary, "sources": list(event.sources),
                        "status": m["status"]}, now=True)
        elif isinstance(event, PanelNote):
            m = self.members[event.slot]
            if event.message not in m["notes"]:
                m["notes"].append(event.message)
            self._emit({"type": "panel.note", "slot": event.slot, "model": event.model, "message": event.message}, now=True)
        elif isinstance(event, AnalysisStarted):
            self.phase, self.analyst = "analysis", event.analyst_model
            self._emit({"type": "analysis.in_progress", "analyst_model": event.analyst_model}, now=True)
        elif isinstance(event, AnalysisCompleted):
            self.analysis, self.label_map = event.analysis, event.label_map
            self.analyst = event.analyst_model
            self.analysis_calls = [r.to_dict() for r in event.records]
            self._emit(
                {"type": "analysis.completed", "analysis": event.analysis, "label_map": event.label_map,
                 "analyst_model": event.analyst_model, "models": {k: i for i, k in enumerate(self.keys)}},
                now=True,
            )
        elif isinstance(event, AnalysisDegraded):
            self.analysis, self.analysis_error = None, event.reason
            self.analysis_calls = [r.to_dict() for r in event.records]
            self._emit({"type": "analysis.degraded", "reason": event.reason}, now=True)
        elif isinstance(event, FinalStarted):
            self.phase, self.writer = "final", event.writer_model
            self.final.reset()  # a fallback writer starts the answer over
            self._emit({"type": "final.started", "writer_model": event.writer_model}, now=True)
        elif isinstance(event, FinalDelta):
            frame = {"type": "final.delta", **self.final.feed(event.delta, self._take_ahead())}
            first = not self.final.first_sent
            self.final.first_sent = True
            self._emit(frame, now=first)
        elif isinstance(event, RunCompleted):
            self.result, self.phase, self.status = event, "done", RunStatus.COMPLETE.value
            self.sources = list(event.sources)
            self.tool_usage = _tool_usage(event.tool_usage, self.research_notice)
            self.final.text = event.answer
            self.final.html = _render_whole(event.answer)
        elif isinstance(event, RunFailed):
            self.result, self.phase = event, "done"
            self.status = RunStatus.CANCELLED.value if event.kind == "cancelled" else RunStatus.ERROR.value
            self.sources = _run_sources(self.members)
            self.tool_usage = _tool_usage(
                {"searches": sum(1 for m in self.members for c in m["tool_calls"] if c.get("name") == "web_search"),
                 "fetches": sum(1 for m in self.members for c in m["tool_calls"] if c.get("name") == "web_fetch")},
                self.research_notice,
            )
            if self.final.text:
                self.final.html = render_markdown(self.final.text)

    def _terminal_frame(self) -> dict[str, Any]:
        r = self.result
        if isinstance(r, RunCompleted):
            return {"type": "completed", "status": "complete", "html": self.final.html or "", "usage": r.usage.to_dict(),
                    "timings": r.timings, "failed_models": r.failed_models, "sources": self.sources,
                    "tool_usage": self.tool_usage}
        if isinstance(r, RunFailed):
            return {"type": "failed", "status": self.status, "kind": r.kind, "message": r.message,
                    "usage": r.usage.to_dict(), "failed_models": r.failed_models, "html": self.final.html or "",
                    "sources": self.sources, "tool_usage": self.tool_usage}
        kind, message = getattr(self, "_error", ("internal", "The run stopped unexpectedly."))
        return {"type": "failed", "status": RunStatus.ERROR.value, "kind": kind, "message": message, "usage": {},
                "failed_models": [], "html": ""}

    def _finalize(self) -> None:
        """Write the final state in one transaction; clients hear of it only afterwards."""
        r = self.result
        wall_ms = int((time.monotonic() - self.t0) * 1000)
        # Every call counts, however it ended; what a provider did not report is estimated.
        calls = spend.priced_calls(rec.to_dict() for rec in r.records) if r is not None else []
        for m in self.members:
            attempts = [c for c in calls if c["role"] == "panel" and c.get("slot") == m["slot"]]
            if attempts:  # the card shows its latest attempt; the run's cost counts them all
                m["metrics"] = {**m["metrics"], "usage": attempts[-1]["usage"]}
        if r is not None:
            r.usage = spend.usage_total(c["usage"] for c in calls)  # the terminal frame's totals too
        with transaction.atomic():
            for m, s in zip(self.members, self.streams):
                status = m["status"]
                if status in _LIVE_STATUSES:
                    status = MemberStatus.STOPPED.value
                    m["status"] = status
                metrics = m["metrics"]
                err = m["error"] or {}
                MemberResponse.objects.filter(run_id=self.run_id, slot=m["slot"]).update(
                    content=s.text, reasoning=s.reasoning, status=status, attempt=m["attempt"],
                    error_kind=err.get("kind", ""), error_message=err.get("message", ""),
                    ttft_ms=metrics["ttft_ms"], duration_ms=metrics["duration_ms"], usage=metrics["usage"],
                    tool_calls=m["tool_calls"], sources=m["sources"], notes=m["notes"],
                )
            fields: dict[str, Any] = {
                "status": self.status,
                "answer": self.final.text,
                "analysis": self.analysis,
                "label_map": self.label_map,
                "analysis_error": self.analysis_error,
                "analyst_model": self.analyst or "",
                "writer_model": self.writer or "",
                "finished_at": timezone.now(),
                "heartbeat_at": timezone.now(),
                # The reservation ends with the run; what counts from now on is what its calls cost.
                "reserved_usd": 0,
                "cost_usd": spend.cost_of(r.usage if r is not None else None),
            }
            if isinstance(r, (RunCompleted, RunFailed)):
                fields["usage"] = r.usage.to_dict()
                fields["failed_models"] = r.failed_models
                fields["calls"] = [c for c in calls if c["role"] != "panel"] or self.analysis_calls
            if isinstance(r, RunCompleted):
                fields["timings"] = {**r.timings, "total": r.timings.get("total", wall_ms)}
            else:
                fields["timings"] = {"total": wall_ms}
            if isinstance(r, RunFailed):
                fields["error_kind"], fields["error_message"] = r.kind, r.message
            elif r is None:
                fields["error_kind"], fields["error_message"] = getattr(self, "_error", ("internal", "Stopped unexpectedly."))
            fields["sources"] = self.sources
            fields["tool_usage"] = self.tool_usage or _tool_usage({}, self.research_notice)
            if self.tool_usage.get("search_cost_usd"):  # paid searches count toward the spend limit
                fields["cost_usd"] = (fields.get("cost_usd") or 0) + spend.to_decimal(self.tool_usage["search_cost_usd"])
            Run.objects.filter(pk=self.run_id).update(**fields)
            Conversation.objects.filter(pk=self.conversation_id).update(updated_at=timezone.now())


class RunManager:
    """Owns this process's running pipelines, keyed by run id."""

    def __init__(self) -> None:
        self.active: dict[uuid.UUID, ActiveRun] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def get(self, run_id: uuid.UUID) -> ActiveRun | None:
        return self.active.get(run_id)

    def launch(self, active: ActiveRun) -> None:
        self.active[active.run_id] = active

        async def _run() -> None:
            try:
                await active.drive()
            finally:
                self.active.pop(active.run_id, None)

        active.task = asyncio.get_running_loop().create_task(_run(), name=f"run-{active.run_id}")

    def cancel_conversation(self, conversation_id: int) -> None:
        """Stop the runs of a conversation from any thread (a sync view deleting it)."""
        for active in list(self.active.values()):
            if active.conversation_id == conversation_id:
                active.loop.call_soon_threadsafe(active.fusion.cancel)

    def cancel_users(self, user_ids: set[int]) -> int:
        """Stop this process's runs of these (deactivated) users, from any thread."""
        stopped = 0
        for active in list(self.active.values()):
            if active.user_id in user_ids:
                active.loop.call_soon_threadsafe(active.fusion.cancel)
                stopped += 1
        if stopped:
            log.info("stopped %d run(s) of deactivated user(s) %s", stopped, sorted(user_ids))
        return stopped

    def ensure_sweeper(self) -> None:
        """Start this process's run sweep in the running loop, once (fusionsite.asgi calls it)."""
        if settings.FUSION_RUN_SWEEP_INTERVAL_S <= 0:
            return
        loop = asyncio.get_running_loop()
        task = self._sweeper
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._sweeper = loop.create_task(self._sweep_forever(), name="run-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await database_sync_to_async(self.sweep)()
            except Exception:
                log.exception("run sweep failed")
            await asyncio.sleep(settings.FUSION_RUN_SWEEP_INTERVAL_S)

    def sweep(self) -> tuple[int, int]:
        """One pass: runs whose process died become interrupted; deactivated users' runs stop.

        Returns (interrupted, stopped). Runs this process owns are never marked: they are alive.
        """
        stale = Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=timezone.now() - stale_after())
        interrupted = mark_interrupted(stale.exclude(pk__in=list(self.active)))
        owners = {a.user_id for a in self.active.values()}
        stopped = self.cancel_users(inactive_users(owners)) if owners else 0
        if interrupted:
            log.info("marked %d run(s) of a dead process as interrupted", interrupted)
        return interrupted, stopped

    async def shutdown(self) -> None:
        """Cancel every run (tests, and a process that is going away)."""
        runs = list(self.active.values())
        for a in runs:
            a.fusion.cancel()
        for a in runs:
            try:
                await asyncio.wait_for(a.done.wait(), timeout=10)
            except TimeoutError:
                if a.task:
                    a.task.cancel()


manager = RunManager()


# --------------------------------------------------------------------------- services


def _history(conversation: Conversation, before_index: int, *, panel_size: int) -> tuple[list[Message], dict[int, list[Message]]]:
    """The conversation so far: fused history for everyone, and each member's own thread."""
    fused: list[Message] = []
    threads: dict[int, list[Message]] = {i: [] for i in range(panel_size)}
    turns = conversation.turns.filter(index__lt=before_index).order_by("index").prefetch_related("runs__members")
    for turn in turns:
        runs = sorted(turn.runs.all(), key=lambda r: (r.created_at, str(r.pk)))
        done = [r for r in runs if r.status == RunStatus.COMPLETE and r.answer] or runs
        run = done[-1] if done else None
        fused.append({"role": "user", "content": turn.prompt})
        if run and run.answer:
            fused.append({"role": "assistant", "content": run.answer})
        answers = {m.slot: m.content for m in run.members.all() if m.status == MemberStatus.COMPLETE} if run else {}
        for slot in threads:
            threads[slot].append({"role": "user", "content": turn.prompt})
            own = answers.get(slot) or (run.answer if run else "")
            if own:
                threads[slot].append({"role": "assistant", "content": own})
    return fused, threads


def _build_request(conversation: Conversation, turn: Turn, panel: dict[str, Any]) -> FusionRequest:
    members = [panels.spec_from_dict(m) for m in panel["members"]]
    fused, threads = _history(conversation, turn.index, panel_size=len(members))
    question = {"role": "user", "content": turn.prompt}
    member_messages = None
    if conversation.follow_up_mode == FollowUpMode.PER_MEMBER:
        member_messages = {slot: thread + [question] for slot, thread in threads.items()}
    return FusionRequest(
        messages=fused + [question],
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
        model for model, info in found.items()
        if info is not None and getattr(info, "supported_parameters", None) and not getattr(info, "supports_tools", True)
    }


def _search_reserve_usd(request: FusionRequest) -> float:
    """The most a run's paid searches can cost: every member spending its whole budget on them."""
    price = float(settings.FUSION_SEARCH_PRICE_USD or 0)
    research = request.research
    if price <= 0 or research is None or not research.web_tools or not settings.FUSION_SEARCH_BACKEND:
        return 0.0
    return price * research.budget * len(request.panel)


def _check_limits(*, user: Any, conversation: Conversation) -> None:
    if Run.objects.filter(conversation=conversation, status=RunStatus.RUNNING).exists():
        raise RunError("busy", "A run is already going in this conversation. Stop it or wait for it to finish.")
    limit = settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER
    if Run.objects.filter(user=user, status=RunStatus.RUNNING).count() >= limit:
        raise RunError("limit", f"You already have {limit} runs going. Wait for one to finish or stop one.")


def _check_models_and_keys(*, user: Any, panel: dict[str, Any]) -> None:
    """Before any paid call: every model is in its provider's catalogue, every provider has a key."""
    models = [s["model"] for s in (*panel["members"], panel["analyst"], panel["writer"],
                                   panel.get("fallback_analyst"), panel.get("fallback_writer")) if s]
    errors = model_catalogue.validate_models(models)
    if errors:
        raise RunError("invalid", " ".join(errors))
    registry = build_registry()
    problems = keys.key_problems(user=user, providers=[registry.resolve(m)[0].name for m in models])
    if problems:
        raise RunError("no_key", " ".join(problems))


def _reserve_spend(*, user: Any, run: Run, request: FusionRequest, reused_slots: Any = (),
                   reuse_analysis: bool = False) -> None:
    """Hold the run's high cost estimate against today's limit (inside the run's transaction)."""
    threads = [request.messages, *(request.member_messages or {}).values()]
    chars = max(sum(len(str(m.get("content") or "")) for m in thread) for thread in threads)
    _, high = model_catalogue.estimate_panel_cost(
        run.config, prompt_tokens=model_catalogue.tokens_of_chars(chars), reused_slots=reused_slots,
        reuse_analysis=reuse_analysis,
    )
    high += _search_reserve_usd(request)
    registry = build_registry()
    specs = [run.config.get(k) for k in ("analyst", "writer", "fallback_analyst", "fallback_writer")]
    providers = [registry.resolve(s["model"])[0].name for s in (*run.config["members"], *specs) if s]
    run.uses_server_key = keys.uses_server_key(user=user, providers=providers)
    try:
        run.reserved_usd = spend.spend_reserve(user=user, high_usd=high, server_key=run.uses_server_key)
    except spend.SpendLimitExceeded as exc:
        raise RunError("spend_limit", str(exc)) from None
    Run.objects.filter(pk=run.pk).update(reserved_usd=run.reserved_usd, uses_server_key=run.uses_server_key)


def _create_run(*, user: Any, conversation: Conversation, turn: Turn, client_run_id: str, panel: dict[str, Any],
                writer: str | None = None, reuse: dict[int, MemberResponse] | None = None) -> Run:
    run = Run.objects.create(
        user=user, conversation=conversation, turn=turn, client_run_id=client_run_id, config=panel,
        analyst_model=panel["analyst"]["model"], writer_model=writer or panel["writer"]["model"],
        process_id=PROCESS_ID,
    )
    reuse = reuse or {}
    MemberResponse.objects.bulk_create(
        [
            MemberResponse(
                run=run, slot=i, model=m["model"], label=m.get("label", ""),
                **(
                    {"status": MemberStatus.COMPLETE, "content": reuse[i].content, "reasoning": reuse[i].reasoning,
                     "ttft_ms": reuse[i].ttft_ms, "duration_ms": reuse[i].duration_ms, "usage": reuse[i].usage,
                     "tool_calls": reuse[i].tool_calls, "sources": reuse[i].sources, "notes": reuse[i].notes}
                    if i in reuse else {}
                ),
            )
            for i, m in enumerate(panel["members"])
        ]
    )
    return run


def _start_sync(*, user: Any, conversation_id: int, client_run_id: str, prompt: str, panel_data: Any,
                follow_up_mode: str | None, preset_ref: Any = None) -> tuple[Run, FusionRequest | None]:
    """Validate and write the turn and the run; return (run, request) or (existing run, None).

    A ``panel`` or ``preset`` sent with start is for this turn only; the conversation keeps its
    own panel, except that a conversation without one yet adopts it.
    """
    existing = Run.objects.filter(user=user, client_run_id=client_run_id).select_related("turn").first()
    if existing is not None:
        if existing.conversation_id != conversation_id:
            raise RunError("not_found", "No such run.")
        return existing, None
    conversation = Conversation.objects.filter(user=user, pk=conversation_id).first()
    if conversation is None:
        raise RunError("not_found", "No such conversation.")
    prompt = prompt.strip()
    if not prompt:
        raise RunError("invalid", "Write a prompt first.")
    if len(prompt) > settings.FUSION_MAX_PROMPT_CHARS:
        raise RunError(
            "invalid", f"The prompt is {len(prompt)} characters; the limit is {settings.FUSION_MAX_PROMPT_CHARS}."
        )
    resolved = None
    if preset_ref is not None:
        try:
            resolved = presets.preset_resolve(user=user, ref=preset_ref)
        except Http404:
            raise RunError("not_found", "No such preset.") from None
        except presets.PresetError as exc:
            raise RunError("invalid", str(exc)) from None
        panel_data = resolved.panel
    try:
        panel = panels.parse_panel(panel_data if panel_data is not None else (conversation.panel or panels.default_panel()))
    except panels.PanelError as exc:
        raise RunError("invalid", str(exc)) from None
    _check_limits(user=user, conversation=conversation)
    _check_models_and_keys(user=user, panel=panel)
    try:
        with transaction.atomic():
            index = conversation.turns.count()
            turn = Turn.objects.create(conversation=conversation, index=index, prompt=prompt)
            run = _create_run(user=user, conversation=conversation, turn=turn, client_run_id=client_run_id, panel=panel)
            if not conversation.panel:
                conversation.panel = panel
                if resolved is not None:
                    conversation.preset, conversation.builtin_preset = resolved.preset, resolved.builtin_key
                    if follow_up_mode is None:
                        conversation.follow_up_mode = resolved.follow_up_mode
            if follow_up_mode in (FollowUpMode.FUSED, FollowUpMode.PER_MEMBER):
                conversation.follow_up_mode = follow_up_mode
            if index == 0 and conversation.title in ("", "New conversation"):
                conversation.title = title_from_prompt(prompt)
            conversation.updated_at = timezone.now()
            conversation.save()
            request = _build_request(conversation, turn, panel)
            _reserve_spend(user=user, run=run, request=request)
    except IntegrityError:
        # Another tab started a run here a moment ago, or the same client run id raced in.
        existing = Run.objects.filter(user=user, client_run_id=client_run_id).first()
        if existing is not None and existing.conversation_id == conversation_id:
            return existing, None
        raise RunError("busy", "A run is already going in this conversation. Stop it or wait for it to finish.") from None
    return run, request


def title_from_prompt(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


async def join_control_group(run_id: uuid.UUID) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(control_group(run_id), channel)
    return channel


async def _start_active(run: Run, request: FusionRequest, frame: dict[str, Any], **launch_kw: Any) -> ActiveRun:
    """Listen for controls, tell the conversation the run started, then run it — in that order."""
    channel = await join_control_group(run.pk)
    await get_channel_layer().group_send(group_name(run.conversation_id), {"type": "run.frame", "frame": frame})
    return _launch(run, request, control_channel=channel, **launch_kw)


def _launch(run: Run, request: FusionRequest, *, registry: ProviderRegistry, control_channel: str | None = None,
            price_lookup: Any = None,
            reused: dict[int, dict[str, Any]] | None = None,
            reused_research: dict[int, dict[str, Any]] | None = None, **fusion_kw: Any) -> ActiveRun:
    """Run the pipeline with *registry*: the run's user's own keys (chat.engine.build_registry).

    Web tools are built here from the request's research settings (chat.engine.build_web_tools).
    """
    # Error text is scrubbed of every key the process knows, not only the ones this run uses.
    client = ChatClient(registry, limits=build_limits(), extra_secrets=known_secrets())
    fusion = FusionRun(request, client, tools=build_web_tools(request.research), **fusion_kw)
    active = ActiveRun(run=run, request=request, client=client, fusion=fusion, reused=reused)
    active.research_notice = _research_notice(request)
    active.control_channel = control_channel
    active.price_lookup = price_lookup
    for slot, research in (reused_research or {}).items():  # answers carried over keep their research
        active.members[slot].update({k: list(v or []) for k, v in research.items()})
    manager.launch(active)
    return active


def _research_notice(request: FusionRequest) -> str | None:
    """Why web search is not offered although the panel asked for web tools, else None."""
    if request.research is None or not request.research.web_tools:
        return None
    return search_unavailable_reason()


def _run_started_frame(run: Run, request: FusionRequest, replaces: str | None = None) -> dict[str, Any]:
    return {
        "type": "run.started",
        "run": str(run.pk),
        "client_run_id": run.client_run_id,
        "turn": {"id": run.turn_id, "index": run.turn.index, "prompt": run.turn.prompt},
        "members": [{"slot": i, "model": s.model, "label": s.label or ""} for i, s in enumerate(request.panel)],
        "analyst": request.analyst.model,
        "writer": run.writer_model,
        "replaces": replaces,
        "research_notice": _research_notice(request),
        "started_at": run.created_at.isoformat(),
    }


async def run_start(*, user: Any, conversation_id: int, client_run_id: str, prompt: str, panel: Any = None,
                    follow_up_mode: str | None = None, preset: Any = None) -> tuple[dict[str, Any], bool]:
    """Start a run, or attach to the one this client run id already started.

    Returns (state or run.started frame, created).
    """
    run, request = await database_sync_to_async(_start_sync)(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id, prompt=prompt,
        panel_data=panel, follow_up_mode=follow_up_mode, preset_ref=preset,
    )
    if request is None:
        return await run_snapshot(run_id=run.pk), False
    registry = await database_sync_to_async(build_registry)(user=user)
    prices = await database_sync_to_async(model_catalogue.model_resolver)()
    no_tools = await database_sync_to_async(_no_tool_models)(request)
    frame = _run_started_frame(run, request)
    await _start_active(run, request, frame, registry=registry, no_tool_models=no_tools, price_lookup=prices)
    return frame, True


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


def _owned_run(*, user: Any, conversation_id: int, client_run_id: str) -> Run:
    run = (
        Run.objects.filter(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
        .select_related("turn", "conversation")
        .first()
    )
    if run is None:
        raise RunError("not_found", "No such run.")
    return run


async def _active_for(*, user: Any, conversation_id: int, client_run_id: str) -> tuple[Run, ActiveRun | None]:
    run = await database_sync_to_async(_owned_run)(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    return run, manager.get(run.pk)


async def _control(*, user: Any, conversation_id: int, client_run_id: str, action: str,
                   slot: int | None = None) -> tuple[Run, bool | None]:
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


async def run_stop(*, user: Any, conversation_id: int, client_run_id: str) -> None:
    _, applied = await _control(user=user, conversation_id=conversation_id, client_run_id=client_run_id, action="stop")
    if applied is False:
        raise RunError("invalid", "This run is not running.")


async def run_stop_member(*, user: Any, conversation_id: int, client_run_id: str, slot: int) -> None:
    _, applied = await _control(user=user, conversation_id=conversation_id, client_run_id=client_run_id,
                                action="stop_member", slot=slot)
    if applied is False:
        raise RunError("invalid", "That member is not running.")


async def run_fuse_now(*, user: Any, conversation_id: int, client_run_id: str) -> None:
    _, applied = await _control(user=user, conversation_id=conversation_id, client_run_id=client_run_id,
                                action="fuse_now")
    if applied is False:
        raise RunError("invalid", "Fuse now works only while panel members are still answering.")


def _rerun_sync(*, user: Any, conversation_id: int, client_run_id: str, slot: int | None, writer: str | None
                ) -> tuple[Run, FusionRequest, dict[int, MemberResponse], AnalysisCompleted | None, str]:
    """A new run for the same turn that reuses the old run's answers (and analysis, for regenerate)."""
    old = _owned_run(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    if old.status == RunStatus.RUNNING:
        raise RunError("busy", "Wait for the run to finish first.")
    panel = dict(old.config)
    members = {m.slot: m for m in old.members.all()}
    if slot is not None and slot not in members:
        raise RunError("invalid", "No such member.")
    if writer is not None:
        try:
            panel["writer"] = panels.parse_panel({**panel, "writer": {"model": writer}})["writer"]
        except panels.PanelError as exc:
            raise RunError("invalid", str(exc)) from None
    reuse = {s: m for s, m in members.items() if m.status == MemberStatus.COMPLETE and s != slot}
    if writer is not None and not reuse:
        raise RunError("invalid", "No member answered in this run, so there is nothing to fuse again.")
    _check_limits(user=user, conversation=old.conversation)
    _check_models_and_keys(user=user, panel=panel)
    new_client_id = f"{old.client_run_id[:40]}-{uuid.uuid4().hex[:12]}"
    request = _build_request(old.conversation, old.turn, panel)
    try:
        with transaction.atomic():
            run = _create_run(user=user, conversation=old.conversation, turn=old.turn, client_run_id=new_client_id,
                              panel=panel, writer=panel["writer"]["model"], reuse=reuse)
            _reserve_spend(user=user, run=run, request=request, reused_slots=reuse,
                           reuse_analysis=writer is not None and old.analysis is not None and slot is None)
    except IntegrityError:
        raise RunError("busy", "A run is already going in this conversation.") from None
    reuse_analysis = None
    if writer is not None and old.analysis is not None and slot is None:
        reuse_analysis = AnalysisCompleted(
            analyst_model=old.analyst_model, analysis=old.analysis, label_map=old.label_map, records=[]
        )
        Run.objects.filter(pk=run.pk).update(analysis=old.analysis, label_map=old.label_map, analyst_model=old.analyst_model)
        run.analysis, run.label_map = old.analysis, old.label_map
    return run, request, reuse, reuse_analysis, str(old.pk)


async def _rerun(*, user: Any, conversation_id: int, client_run_id: str, slot: int | None, writer: str | None) -> dict[str, Any]:
    run, request, reuse, analysis, old_id = await database_sync_to_async(_rerun_sync)(
        user=user, conversation_id=conversation_id, client_run_id=client_run_id, slot=slot, writer=writer
    )
    registry = await database_sync_to_async(build_registry)(user=user)
    prices = await database_sync_to_async(model_catalogue.model_resolver)()
    no_tools = await database_sync_to_async(_no_tool_models)(request)
    frame = _run_started_frame(run, request, replaces=old_id)
    await _start_active(
        run, request, frame, registry=registry, price_lookup=prices, reuse_answers={s: m.content for s, m in reuse.items()}, reuse_analysis=analysis,
        reused={s: _metrics(m.ttft_ms, m.duration_ms, m.usage) for s, m in reuse.items()},
        reuse_sources={s: m.sources or [] for s, m in reuse.items()},
        reused_research={s: {"tool_calls": m.tool_calls, "sources": m.sources, "notes": m.notes} for s, m in reuse.items()},
        no_tool_models=no_tools,
    )
    return frame


async def run_retry_member(*, user: Any, conversation_id: int, client_run_id: str, slot: int) -> None:
    run, active = await _active_for(user=user, conversation_id=conversation_id, client_run_id=client_run_id)
    if active is not None or run.status == RunStatus.RUNNING:  # still running: restart in place
        _, applied = await _control(user=user, conversation_id=conversation_id, client_run_id=client_run_id,
                                    action="retry_member", slot=slot)
        if applied is False:
            raise RunError("invalid", "Only a failed or stopped member can be retried, while the panel is answering.")
        return
    await _rerun(user=user, conversation_id=conversation_id, client_run_id=client_run_id, slot=slot, writer=None)


async def run_regenerate(*, user: Any, conversation_id: int, client_run_id: str, writer: str) -> None:
    await _rerun(user=user, conversation_id=conversation_id, client_run_id=client_run_id, slot=None, writer=writer)


def stale_after() -> timedelta:
    """How long a running run's heartbeat may be silent before its process counts as dead."""
    return timedelta(seconds=max(30, 10 * settings.FUSION_CHECKPOINT_INTERVAL_S))


def running_runs_for_conversation(*, user: Any, conversation_id: int) -> list[uuid.UUID]:
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


def mark_interrupted(queryset: Any) -> int:
    """Runs whose process died: keep their partial text, mark them ``interrupted``.

    Their calls reached providers, who bill them: what they cost is estimated from the last
    checkpoint (chat.spend.interrupted_calls) and counts instead of the reservation.
    """
    count = 0
    for run in queryset.filter(status=RunStatus.RUNNING).select_related("conversation", "turn"):
        try:
            calls = spend.priced_calls(spend.interrupted_calls(run=run, request=_build_request(run.conversation, run.turn, run.config)))
        except Exception:  # a bug; the run must still stop counting as running
            log.exception("could not estimate the cost of interrupted run %s", run.pk)
            calls = []
        usage = spend.usage_total(c["usage"] for c in calls)
        with transaction.atomic():
            updated = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                status=RunStatus.INTERRUPTED, finished_at=timezone.now(), error_kind="interrupted", reserved_usd=0,
                error_message="The server restarted during this run. Retry a member or send the prompt again.",
                cost_usd=spend.cost_of(usage), usage=usage.to_dict(), calls=[c for c in calls if c["role"] != "panel"],
            )
            if not updated:  # its process finished it after all
                continue
            count += updated
            run.members.filter(status__in=[MemberStatus.WAITING, MemberStatus.STREAMING]).update(
                status=MemberStatus.STOPPED, error_kind="interrupted",
                error_message="The server restarted while this member was answering.",
            )
            for call in calls:
                if call["role"] == "panel":
                    run.members.filter(slot=call["slot"]).update(usage=call["usage"])
    return count


def recover_interrupted_runs(*, all_processes: bool = False) -> int:
    """At start-up: runs left running by a process that died become ``interrupted``."""
    qs = Run.objects.filter(status=RunStatus.RUNNING).exclude(process_id=PROCESS_ID)
    if not all_processes:
        qs = qs.filter(heartbeat_at__lt=timezone.now() - timedelta(seconds=30))
    return mark_interrupted(qs)
