"""``RunState``: what one run is, and the one place a run is serialised.

A live run builds it from the engine's events (``RunState.start`` then ``apply``); a run that no
process of ours owns (history, a run of another worker) builds it from its rows
(``RunState.from_rows``). Either way ``snapshot``, ``terminal_frame`` and ``export`` give the
shapes of docs/protocol.md and of the conversation export.

Pure: no database query and no channel layer (rows may be model instances or plain objects).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chat import spend
from chat.fusion.analysis import distinct_model_ids
from chat.fusion.pipeline import SKIPPED_MESSAGE
from chat.fusion.sources import merge_sources, run_sources
from chat.fusion.types import (
    LIVE_STATUSES,
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    CallRecord,
    FinalDelta,
    FinalStarted,
    MemberStatus,
    ModelSpec,
    OuterToolCalls,
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
    RunPhase,
)
from chat.models import RunStatus
from chat.render import RenderUpdate
from chat.runs.frames import Frame, RenderJob, Stream

log = logging.getLogger(__name__)


# A frame for the conversation's group, and whether it goes out at once (else it is coalesced).
Emit = tuple[Frame, bool]

ENDED = (MemberStatus.COMPLETE, MemberStatus.FAILED, MemberStatus.STOPPED)
RETRYABLE_RUN = (RunStatus.INTERRUPTED, RunStatus.ERROR, RunStatus.CANCELLED, RunStatus.TIMEOUT)
UNEXPECTED_END = {"kind": "internal", "message": "The run stopped unexpectedly."}


def vocabulary() -> dict[str, Any]:
    """The status and phase names, for the page's scripts (the conversation page's json_script)."""
    return {
        "member_status": {s.name: s.value for s in MemberStatus},
        "live_statuses": sorted(s.value for s in LIVE_STATUSES),
        "ended_statuses": [s.value for s in ENDED],
        "phase": {p.name: p.value for p in RunPhase},
        "run_status": {s.name: s.value for s in RunStatus},
    }


def call_metrics(ttft_ms: int | None, duration_ms: int | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"ttft_ms": ttft_ms, "duration_ms": duration_ms, "usage": usage or {}}


def priced_tool_usage(usage: dict[str, Any] | None, *, notice: str | None, search_price_usd: float) -> dict[str, Any]:
    """The engine's tool counts, with the configured price of searches and the research notice."""
    usage = dict(usage or {})
    if search_price_usd > 0 and usage.get("searches"):
        usage["search_cost_usd"] = round(search_price_usd * int(usage["searches"]), 6)
    if notice:
        usage["notice"] = notice
    return usage


def _error(kind: str, message: str) -> dict[str, str] | None:
    return {"kind": kind, "message": message} if kind or message else None


def _stored_stream(content: str, reasoning: str, *, finished: bool) -> Stream:
    """A stream rebuilt from a checkpoint: whole HTML when finished (rendered when asked), else
    finished blocks + tail."""
    stream = Stream(reasoning=reasoning, finished=finished)
    if finished:
        stream.text = content
    else:
        stream.feed(content)
    return stream


@dataclass
class MemberState:
    """One panel member: its status, research, metrics and streamed text."""

    slot: int
    model: str
    key: str  # the model id made unique within the panel (``model#2``), as the analysis names it
    label: str = ""
    status: MemberStatus = MemberStatus.WAITING
    error: dict[str, str] | None = None
    metrics: dict[str, Any] = field(default_factory=lambda: call_metrics(None, None, None))
    attempt: int = 1
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stream: Stream = field(default_factory=Stream)

    def restart(self) -> None:
        """A retried member streams from scratch."""
        self.stream.reset()
        self.error, self.metrics = None, call_metrics(None, None, None)
        self.tool_calls, self.sources, self.notes = [], [], []

    def tools_running(self) -> bool:
        return any(c.get("status") == "running" for c in self.tool_calls)

    def state(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "model": self.model,
            "key": self.key,
            "label": self.label,
            "status": self.status.value,
            "error": self.error,
            "metrics": self.metrics,
            "attempt": self.attempt,
            "tool_calls": self.tool_calls,
            "sources": self.sources,
            "notes": self.notes,
            "reasoning": self.stream.reasoning,
            **self.stream.state(),
        }

    def export(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "model": self.model,
            "label": self.label,
            "status": self.status.value,
            "attempt": self.attempt,
            "content": self.stream.text,
            "reasoning": self.stream.reasoning,
            "error": self.error,
            "metrics": {"ttft_ms": self.metrics["ttft_ms"], "duration_ms": self.metrics["duration_ms"]},
            "usage": self.metrics["usage"],
            "tool_calls": self.tool_calls,
            "sources": self.sources,
            "notes": self.notes,
        }


