"""One panel member's attempt: its turns, its tool calls, and how it ends.

Owns ``Member`` (a panel slot and the state of its latest attempt) and ``MemberRun``, the turn
loop of one attempt: stream a turn and forward its deltas as panel events; run the turn's tool
calls through a ``research.ToolRunner`` (or log OpenRouter's server tools) and go on; answer
without tools when the model cannot take them; and end with exactly one ``PanelCompleted`` or
``PanelFailed``, also when the attempt is cancelled (stopped, skipped, or the run cancelled).

The turn loop, in order: an error ends the attempt (once, before anything was shown, a "does not
support tools" error retries without tools); output cut at the cap ends it with the text so
far; a turn without tool calls is the answer; tool calls run within the budget, and once it is
spent the next turn has ``tool_choice: "none"`` and, if the model ignores that, a last turn
without ``tools``.

Knows nothing of the other members or of the run's phases: the driver (``pipeline``) starts,
stops and waits for members. No Django, no httpx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chat.fusion.calls import RunContext, Unreported, close_record, outcome_error, usage_sum
from chat.fusion.research import (
    NO_TOOLS_NOTE,
    ResearchLog,
    ToolMode,
    ToolRunner,
    lacks_tool_support,
    record_server_tools,
    server_tool_defs,
    tool_mode,
    with_tools_guidance,
)
from chat.fusion.types import (
    CallRecord,
    ClientEvent,
    ContentDelta,
    Finish,
    Message,
    ModelSpec,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelNote,
    PanelReasoningDelta,
    PanelToolFinished,
    PanelToolStarted,
    ProviderError,
    ReasoningDelta,
    SourcesReport,
    StreamError,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    merge_tool_call,
    ms,
    truncation_note,
)

log = logging.getLogger(__name__)

STOPPED_MESSAGE = "Stopped by the user."


@dataclass
class Member:
    """One panel slot and the state of its latest attempt."""

    slot: int
    spec: ModelSpec
    model_id: str  # distinct within the panel: "model", "model#2", …
    attempt: int = 0
    task: asyncio.Task[None] | None = None
    finished: bool = False
    content: str | None = None  # the answer, once the latest attempt completed
    error: ProviderError | None = None
    stop_message: str = STOPPED_MESSAGE  # why its task was cancelled, for PanelFailed
    research: ResearchLog = field(default_factory=ResearchLog)  # of the latest attempt

    def restart(self) -> None:
        """Forget the previous attempt."""
        self.attempt += 1
        self.finished, self.content, self.error = False, None, None
        self.research = ResearchLog()


@dataclass
class _Turn:
    """One streamed call of a member's turn loop."""

    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    finish: str | None = None
    error: ProviderError | None = None
    partial_text: str = ""
    usage: Usage = field(default_factory=Usage)
    citations: list[dict[str, str]] = field(default_factory=list)
    server_tool_use: dict[str, int] = field(default_factory=dict)
    truncated_at: int | None = None  # the client cut the call at its output cap

    def take(self, event: ClientEvent) -> None:
        """Keep what the turn's outcome needs (content is forwarded by the member)."""
        if isinstance(event, ToolCallDelta):
            merge_tool_call(self.tool_calls, event)
        elif isinstance(event, UsageReport):
            self.usage = event.usage
        elif isinstance(event, Finish):
            self.finish, self.truncated_at = event.reason, event.truncated_at
        elif isinstance(event, StreamError):
            self.error, self.partial_text = event.error, event.partial_text
        elif isinstance(event, SourcesReport):
            self.citations += event.citations
            for key, value in (event.server_tool_use or {}).items():
                self.server_tool_use[key] = self.server_tool_use.get(key, 0) + value

    def calls(self) -> list[ToolCall]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]


class MemberRun:
    """One attempt of one member. ``run()`` settles the member whatever happens."""

    def __init__(self, ctx: RunContext, member: Member, record: CallRecord, *, no_tool_models: frozenset[str]) -> None:
        self.ctx, self.member, self.record = ctx, member, record
        request = ctx.request
        self.base_messages: list[Message] = (request.member_messages or {}).get(member.slot) or request.messages
        provider = ctx.provider_of(member.spec.model)
        self.mode: ToolMode
        self.mode, self._note = tool_mode(
            request.research,
            ctx.tools,
            known_without_tools=member.spec.model in no_tool_models,
            served_by_openrouter=provider is not None and provider.is_openrouter,
        )
        self.runner: ToolRunner | None = None
        if self.mode == "local" and ctx.tools is not None and request.research is not None:
            self.runner = ToolRunner(
                ctx.tools, request.research.budget, member.research, call_prefix=f"call_{member.slot}_", listener=self
            )
        self.spec = with_tools_guidance(member.spec, self.mode, ctx.tools)
        self.messages = list(self.base_messages)
        self.content: list[str] = []  # the member's text over all its turns
        self.usage = Usage()  # summed over turns
        self.finish: str | None = None
        self.error: ProviderError | None = None
        self.partial_text = ""
        self.bare = False  # a model ignored tool_choice "none": its last turn has no tools at all
        self.started = 0.0

    async def run(self) -> None:
        self.record.status = "running"
        self.started = time.monotonic()
        if self._note:
            self._emit_note(self._note)
        try:
            await self._turns()
        except asyncio.CancelledError:
            # Stopped, skipped or the whole run cancelled. An answer that had already finished
            # (cancel landed while the stream was closing) still counts.
            if self.finish is None and self.error is None:
                self.error = ProviderError(kind="cancelled", message=self.member.stop_message)
            self._settle()
            raise
        except Exception:
            log.exception("Panel member %s crashed while streaming", self.member.spec.model)
            self.error = ProviderError(
                kind="upstream_error", message="Internal error while reading this model's answer."
            )
        self._settle()

    # ----------------------------------------------------------------------- the turn loop

    async def _turns(self) -> None:
        """Turns until the member has an answer or an error (left in finish / error)."""
        while True:
            turn = await self._stream_turn()
            self.usage.add(turn.usage)
            self.record.usage = usage_sum(self.usage)
            if self.mode == "server":
                self._log_server_tools(turn)
            if turn.error is not None:
                if not self._can_drop_tools(turn.error):
                    self.error, self.partial_text = turn.error, turn.partial_text
                    return
                self._drop_tools()
            elif turn.truncated_at is not None:
                # Cut at the output cap: the text so far is the answer; no tool call is run.
                self.finish = turn.finish
                self._emit_note(truncation_note(turn.truncated_at))
                return
            elif not await self._went_on_with_tools(turn):
                return

    async def _went_on_with_tools(self, turn: _Turn) -> bool:
        """Run the turn's tool calls and return True for another turn; False: the turn is the answer."""
        if self.runner is None or self.bare or not turn.tool_calls:
            self.finish = turn.finish
            return False
        calls, text = turn.calls(), "".join(turn.text)
        if not self.runner.spent:
            self.messages += await self.runner.run(calls, text)
            return True
        if text.strip():  # tools were refused and it answered after all: that is the answer
            self.finish = "stop"
            return False
        self.messages += self.runner.decline(calls, text)
        self.bare = True
        return True

    def _can_drop_tools(self, error: ProviderError) -> bool:
        """Once, before anything was shown: a model that cannot take tools answers without them."""
        return (
            self.mode != "none" and self.member.research.calls == 0 and not self.content and lacks_tool_support(error)
        )

    def _drop_tools(self) -> None:
        self.mode, self.runner = "none", None
        self.spec, self.messages = self.member.spec, list(self.base_messages)
        self._emit_note(NO_TOOLS_NOTE)

    def _turn_tools(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """``tools`` and ``tool_choice`` of the next turn."""
        research = self.ctx.request.research
        if self.mode == "server" and research is not None:
            return server_tool_defs(research), None
        if self.runner is None or self.bare:
            return None, None
        return self.runner.schemas(), "none" if self.runner.spent else None

    # ----------------------------------------------------------------------- one turn

    async def _stream_turn(self) -> _Turn:
        """Stream one call; its content continues the member's text."""
        turn = _Turn()
        unreported = Unreported(self.record, self.spec, self.messages)
        tools, tool_choice = self._turn_tools()
        stream = self.ctx.client.stream(self.spec, self.messages, tools=tools, tool_choice=tool_choice)
        async with aclosing(stream) as events:
            async for event in events:
                unreported.take(event)
                self._take(turn, event)
        return turn

    def _take(self, turn: _Turn, event: ClientEvent) -> None:
        record = self.record
        if record.ttft_ms is None and isinstance(event, (ContentDelta, ReasoningDelta, ToolCallDelta)):
            record.ttft_ms = ms(time.monotonic() - self.started)
        if isinstance(event, ContentDelta):
            self._add_content(turn, event.text)
        elif isinstance(event, ReasoningDelta) and event.text:
            self.ctx.emit(PanelReasoningDelta(slot=self.member.slot, model=self.member.spec.model, delta=event.text))
        elif isinstance(event, UsageReport):
            record.usage = usage_sum(self.usage, event.usage)
        elif isinstance(event, (Finish, StreamError)):
            record.malformed_chunks = event.malformed_chunks
        turn.take(event)

    def _add_content(self, turn: _Turn, text: str) -> None:
        if not text:
            return
        if not turn.text and self.content:
            # A later turn: keep it apart from what the member wrote before its tool calls.
            gap = _paragraph_gap("".join(self.content))
            if gap:
                self._say(gap)
        turn.text.append(text)
        self._say(text)

    def _say(self, text: str) -> None:
        self.content.append(text)
        self.ctx.emit(PanelDelta(slot=self.member.slot, model=self.member.spec.model, delta=text))

    # ----------------------------------------------------------------------- research events

    def tool_started(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        slot, model = self.member.slot, self.member.spec.model
        self.ctx.emit(PanelToolStarted(slot=slot, model=model, call_id=call_id, name=name, arguments=arguments))

    def tool_finished(self, call_id: str, name: str, ok: bool, summary: str, sources: list[dict[str, str]]) -> None:
        slot, model = self.member.slot, self.member.spec.model
        self.ctx.emit(
            PanelToolFinished(
                slot=slot, model=model, call_id=call_id, name=name, ok=ok, summary=summary, sources=sources
            )
        )

    def _log_server_tools(self, turn: _Turn) -> None:
        """OpenRouter ran the tools: its citations and counts become the usual events."""
        logged = record_server_tools(self.member.research, turn.citations, turn.server_tool_use)
        if logged is not None:
            summary, sources = logged
            call_id, name = f"server_{self.member.slot}_{self.member.research.calls}", "openrouter:web_search"
            self.tool_started(call_id, name, {})
            self.tool_finished(call_id, name, True, summary, sources)

    # ----------------------------------------------------------------------- the end

    def _emit_note(self, message: str) -> None:
        self.ctx.emit(PanelNote(slot=self.member.slot, model=self.member.spec.model, message=message))

    def _settle(self) -> None:
        member, record = self.member, self.record
        text = "".join(self.content) or self.partial_text
        error = outcome_error(text, self.finish, self.error)
        close_record(record, self.started, error)
        slot, model, sources = member.slot, member.spec.model, list(member.research.sources)
        if error is None:
            member.content = text
            self.ctx.emit(PanelCompleted(slot=slot, model=model, content=text, record=record, sources=sources))
        else:
            member.error = error
            self.ctx.emit(
                PanelFailed(slot=slot, model=model, error=error, partial_content=text, record=record, sources=sources)
            )
        member.finished = True


def _paragraph_gap(text: str) -> str:
    if not text.strip() or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"