def turn_summary(turn: Any, turn_id: Any = None) -> dict[str, Any]:
    """A turn as clients see it: its prompt, and the messages an API request sent before it."""
    summary: dict[str, Any] = {
        "id": turn.pk if turn_id is None else turn_id,
        "index": turn.index,
        "prompt": turn.prompt,
    }
    if getattr(turn, "context", None):
        summary["context"] = [
            {"role": str(m.get("role", "")), "content": str(m.get("content") or "")} for m in turn.context
        ]
    return summary


def feedback_summary(feedback: Any) -> dict[str, Any] | None:
    """A user's verdict on a run's fused answer (an ``AnswerFeedback`` row) as clients see it."""
    if feedback is None:
        return None
    return {"accepted": bool(feedback.accepted), "note": feedback.note}


@dataclass
class RunState:
    """One run. ``apply`` takes engine events; the serialisers give the protocol's shapes."""

    run_id: str
    client_run_id: str
    turn: dict[str, Any]
    started_at: datetime
    members: list[MemberState]
    analyst: str = ""
    writer: str = ""
    status: RunStatus = RunStatus.RUNNING
    phase: RunPhase = RunPhase.PANEL
    final: Stream = field(default_factory=Stream)
    analysis: dict[str, Any] | None = None
    label_map: dict[str, str] = field(default_factory=dict)
    analysis_error: str = ""
    analysis_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    failed_models: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    tool_usage: dict[str, Any] = field(default_factory=dict)
    research_notice: str | None = None  # why web search is not offered although the panel asked
    # What made this run a version of its turn (Run.config["version"]): None for the first run,
    # else {"kind": "retry_member"|"rewrite"|"retry_stopped"|"resend"|"fuse", "of": run id, …}.
    version: dict[str, Any] | None = None
    # Who pays (live runs: the final write's ledger rows), and the turn's receipt of every call
    # (chat.usage.turn_receipt), set by whoever reads the ledger: the page, the final write.
    user_id: int | None = None
    uses_server_key: bool = False
    receipt: Mapping[str, Any] | None = None
    # The user's accept or reject of the fused answer (feedback_summary), set by whoever reads
    # the rows: the page (chat.conversations.conversation_turns_state). None: not judged.
    feedback: dict[str, Any] | None = None
    # The engine's last event (live runs only): the call records the final write prices.
    result: RunCompleted | RunFailed | None = None
    # Live runs: answers carried over from an earlier run keep that run's metrics; the
    # catalogue's prices, read once before the run (the event loop must not query).
    reused: dict[int, dict[str, Any]] = field(default_factory=dict)
    price_lookup: Callable[[str], Any] | None = None
    search_price_usd: float = 0.0
    # Stored runs only (exports).
    config: dict[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    wall_ms: int | None = None
    dirty: bool = False  # changed since the last checkpoint
    # A Markdown block finished since the last checkpoint: text the user now reads as final.
    # The checkpointer writes it soon instead of at the next interval (chat.runs.store).
    block_finished: bool = False

    # ----------------------------------------------------------------- construction

    @classmethod
    def start(cls, run: Any, panel: list[ModelSpec], **kw: Any) -> RunState:
        """The state of a run about to start; *run* is its row (ids, turn, models)."""
        keys = distinct_model_ids([spec.model for spec in panel])
        return cls(
            run_id=str(run.pk),
            client_run_id=run.client_run_id,
            turn=turn_summary(run.turn, run.turn_id),
            started_at=run.created_at,
            members=[MemberState(slot=i, model=s.model, key=keys[i], label=s.label or "") for i, s in enumerate(panel)],
            analyst=run.analyst_model,
            writer=run.writer_model,
            analysis=run.analysis,
            label_map=run.label_map or {},
            version=(run.config or {}).get("version"),
            user_id=getattr(run, "user_id", None),  # rows may be look-alikes (tests)
            uses_server_key=bool(getattr(run, "uses_server_key", False)),
            **kw,
        )

    @classmethod
    def from_rows(cls, run: Any, members: Iterable[Any] | None = None) -> RunState:
        """The state of a stored run (``Run`` and its ``MemberResponse`` rows, or look-alikes).

        A run that is over shows its members still in a live status as stopped.
        """
        rows = list(run.members.all() if members is None else members)
        keys = distinct_model_ids([m.model for m in rows])
        done = run.status != RunStatus.RUNNING
        states = []
        for m in rows:
            status = MemberStatus(m.status)
            if done and status in LIVE_STATUSES:
                status = MemberStatus.STOPPED
            states.append(
                MemberState(
                    slot=m.slot,
                    model=m.model,
                    key=keys[m.slot] if m.slot < len(keys) else m.model,
                    label=m.label,
                    status=status,
                    error=_error(m.error_kind, m.error_message),
                    metrics=call_metrics(m.ttft_ms, m.duration_ms, m.usage),
                    attempt=m.attempt,
                    tool_calls=m.tool_calls or [],
                    sources=m.sources or [],
                    notes=m.notes or [],
                    stream=_stored_stream(m.content, m.reasoning, finished=done or status in ENDED),
                )
            )
        if done:
            phase = RunPhase.DONE
        elif run.answer or run.writer_model and run.analysis is not None:
            phase = RunPhase.FINAL
        else:
            phase = RunPhase.PANEL
        tools = run.tool_usage or {}
        return cls(
            run_id=str(run.pk),
            client_run_id=run.client_run_id,
            turn=turn_summary(run.turn, run.turn_id),
            started_at=run.created_at,
            members=states,
            analyst=run.analyst_model,
            writer=run.writer_model,
            status=RunStatus(run.status),
            phase=phase,
            final=_stored_stream(run.answer, "", finished=done),
            analysis=run.analysis,
            label_map=run.label_map,
            analysis_error=run.analysis_error,
            usage=run.usage,
            timings=run.timings,
            failed_models=run.failed_models,
            error=_error(run.error_kind, run.error_message),
            sources=run.sources or [],
            tool_usage=tools,
            research_notice=tools.get("notice"),
            version=(run.config or {}).get("version"),
            config=run.config,
            finished_at=run.finished_at,
            calls=run.calls,
            wall_ms=run.wall_ms(),
        )

    # ----------------------------------------------------------------- serialisers

    def model_slots(self) -> dict[str, int]:
        return {m.key: i for i, m in enumerate(self.members)}

    def snapshot(self) -> dict[str, Any]:
        """The run state of docs/protocol.md ("Run state in a snapshot")."""
        return {
            "run": self.run_id,
            "client_run_id": self.client_run_id,
            "status": self.status.value,
            "phase": self.phase.value,
            "turn": self.turn,
            "members": [m.state() for m in self.members],
            "analyst": self.analyst,
            "writer": self.writer,
            "analysis": self.analysis,
            "label_map": self.label_map,
            "models": self.model_slots(),
            "analysis_error": self.analysis_error,
            "final": self.final.state(),
            "usage": self.usage,
            "timings": self.timings,
            "failed_models": self.failed_models,
            "error": self.error,
            "sources": self.sources,
            "tool_usage": self.tool_usage,
            "research_notice": self.research_notice,
            "started_at": self.started_at.isoformat(),
            "can_retry": self.status in RETRYABLE_RUN,
            "version": self.version,
            "feedback": self.feedback,
            **({"receipt": self.receipt} if self.receipt is not None else {}),
        }

    def terminal_frame(self) -> Frame:
        """``completed`` or ``failed``: the last frame of a run, sent once its final state is stored."""
        if isinstance(self.result, RunCompleted):
            return {
                "type": "completed",
                "status": RunStatus.COMPLETE.value,
                "html": self.final.html or "",
                "usage": self.usage,
                "timings": self.timings,
                "failed_models": self.failed_models,
                "sources": self.sources,
                "tool_usage": self.tool_usage,
                "receipt": self.receipt,
            }
        error = self.error or UNEXPECTED_END
        if isinstance(self.result, RunFailed):
            return {
                "type": "failed",
                "status": self.status.value,
                "kind": error["kind"],
                "message": error["message"],
                "usage": self.usage,
                "failed_models": self.failed_models,
                "html": self.final.html or "",
                "sources": self.sources,
                "tool_usage": self.tool_usage,
                "receipt": self.receipt,
            }
        return {
            "type": "failed",
            "status": RunStatus.ERROR.value,
            "kind": error["kind"],
            "message": error["message"],
            "usage": {},
            "failed_models": [],
            "html": "",
        }

    def export(self) -> dict[str, Any]:
        """A stored run in the conversation export (``fusion-chatroom.conversation`` version 1)."""
        return {
            "id": self.run_id,
            "client_run_id": self.client_run_id,
            "status": self.status.value,
            "created_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "config": self.config,
            "members": [m.export() for m in self.members],
            "analyst_model": self.analyst,
            "analysis": self.analysis,
            "label_map": self.label_map,
            "analysis_error": self.analysis_error,
            "writer_model": self.writer,
            "answer": self.final.text,
            "failed_models": self.failed_models,
            "usage": self.usage,
            "timings": self.timings,
            "wall_ms": self.wall_ms,
            "calls": self.calls,
            "sources": self.sources,
            "tool_usage": self.tool_usage,
            "error": self.error,
        }

    # ----------------------------------------------------------------- engine events

    def prerender(self, event: PipelineEvent) -> RenderJob | None:
        """The Markdown an event needs rendered before ``apply`` (the caller renders it off the
        loop: chat.render.pool), or None when there is none.

        A delta's job holds the blocks it finishes (most finish none); its ``finish`` returns
        the ``RenderUpdate`` to pass to ``apply`` as *ahead*. A finished answer's HTML is its
        live blocks plus the tail (``Stream.whole_job``), kept on the stream for ``apply``.
        """
        if isinstance(event, (PanelDelta, FinalDelta)):
            stream = self.final if isinstance(event, FinalDelta) else self.members[event.slot].stream
            return stream.delta_job(event.delta)
        text = ""
        if isinstance(event, PanelCompleted):
            stream, text = self.members[event.slot].stream, event.content
        elif isinstance(event, PanelFailed):
            stream = self.members[event.slot].stream
            text = event.partial_content or stream.text
        elif isinstance(event, RunCompleted):
            stream, text = self.final, event.answer
        elif isinstance(event, RunFailed):
            stream, text = self.final, self.final.text
        if not text:
            return None
        return stream.whole_job(text)

    def stream_of(self, event: PanelDelta | FinalDelta) -> Stream:
        return self.final if isinstance(event, FinalDelta) else self.members[event.slot].stream

    def apply_blocks(self, slot: int | None, update: RenderUpdate) -> Emit:
        """The HTML of blocks a delta finished, back after the delta itself was applied (with
        ``Stream.text_only``): member *slot*'s, or the fused answer's when *slot* is None."""
        if slot is None:
            frame = {"type": "final.delta", **self.final.add_blocks(update)}
        else:
            frame = {"type": "panel.delta", "slot": slot, **self.members[slot].stream.add_blocks(update)}
        self.block_finished = self.block_finished or bool(frame["blocks"])
        return frame, False

    def apply(self, event: PipelineEvent, ahead: RenderUpdate | None = None) -> Emit | None:
        """Apply one engine event; return the frame it makes for clients, if any."""
        self.dirty = True
        return _HANDLERS[type(event)](self, event, ahead)

    def _priced_usage(self, record: CallRecord) -> dict[str, Any]:
        """A call's usage for its card, with what the provider did not report estimated (chat.spend)."""
        if self.price_lookup is None:
            return record.usage.to_dict()
        try:
            return spend.call_usage(record.to_dict(), lookup=self.price_lookup)
        except Exception:  # the card can do without a price; the final write prices again
            log.warning("could not price a call of run %s", self.run_id, exc_info=True)
            return record.usage.to_dict()

    def _on_panel_added(self, e: PanelAdded, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        if e.attempt > 1:
            m.restart()
        m.status, m.attempt = MemberStatus.WAITING, e.attempt
        return {"type": "panel.added", "slot": e.slot, "model": e.model, "attempt": e.attempt}, True

    def _on_panel_delta(self, e: PanelDelta, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        m.status = MemberStatus.STREAMING
        frame = {"type": "panel.delta", "slot": e.slot, **m.stream.feed(e.delta, ahead)}
        self.block_finished = self.block_finished or bool(frame["blocks"])
        return frame, m.stream.take_first()

    def _on_panel_reasoning(self, e: PanelReasoningDelta, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        if m.status == MemberStatus.WAITING:
            m.status = MemberStatus.THINKING
        return {"type": "panel.reasoning.delta", "slot": e.slot, **m.stream.feed_reasoning(e.delta)}, False

    def _on_panel_completed(self, e: PanelCompleted, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        m.stream.html = m.stream.whole_html(e.content)  # before the text is replaced: it may be the live blocks
        m.stream.text = e.content
        m.metrics = self.reused.get(e.slot) or call_metrics(
            e.record.ttft_ms, e.record.duration_ms, self._priced_usage(e.record)
        )
        m.status, m.sources = MemberStatus.COMPLETE, list(e.sources)
        return {
            "type": "panel.completed",
            "slot": e.slot,
            "model": e.model,
            "html": m.stream.html,
            "metrics": m.metrics,
            "sources": m.sources,
        }, False

    def _on_panel_failed(self, e: PanelFailed, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        # A user's stop is not a failure; a member skipped by "fuse now" is its own kind of stop.
        kind = "skipped" if e.error.kind == "cancelled" and e.error.message == SKIPPED_MESSAGE else e.error.kind
        m.status = MemberStatus.STOPPED if kind in ("cancelled", "skipped", "interrupted") else MemberStatus.FAILED
        text = e.partial_content or m.stream.text
        m.stream.html = m.stream.whole_html(text)  # rendered ahead by ``prerender``
        m.stream.text = text
        m.metrics = call_metrics(e.record.ttft_ms, e.record.duration_ms, self._priced_usage(e.record))
        m.error = {"kind": kind, "message": e.error.message}
        m.sources = list(e.sources) or m.sources
        for call in m.tool_calls:  # a call cut short by the stop
            if call.get("status") == "running":
                call.update(status="failed", ok=False, summary="stopped")
        return {
            "type": "panel.failed",
            "slot": e.slot,
            "model": e.model,
            "status": m.status.value,
            "error": m.error,
            "metrics": m.metrics,
            "html": m.stream.html,
            "sources": m.sources,
        }, True

    def _on_tool_started(self, e: PanelToolStarted, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        m.tool_calls.append(
            {
                "id": e.call_id,
                "name": e.name,
                "arguments": e.arguments,
                "status": "running",
                "ok": None,
                "summary": "",
                "sources": [],
            }
        )
        m.status = MemberStatus.SEARCHING
        return {
            "type": "panel.tool.started",
            "slot": e.slot,
            "model": e.model,
            "call_id": e.call_id,
            "name": e.name,
            "arguments": e.arguments,
        }, True

    def _on_tool_finished(self, e: PanelToolFinished, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        call = next((c for c in reversed(m.tool_calls) if c["id"] == e.call_id), None)
        if call is None:
            call = {"id": e.call_id, "name": e.name, "arguments": {}}
            m.tool_calls.append(call)
        call.update(status="done" if e.ok else "failed", ok=e.ok, summary=e.summary, sources=list(e.sources))
        merge_sources(m.sources, e.sources)
        if m.status == MemberStatus.SEARCHING and not m.tools_running():
            m.status = MemberStatus.STREAMING if m.stream.text else MemberStatus.WAITING
        return {
            "type": "panel.tool.finished",
            "slot": e.slot,
            "model": e.model,
            "call_id": e.call_id,
            "name": e.name,
            "ok": e.ok,
            "summary": e.summary,
            "sources": list(e.sources),
            "status": m.status.value,
        }, True

    def _on_panel_note(self, e: PanelNote, ahead: RenderUpdate | None) -> Emit:
        m = self.members[e.slot]
        if e.message not in m.notes:
            m.notes.append(e.message)
        return {"type": "panel.note", "slot": e.slot, "model": e.model, "message": e.message}, True

    def _on_analysis_started(self, e: AnalysisStarted, ahead: RenderUpdate | None) -> Emit:
        self.phase, self.analyst = RunPhase.ANALYSIS, e.analyst_model
        return {"type": "analysis.in_progress", "analyst_model": e.analyst_model}, True

    def _on_analysis_completed(self, e: AnalysisCompleted, ahead: RenderUpdate | None) -> Emit:
        self.analysis, self.label_map, self.analyst = e.analysis, e.label_map, e.analyst_model
        self.analysis_calls = [r.to_dict() for r in e.records]
        return {
            "type": "analysis.completed",
            "analysis": e.analysis,
            "label_map": e.label_map,
            "analyst_model": e.analyst_model,
            "models": self.model_slots(),
        }, True

    def _on_analysis_degraded(self, e: AnalysisDegraded, ahead: RenderUpdate | None) -> Emit:
        self.analysis, self.analysis_error = None, e.reason
        self.analysis_calls = [r.to_dict() for r in e.records]
        return {"type": "analysis.degraded", "reason": e.reason}, True

    def _on_final_started(self, e: FinalStarted, ahead: RenderUpdate | None) -> Emit:
        self.phase, self.writer = RunPhase.FINAL, e.writer_model
        self.final.reset()  # a fallback writer starts the answer over
        return {"type": "final.started", "writer_model": e.writer_model}, True

    def _on_final_delta(self, e: FinalDelta, ahead: RenderUpdate | None) -> Emit:
        frame = {"type": "final.delta", **self.final.feed(e.delta, ahead)}
        self.block_finished = self.block_finished or bool(frame["blocks"])
        return frame, self.final.take_first()

    def _on_run_completed(self, e: RunCompleted, ahead: RenderUpdate | None) -> None:
        self.result, self.phase, self.status = e, RunPhase.DONE, RunStatus.COMPLETE
        self.usage, self.timings, self.failed_models = e.usage.to_dict(), e.timings, e.failed_models
        self.sources = list(e.sources)
        self.tool_usage = priced_tool_usage(
            e.tool_usage, notice=self.research_notice, search_price_usd=self.search_price_usd
        )
        self.final.html = self.final.whole_html(e.answer)
        self.final.text = e.answer

    def _on_run_failed(self, e: RunFailed, ahead: RenderUpdate | None) -> None:
        self.result, self.phase = e, RunPhase.DONE
        self.status = RunStatus.CANCELLED if e.kind == "cancelled" else RunStatus.ERROR
        self.usage, self.failed_models, self.error = e.usage.to_dict(), e.failed_models, _error(e.kind, e.message)
        self.sources = run_sources((m.key, m.sources) for m in self.members)
        calls = [c.get("name") for m in self.members for c in m.tool_calls]
        self.tool_usage = priced_tool_usage(
            {"searches": calls.count("web_search"), "fetches": calls.count("web_fetch")},
            notice=self.research_notice,
            search_price_usd=self.search_price_usd,
        )
        if self.final.text:
            self.final.html = self.final.whole_html(self.final.text)  # rendered ahead by ``prerender``

    # ----------------------------------------------------------------- the end

    def crash(self, exc: BaseException) -> None:
        """A bug in the engine stopped the run: fail it loudly, keep what we have."""
        self.result, self.status, self.phase = None, RunStatus.ERROR, RunPhase.DONE
        self.error = {"kind": "internal", "message": f"The run stopped on an internal error ({type(exc).__name__})."}

    def call_records(self) -> list[dict[str, Any]]:
        """Every call of the run (panel, analyst, writer), as the engine recorded it."""
        return [record.to_dict() for record in self.result.records] if self.result is not None else []

    def settle(self, calls: list[dict[str, Any]]) -> None:
        """The run is over: count its priced *calls* (chat.spend.priced_calls) and stop live members.

        Every call counts, however it ended; a card shows its member's latest attempt.
        """
        for m in self.members:
            attempts = [c for c in calls if c["role"] == "panel" and c.get("slot") == m.slot]
            if attempts:
                m.metrics = {**m.metrics, "usage": attempts[-1]["usage"]}
            if m.status in LIVE_STATUSES:
                m.status = MemberStatus.STOPPED
        if self.result is not None:
            self.result.usage = spend.usage_total(c["usage"] for c in calls)
            self.usage = self.result.usage.to_dict()
        elif self.status == RunStatus.RUNNING:  # the engine ended without saying how
            self.status, self.error = RunStatus.ERROR, self.error or dict(UNEXPECTED_END)
        self.phase = RunPhase.DONE


_HANDLERS: dict[type, Callable[[RunState, Any, RenderUpdate | None], Emit | None]] = {
    PanelAdded: RunState._on_panel_added,
    PanelDelta: RunState._on_panel_delta,
    PanelReasoningDelta: RunState._on_panel_reasoning,
    PanelCompleted: RunState._on_panel_completed,
    PanelFailed: RunState._on_panel_failed,
    PanelToolStarted: RunState._on_tool_started,
    PanelToolFinished: RunState._on_tool_finished,
    PanelNote: RunState._on_panel_note,
    AnalysisStarted: RunState._on_analysis_started,
    AnalysisCompleted: RunState._on_analysis_completed,
    AnalysisDegraded: RunState._on_analysis_degraded,
    FinalStarted: RunState._on_final_started,
    FinalDelta: RunState._on_final_delta,
    # The API's server-tool shape: the client runs its own tools; nothing to show in the room.
    OuterToolCalls: lambda state, event, ahead: None,
    RunCompleted: RunState._on_run_completed,
    RunFailed: RunState._on_run_failed,
}
