"""The fusion pipeline: panel → analysis → synthesis, as one stream of typed events.

    run = FusionRun(request, client)
    async for event in run.events():
        ...
    # meanwhile, from any other task on the same event loop:
    run.stop_member(1); run.retry_member(1); run.fuse_now(); run.cancel()

How it works: ``events()`` starts one driver task and yields whatever lands in an
``asyncio.Queue``. The driver runs the phases in order. Each panel member is its own task that
puts its deltas into the same queue the moment they arrive, so the first delta of every member
reaches the consumer without waiting for anyone else. The controls cancel tasks, and cancelling
a task closes its client stream, which closes its HTTP connection (the provider stops billing).

For consumers:

* A repeated ``PanelAdded`` for a slot (``attempt`` > 1) means that member was retried: reset the
  slot's text, the new attempt streams from scratch.
* A second ``AnalysisStarted`` means the fallback analyst took over; a second ``FinalStarted``
  means the fallback writer took over: reset the final answer's text.
* ``failed_models`` lists, by distinct model id (``model#2`` for a repeated model), every member
  that ended without an answer: failed, stopped, or skipped by "fuse now".
* ``RunCompleted.records`` / ``RunFailed.records`` hold every call this run made. A slot served
  from ``reuse_answers`` made no call: its PanelCompleted carries a zero-cost record that is not
  part of the run's records or totals.
* ``timings`` are milliseconds; ``final_ttft`` is measured from the start of the run, i.e. how
  long the user waited for the first word of the fused answer.

The analyst runs even when only one answer survived: it is one cheap call and the UI can always
show the same structure (consensus, unique insights, blind spots).

Web research (``request.research`` + an injected ``tools`` object, see ``chat.fusion.tools``):

* **Local tools** — each member is offered the tools' function schemas. A turn that ends in tool
  calls (arguments assembled from ``ToolCallDelta`` fragments by index) has them executed
  concurrently; the assistant message with ``tool_calls`` and one ``tool`` message per call are
  appended, and the member continues. At most ``research.budget`` calls are executed per member;
  once it is spent the next turn has ``tool_choice: "none"`` (and, if a model ignores that, a last
  turn without ``tools``), so every member ends with an answer. Each executed call is a
  ``PanelToolStarted`` then a ``PanelToolFinished`` (a failed tool is ``ok=False`` with the tool
  error, which the model also reads; never an exception). Text of later turns continues the
  member's text; usage is summed over turns.
* **Server tools** — with ``research.server_tools``, members served by OpenRouter get
  ``openrouter:web_search`` / ``openrouter:web_fetch`` instead, and no local loop; the
  ``url_citation`` annotations and ``usage.server_tool_use`` become the same events and sources.
* A model that cannot use tools (``no_tool_models``, or the provider's "does not support tools"
  error on the first turn) answers without them, with a ``PanelNote``.
* Sources are collected per member (``PanelCompleted.sources``) and per run
  (``RunCompleted.sources``, deduplicated by normalised URL; ``RunCompleted.tool_usage``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from . import prompts
from .analysis import AnalysisError, ParsedAnalysis, assign_labels, distinct_model_ids, label_map_of, parse_analysis
from .types import (
    ERROR_MESSAGES,
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    CallRecord,
    ContentDelta,
    FinalDelta,
    FinalStarted,
    Finish,
    FusionRequest,
    Message,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelNote,
    PanelReasoningDelta,
    PanelToolFinished,
    PanelToolStarted,
    PipelineEvent,
    ProviderError,
    ReasoningDelta,
    RunCompleted,
    RunFailed,
    SourcesReport,
    StreamError,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    truncation_note,
)

log = logging.getLogger(__name__)

MAX_PANEL = 8
MAX_TOKENS_LIMIT = 200_000

# When every member failed the same way, the run fails that way too (a user can act on it).
_PANEL_FAILURE_KINDS = {
    "invalid_key": "invalid_key",
    "insufficient_credits": "insufficient_credits",
    "rate_limited": "rate_limited",
    "model_not_found": "invalid_model",
    "cancelled": "cancelled",
}

STOPPED_MESSAGE = "Stopped by the user."
SKIPPED_MESSAGE = "Skipped by fuse now"
RUN_CANCELLED_MESSAGE = "The run was stopped."
NO_TOOLS_NOTE = "This model can't use tools; it answered without web research."
BUDGET_SPENT_REPLY = (
    "Not run: the budget of {n} tool calls for this answer is spent. Answer now with what you have."
)
# How providers say a model cannot take ``tools`` (OpenRouter: 404 "No endpoints found that
# support tool use"; others: 400 "… does not support tools", "tool calling is not supported").
_NO_TOOL_SUPPORT = re.compile(
    r"(?i)(support(s|ing)? tool|tool use|does not support tools|tools? (is|are) not supported|"
    r"tool.?calling|function.?calling)"
)


def validate_request(request: FusionRequest) -> list[str]:
    """Every problem with the request, as sentences a user can act on; empty when it is valid."""
    problems: list[str] = []
    if not 1 <= len(request.panel) <= MAX_PANEL:
        problems.append(f"The panel needs between 1 and {MAX_PANEL} models (got {len(request.panel)}).")
    if not request.question.strip():
        problems.append("The question is empty.")

    roles = [(f"Panel model {i + 1}", spec) for i, spec in enumerate(request.panel)]
    roles += [("The analyst", request.analyst), ("The writer", request.writer)]
    if request.fallback_analyst:
        roles.append(("The fallback analyst", request.fallback_analyst))
    if request.fallback_writer:
        roles.append(("The fallback writer", request.fallback_writer))
    for role, spec in roles:
        if not spec.model or not spec.model.strip():
            problems.append(f"{role} has no model id.")
        if spec.temperature is not None and not 0 <= spec.temperature <= 2:
            problems.append(f"{role}: temperature must be between 0 and 2 (got {spec.temperature}).")
        if spec.max_tokens is not None and not 0 < spec.max_tokens <= MAX_TOKENS_LIMIT:
            problems.append(
                f"{role}: max tokens must be between 1 and {MAX_TOKENS_LIMIT} (got {spec.max_tokens})."
            )

    for slot in request.member_messages or {}:
        if not 0 <= slot < len(request.panel):
            problems.append(f"Messages were given for panel slot {slot}, which does not exist.")
    return problems


@dataclass
class _Member:
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
    # Research of the latest attempt.
    sources: list[dict[str, str]] = field(default_factory=list)
    searches: int = 0
    fetches: int = 0
    server_tool_use: dict[str, int] = field(default_factory=dict)
    tool_calls_made: int = 0
    tool_call_seq: int = 0  # for ids of tool calls a provider sent without one

    def reset_research(self) -> None:
        self.sources, self.server_tool_use = [], {}
        self.searches = self.fetches = self.tool_calls_made = self.tool_call_seq = 0

    def add_sources(self, sources: list[dict[str, str]]) -> list[dict[str, str]]:
        """Add sources (deduplicated by normalised URL); returns them normalised."""
        added = []
        known = {s["url"] for s in self.sources}
        for source in sources:
            url = normalise_url(source.get("url", ""))
            if not url:
                continue
            item = {"url": url, "title": source.get("title") or "", "kind": source.get("kind") or ""}
            added.append(item)
            if url not in known:
                known.add(url)
                self.sources.append(item)
            elif item["title"]:
                for existing in self.sources:
                    if existing["url"] == url and not existing["title"]:
                        existing["title"] = item["title"]
        return added


@dataclass
class _Outcome:
    """A tool result made here (unknown tool, internal error); same shape as tools.ToolOutcome."""

    ok: bool
    content_for_model: str
    summary: str
    sources: list[Any] = field(default_factory=list)


@dataclass
class _Turn:
    """One streamed call of a member's tool loop."""

    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    finish: str | None = None
    error: ProviderError | None = None
    partial_text: str = ""
    usage: Usage = field(default_factory=Usage)
    citations: list[dict[str, str]] = field(default_factory=list)
    server_tool_use: dict[str, int] = field(default_factory=dict)
    truncated_at: int | None = None  # the client cut the call at its output cap


@dataclass
class _Crash:
    """A bug in the driver: events() re-raises it rather than ending quietly."""

    exc: BaseException


@dataclass
class _AnalysisOutcome:
    event: AnalysisCompleted | None = None
    degraded_reason: str | None = None


@dataclass
class _CallResult:
    record: CallRecord
    text: str = ""
    error: ProviderError | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


class FusionRun:
    """One fusion run. Iterate ``events()`` once; call the controls from anywhere on the loop."""

    def __init__(
        self,
        request: FusionRequest,
        client: Any,
        *,
        reuse_answers: dict[int, str] | None = None,
        reuse_analysis: AnalysisCompleted | None = None,
        rng: random.Random | None = None,
        tools: Any = None,
        no_tool_models: set[str] | frozenset[str] | None = None,
        reuse_sources: dict[int, list[dict[str, str]]] | None = None,
    ) -> None:
        """``tools``: a ``chat.fusion.tools.WebTools`` (``available``, ``tool_schemas()``,
        ``async call(name, arguments_json)``), used when ``request.research.web_tools`` is on.
        ``no_tool_models``: model ids known (catalogue) not to support tools.
        ``reuse_sources``: the sources of answers served from ``reuse_answers``."""
        for slot in reuse_answers or {}:
            if not 0 <= slot < len(request.panel):
                raise ValueError(f"reuse_answers names slot {slot}, but the panel has {len(request.panel)}.")
        self.request = request
        self.client = client
        self._reuse_answers = dict(reuse_answers or {})
        self._reuse_analysis = reuse_analysis
        self._rng = rng or random.Random()
        self.tools = tools
        self._no_tool_models = frozenset(no_tool_models or ())
        self._reuse_sources = dict(reuse_sources or {})

        ids = distinct_model_ids([spec.model for spec in request.panel])
        self._members = [_Member(slot=i, spec=spec, model_id=ids[i]) for i, spec in enumerate(request.panel)]
        self._queue: asyncio.Queue[PipelineEvent | _Crash] = asyncio.Queue()
        self._wake = asyncio.Event()  # set whenever a member settles
        self._records: list[CallRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._phase = "pending"  # pending → panel → analysis → synthesis → done
        self._started = False
        self._fusing = False
        self._cancel_requested = False
        self._first_final_delta_at: float | None = None
        self._final_truncated_at: int | None = None  # the fused answer was cut at the output cap
        # What the analyst looked up when research.analyst_tools is on (no card of its own).
        self._analyst_sources: list[dict[str, str]] = []
        self._analyst_searches = 0
        self._analyst_fetches = 0

    # ----------------------------------------------------------------------- public API

    async def events(self) -> AsyncIterator[PipelineEvent]:
        """Every event of the run, ending with exactly one RunCompleted or RunFailed."""
        if self._started:
            raise RuntimeError("FusionRun.events() can be iterated only once.")
        self._started = True
        if self._cancel_requested:
            yield self._run_failed("cancelled", RUN_CANCELLED_MESSAGE)
            return

        driver = self._driver = asyncio.create_task(self._drive(), name="fusion-run")
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Crash):
                    raise item.exc
                yield item
                if isinstance(item, (RunCompleted, RunFailed)):
                    return
        finally:
            # Also reached when the consumer stops iterating early: leave no task behind.
            if not driver.done() and not self._cancel_requested:
                driver.cancel()
            await asyncio.wait([driver])

    def stop_member(self, slot: int) -> bool:
        """Stop one running member; it ends with PanelFailed(kind="cancelled")."""
        member = self._running_member(slot)
        if member is None:
            return False
        member.stop_message = STOPPED_MESSAGE
        member.task.cancel()  # type: ignore[union-attr]
        return True

    def retry_member(self, slot: int) -> bool:
        """During the panel phase, restart a member that failed or was stopped."""
        if self._phase != "panel" or self._fusing or not 0 <= slot < len(self._members):
            return False
        member = self._members[slot]
        if not member.finished or member.content is not None:
            return False
        self._emit(PanelAdded(slot=slot, model=member.spec.model, attempt=member.attempt + 1))
        self._start_member(member)
        return True

    def fuse_now(self) -> bool:
        """Stop waiting for the panel: skip running members and analyse the answers so far.

        Refused (False) before any member has completed, since there would be nothing to fuse.
        """
        if self._phase != "panel" or not any(m.content is not None for m in self._members):
            return False
        self._fusing = True
        for member in self._members:
            if self._running_member(member.slot) is not None:
                member.stop_message = SKIPPED_MESSAGE
                member.task.cancel()  # type: ignore[union-attr]
        return True

    def cancel(self) -> None:
        """Stop everything; events() then yields RunFailed(kind="cancelled") and ends."""
        if self._cancel_requested or self._phase == "done":
            return
        self._cancel_requested = True
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()

    # ----------------------------------------------------------------------- driver

    async def _drive(self) -> None:
        try:
            await self._run_phases()
        except asyncio.CancelledError:
            await self._cancel_children()
            if not self._cancel_requested:
                raise  # the consumer went away; nobody is listening
            self._emit(self._run_failed("cancelled", RUN_CANCELLED_MESSAGE))
        except Exception as exc:  # a bug: surface it through events()
            await self._cancel_children()
            self._emit(_Crash(exc))
        finally:
            self._phase = "done"

    async def _run_phases(self) -> None:
        request = self.request
        started = time.monotonic()
        problems = validate_request(request)
        if problems:
            self._emit(self._run_failed("invalid_request", "Invalid request: " + " ".join(problems)))
            return

        # --- panel
        self._phase = "panel"
        for member in self._members:
            self._emit(PanelAdded(slot=member.slot, model=member.spec.model))
        for member in self._members:
            if member.slot in self._reuse_answers:
                self._complete_from_reuse(member, self._reuse_answers[member.slot])
            else:
                self._start_member(member)
        await self._wait_for_panel()
        self._phase = "analysis"
        panel_done = time.monotonic()

        answers: list[tuple[str, str]] = [(m.model_id, m.content) for m in self._members if m.content is not None]
        if not answers:
            self._emit(self._all_panels_failed())
            return

        # --- analysis
        outcome = await self._analyse(answers)
        self._phase = "synthesis"
        analysis_done = time.monotonic()

        # --- synthesis
        answer, writer_problems = await self._synthesise(answers, outcome)
        finished = time.monotonic()
        if answer is None:
            kept = "The panel answers and the analysis are kept." if outcome.event else "The panel answers are kept."
            self._emit(self._run_failed("writer_failed", " ".join([*writer_problems, kept])))
            return

        self._emit(
            RunCompleted(
                answer=answer,
                analysis=outcome.event.analysis if outcome.event else None,
                analysis_error=outcome.degraded_reason,
                failed_models=self._failed_models(),
                records=list(self._records),
                usage=self._total_usage(),
                timings={
                    "panel": _ms(panel_done - started),
                    "analysis": _ms(analysis_done - panel_done),
                    "synthesis": _ms(finished - analysis_done),
                    "total": _ms(finished - started),
                    "final_ttft": _ms((self._first_final_delta_at or finished) - started),
                    # Not a time: the characters the fused answer was cut at (output cap), if it was.
                    **({"final_truncated_at": self._final_truncated_at} if self._final_truncated_at else {}),
                },
                sources=self._run_sources(),
                tool_usage=self._tool_usage(),
            )
        )

    # ----------------------------------------------------------------------- panel

    def _start_member(self, member: _Member) -> None:
        member.attempt += 1
        member.finished = False
        member.content = None
        member.error = None
        member.reset_research()
        record = CallRecord(role="panel", model=member.spec.model, slot=member.slot)
        self._records.append(record)
        task = asyncio.create_task(self._run_member(member, record), name=f"fusion-member-{member.slot}")
        member.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _complete_from_reuse(self, member: _Member, content: str) -> None:
        # No call is made, so the record stays out of the run's records and totals.
        member.attempt = 1
        member.finished = True
        member.content = content
        member.add_sources(self._reuse_sources.get(member.slot) or [])
        record = CallRecord(role="panel", model=member.spec.model, status="complete", duration_ms=0, slot=member.slot)
        self._emit(
            PanelCompleted(
                slot=member.slot, model=member.spec.model, content=content, record=record, sources=list(member.sources)
            )
        )

    async def _run_member(self, member: _Member, record: CallRecord) -> None:
        record.status = "running"
        started = time.monotonic()
        slot, model = member.slot, member.spec.model
        base_messages = (self.request.member_messages or {}).get(slot) or self.request.messages
        content: list[str] = []
        finish: str | None = None
        error: ProviderError | None = None
        partial_text = ""
        mode, note = self._tool_mode(member)
        if note:
            self._emit(PanelNote(slot=slot, model=model, message=note))
        try:
            spec = self._member_spec(member.spec, mode)
            messages = list(base_messages)
            budget = self.request.research.budget if self.request.research else 0
            usage = Usage()
            tool_choice_none = False  # the budget is spent: tools stay declared but unusable
            bare = False  # a model ignored tool_choice "none": last turn without tools at all
            while True:
                kwargs = self._tool_kwargs(mode, tool_choice_none, bare)
                turn = await self._stream_turn(member, record, started, spec, messages, kwargs, content, usage)
                usage.add(turn.usage)
                record.usage = _copy_usage(usage)
                if mode == "server":
                    self._server_research(member, turn)
                if turn.error is not None:
                    if mode != "none" and member.tool_calls_made == 0 and not content and _lacks_tool_support(turn.error):
                        # Once, before anything was shown: the same member without tools.
                        mode, spec, messages = "none", member.spec, list(base_messages)
                        self._emit(PanelNote(slot=slot, model=model, message=NO_TOOLS_NOTE))
                        continue
                    error, partial_text = turn.error, turn.partial_text
                    break
                if turn.truncated_at is not None:
                    # Cut at the output cap: the text so far is the answer; no tool call is run.
                    finish = turn.finish
                    self._emit(PanelNote(slot=slot, model=model, message=truncation_note(turn.truncated_at)))
                    break
                if mode != "local" or not turn.tool_calls or bare:
                    finish = turn.finish
                    break
                calls = [turn.tool_calls[i] for i in sorted(turn.tool_calls)]
                text = "".join(turn.text)
                if tool_choice_none:
                    if text.strip():  # it answered after all: that is the answer
                        finish = "stop"
                        break
                    messages += self._unrun_calls(member, calls, text, budget)
                    bare = True
                    continue
                messages += await self._run_tools(member, calls, text, budget)
                if member.tool_calls_made >= budget:
                    tool_choice_none = True
        except asyncio.CancelledError:
            # Stopped, skipped or the whole run cancelled. An answer that had already finished
            # (cancel landed while the stream was closing) still counts.
            if finish is None and error is None:
                error = ProviderError(kind="cancelled", message=member.stop_message)
            self._settle_member(member, record, started, "".join(content) or partial_text, finish, error)
            raise
        except Exception:
            log.exception("Panel member %s crashed while streaming", model)
            error = ProviderError(kind="upstream_error", message="Internal error while reading this model's answer.")
        self._settle_member(member, record, started, "".join(content) or partial_text, finish, error)

    async def _stream_turn(
        self,
        member: _Member,
        record: CallRecord,
        started: float,
        spec: ModelSpec,
        messages: list[Message],
        kwargs: dict[str, Any],
        content: list[str],
        usage_before: Usage,
    ) -> _Turn:
        """Stream one call; its content continues the member's text (``content``)."""
        slot, model = member.slot, member.spec.model
        turn = _Turn()
        unreported = _Unreported(record, spec, messages)
        async with aclosing(self.client.stream(spec, messages, **kwargs)) as stream:
            async for event in stream:
                unreported.take(event)
                if isinstance(event, (ContentDelta, ReasoningDelta, ToolCallDelta)) and record.ttft_ms is None:
                    record.ttft_ms = _ms(time.monotonic() - started)
                if isinstance(event, ContentDelta) and event.text:
                    if not turn.text and content:
                        # A later turn: keep it apart from what the member wrote before its tool calls.
                        gap = _paragraph_gap("".join(content))
                        if gap:
                            content.append(gap)
                            self._emit(PanelDelta(slot=slot, model=model, delta=gap))
                    turn.text.append(event.text)
                    content.append(event.text)
                    self._emit(PanelDelta(slot=slot, model=model, delta=event.text))
                elif isinstance(event, ReasoningDelta) and event.text:
                    self._emit(PanelReasoningDelta(slot=slot, model=model, delta=event.text))
                elif isinstance(event, ToolCallDelta):
                    call = turn.tool_calls.setdefault(event.index, ToolCall(index=event.index))
                    call.id = call.id or event.id
                    call.name = call.name or event.name or ""
                    call.arguments += event.arguments or ""
                elif isinstance(event, UsageReport):
                    turn.usage = event.usage
                    record.usage = _copy_usage(usage_before, event.usage)
                elif isinstance(event, Finish):
                    turn.finish, record.malformed_chunks = event.reason, event.malformed_chunks
                    turn.truncated_at = event.truncated_at
                elif isinstance(event, StreamError):
                    turn.error, turn.partial_text = event.error, event.partial_text
                    record.malformed_chunks = event.malformed_chunks
                elif isinstance(event, SourcesReport):
                    turn.citations += event.citations
                    for key, value in (event.server_tool_use or {}).items():
                        turn.server_tool_use[key] = turn.server_tool_use.get(key, 0) + value
        return turn

    # ----------------------------------------------------------------------- research

    def _tool_mode(self, member: _Member) -> tuple[str, str | None]:
        """("none" | "local" | "server", a note for the user or None)."""
        research = self.request.research
        if research is None or not research.web_tools:
            return "none", None
        if member.spec.model in self._no_tool_models:
            return "none", NO_TOOLS_NOTE
        if research.server_tools and self._is_openrouter(member.spec.model):
            return "server", None
        if self.tools is not None and list(getattr(self.tools, "available", None) or []):
            return "local", None
        return "none", None

    def _is_openrouter(self, model: str) -> bool:
        registry = getattr(self.client, "registry", None)
        try:
            provider, _ = registry.resolve(model)  # type: ignore[union-attr]
        except (AttributeError, ValueError, KeyError, TypeError):
            return False
        return provider.name == "openrouter" or "openrouter.ai" in (provider.base_url or "")

    def _member_spec(self, spec: ModelSpec, mode: str) -> ModelSpec:
        """The member's spec with a short note on the tools it has (and how to cite)."""
        if mode == "local":
            names = list(self.tools.available)
            described = {
                "web_search": "web_search(query) searches the web",
                "web_fetch": "web_fetch(url) reads one page",
            }
            tools = "; ".join(described.get(n, n) for n in names)
        elif mode == "server":
            tools = "web search and web page fetching are available as tools"
        else:
            return spec
        guidance = prompts.MEMBER_TOOLS_GUIDANCE.format(tools=tools)
        system = f"{spec.system_prompt}\n\n{guidance}" if spec.system_prompt else guidance
        return replace(spec, system_prompt=system)

    def _tool_kwargs(self, mode: str, tool_choice_none: bool, bare: bool) -> dict[str, Any]:
        if mode == "server":
            return {"tools": self._server_tool_defs()}
        if mode != "local" or bare:
            return {}
        kwargs: dict[str, Any] = {"tools": self.tools.tool_schemas()}
        if tool_choice_none:
            kwargs["tool_choice"] = "none"
        return kwargs

    def _server_tool_defs(self) -> list[dict[str, Any]]:
        research = self.request.research
        assert research is not None
        search: dict[str, Any] = {"max_uses": research.budget}
        if research.allowed_domains:  # OpenRouter takes one of allowed / excluded
            search["allowed_domains"] = list(research.allowed_domains)
        elif research.excluded_domains:
            search["excluded_domains"] = list(research.excluded_domains)
        fetch: dict[str, Any] = {"max_uses": research.budget}
        if research.allowed_domains:
            fetch["allowed_domains"] = list(research.allowed_domains)
        if research.blocked_domains:
            fetch["blocked_domains"] = list(research.blocked_domains)
        return [
            {"type": "openrouter:web_search", "parameters": search},
            {"type": "openrouter:web_fetch", "parameters": fetch},
        ]

    def _server_research(self, member: _Member, turn: _Turn) -> None:
        """OpenRouter ran the tools: its citations and counts become the usual events."""
        if not turn.citations and not turn.server_tool_use:
            return
        for key, value in turn.server_tool_use.items():
            member.server_tool_use[key] = member.server_tool_use.get(key, 0) + value
        sources = member.add_sources([{**c, "kind": "citation"} for c in turn.citations])
        searches = turn.server_tool_use.get("web_search_requests") or turn.server_tool_use.get("tool_calls_executed") or 0
        member.tool_calls_made += 1
        call_id = f"server_{member.slot}_{member.tool_calls_made}"
        name = "openrouter:web_search"
        parts = []
        if searches:
            parts.append(f"OpenRouter ran {searches} web search{'es' if searches != 1 else ''}")
        else:
            parts.append("OpenRouter's web tools were used")
        parts.append(f"{len(sources)} source{'s' if len(sources) != 1 else ''} cited")
        slot, model = member.slot, member.spec.model
        self._emit(PanelToolStarted(slot=slot, model=model, call_id=call_id, name=name, arguments={}))
        self._emit(
            PanelToolFinished(
                slot=slot, model=model, call_id=call_id, name=name, ok=True, summary="; ".join(parts), sources=sources
            )
        )

    async def _run_tools(self, member: _Member, calls: list[ToolCall], text: str, budget: int) -> list[Message]:
        """Execute a turn's tool calls concurrently (within the budget); the messages to append."""
        allowed = max(0, budget - member.tool_calls_made)
        ids = self._call_ids(member, calls)
        run_now = calls[:allowed]
        member.tool_calls_made += len(run_now)
        results = await asyncio.gather(*(self._run_tool(member, call, ids[i]) for i, call in enumerate(run_now)))
        spent = BUDGET_SPENT_REPLY.format(n=budget)
        replies = list(results) + [spent] * (len(calls) - len(run_now))
        return [
            _assistant_tool_message(text, calls, ids),
            *({"role": "tool", "tool_call_id": ids[i], "content": replies[i]} for i in range(len(calls))),
        ]

    def _unrun_calls(self, member: _Member, calls: list[ToolCall], text: str, budget: int) -> list[Message]:
        ids = self._call_ids(member, calls)
        spent = BUDGET_SPENT_REPLY.format(n=budget)
        return [
            _assistant_tool_message(text, calls, ids),
            *({"role": "tool", "tool_call_id": ids[i], "content": spent} for i in range(len(calls))),
        ]

    def _call_ids(self, member: _Member, calls: list[ToolCall]) -> list[str]:
        ids = []
        for call in calls:
            member.tool_call_seq += 1
            ids.append(call.id or f"call_{member.slot}_{member.tool_call_seq}")
        return ids

    async def _run_tool(self, member: _Member, call: ToolCall, call_id: str) -> str:
        """One tool call, as events; returns what the model reads. Never raises (except cancel)."""
        slot, model = member.slot, member.spec.model
        name = call.name or ""
        self._emit(PanelToolStarted(slot=slot, model=model, call_id=call_id, name=name, arguments=_parse_arguments(call.arguments)))
        available = list(getattr(self.tools, "available", None) or [])
        try:
            if name not in available:
                offered = ", ".join(available) or "none"
                outcome: Any = _Outcome(False, f"error: unknown tool {name[:60]!r} (available: {offered})", f"unknown tool {name[:60]!r}")
            else:
                outcome = await self.tools.call(name, call.arguments or "{}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Tool %s of %s crashed", name, model)
            outcome = _Outcome(False, "error: the tool failed internally", "internal error")
        if name == "web_search":
            member.searches += 1
        elif name == "web_fetch":
            member.fetches += 1
        sources = member.add_sources([_source_dict(s) for s in (getattr(outcome, "sources", None) or [])])
        ok = bool(getattr(outcome, "ok", False))
        summary = str(getattr(outcome, "summary", "") or ("done" if ok else "failed"))
        self._emit(
            PanelToolFinished(slot=slot, model=model, call_id=call_id, name=name, ok=ok, summary=summary, sources=sources)
        )
        return str(getattr(outcome, "content_for_model", "") or summary)

    def _run_sources(self) -> list[dict[str, Any]]:
        """Every member's sources, deduplicated over the run: [{url, title, members}]."""
        merged: dict[str, dict[str, Any]] = {}
        for member in self._members:
            for source in member.sources:
                entry = merged.setdefault(source["url"], {"url": source["url"], "title": "", "members": []})
                entry["title"] = entry["title"] or source.get("title") or ""
                if member.model_id not in entry["members"]:
                    entry["members"].append(member.model_id)
        analyst = f"analyst:{self.request.analyst.model}"
        for source in self._analyst_sources:
            entry = merged.setdefault(source["url"], {"url": source["url"], "title": "", "members": []})
            entry["title"] = entry["title"] or source.get("title") or ""
            if analyst not in entry["members"]:
                entry["members"].append(analyst)
        return list(merged.values())

    def _tool_usage(self) -> dict[str, Any]:
        server: dict[str, int] = {}
        for member in self._members:
            for key, value in member.server_tool_use.items():
                server[key] = server.get(key, 0) + value
        return {
            "searches": sum(m.searches for m in self._members) + self._analyst_searches,
            "fetches": sum(m.fetches for m in self._members) + self._analyst_fetches,
            "server_tool_use": server,
        }

    def _settle_member(
        self,
        member: _Member,
        record: CallRecord,
        started: float,
        text: str,
        finish: str | None,
        error: ProviderError | None,
    ) -> None:
        error = _outcome_error(text, finish, error)
        _close_record(record, started, error)
        slot, model = member.slot, member.spec.model
        sources = list(member.sources)
        if error is None:
            member.content = text
            self._emit(PanelCompleted(slot=slot, model=model, content=text, record=record, sources=sources))
        else:
            member.error = error
            self._emit(
                PanelFailed(slot=slot, model=model, error=error, partial_content=text, record=record, sources=sources)
            )
        member.finished = True
        self._wake.set()

    async def _wait_for_panel(self) -> None:
        # Re-checked after every wake-up: a retry may have restarted a member meanwhile.
        while True:
            self._wake.clear()
            if all(m.finished for m in self._members):
                return
            await self._wake.wait()

    def _running_member(self, slot: int) -> _Member | None:
        if self._phase != "panel" or not 0 <= slot < len(self._members):
            return None
        member = self._members[slot]
        if member.finished or member.task is None or member.task.done():
            return None
        return member

    def _all_panels_failed(self) -> RunFailed:
        errors = [m.error for m in self._members if m.error is not None]
        kinds = {e.kind for e in errors}
        kind = _PANEL_FAILURE_KINDS.get(kinds.pop(), "all_panels_failed") if len(kinds) == 1 else "all_panels_failed"
        if kind == "cancelled":
            message = "Every panel model was stopped before it answered, so there is nothing to fuse."
        elif kind != "all_panels_failed":
            message = f"Every panel model failed: {ERROR_MESSAGES[errors[0].kind]}"
        else:
            details = "; ".join(f"{m.model_id}: {_clause(m.error.message)}" for m in self._members if m.error)
            message = f"Every panel model failed, so there is nothing to fuse. {details}."
        return self._run_failed(kind, message)

    def _failed_models(self) -> list[str]:
        return [m.model_id for m in self._members if m.content is None]

    # ----------------------------------------------------------------------- analysis

    async def _analyse(self, answers: list[tuple[str, str]]) -> _AnalysisOutcome:
        if self._reuse_analysis is not None:
            # Same analysis, but this run made no analyst call: no records to count again.
            event = replace(self._reuse_analysis, records=[])
            self._emit(event)
            return _AnalysisOutcome(event=event)

        records: list[CallRecord] = []
        problems: list[str] = []
        analysts = [self.request.analyst]
        if self.request.fallback_analyst is not None:
            analysts.append(self.request.fallback_analyst)
        for spec in analysts:
            self._emit(AnalysisStarted(analyst_model=spec.model))
            result = await self._try_analyst(spec, answers, records)
            if isinstance(result, str):
                problems.append(result)
                continue
            parsed, label_map = result
            event = AnalysisCompleted(
                analyst_model=spec.model,
                analysis=parsed.analysis,
                label_map=label_map,
                records=list(records),
                notes=parsed.notes,
            )
            self._emit(event)
            return _AnalysisOutcome(event=event)

        reason = "No analysis is available: " + "; ".join(problems) + "."
        self._emit(AnalysisDegraded(reason=reason, records=list(records)))
        return _AnalysisOutcome(degraded_reason=reason)

    async def _try_analyst(
        self, spec: ModelSpec, answers: list[tuple[str, str]], records: list[CallRecord]
    ) -> tuple[ParsedAnalysis, dict[str, str]] | str:
        """The parsed analysis and its label map, or a sentence fragment saying why there is none."""
        # A fresh shuffle per analyst, so position bias does not repeat in the fallback.
        labelled = assign_labels(answers, self._rng)
        label_map = label_map_of(labelled)
        messages = prompts.analyst_messages(
            system_extra=spec.system_prompt,
            previous_turns=self._previous_turns(),
            answers=labelled,
            question=self.request.question,
        )
        call_spec = replace(spec, temperature=0.0, system_prompt=None)
        response_format = self._response_format(spec.model)

        first, messages = await self._analyst_first_call(call_spec, messages, records, response_format)
        if first.error is not None:
            return f"the analyst {spec.model} failed ({_clause(first.error.message)})"
        try:
            return parse_analysis(first.text, label_map), label_map
        except AnalysisError as exc:
            first_problem = _clause(str(exc))
            _mark_invalid(first.record, first_problem)

        # One repair attempt: show the model its output and what is wrong with it.
        repair = await self._complete(
            "analyst", call_spec, prompts.repair_messages(messages, first.text, first_problem), records, response_format
        )
        if repair.error is not None:
            return (
                f"the analyst {spec.model} returned invalid JSON ({first_problem}) "
                f"and the repair attempt failed ({_clause(repair.error.message)})"
            )
        try:
            return parse_analysis(repair.text, label_map), label_map
        except AnalysisError as exc:
            _mark_invalid(repair.record, _clause(str(exc)))
            return f"the analyst {spec.model} returned invalid JSON twice (last problem: {_clause(str(exc))})"

    async def _analyst_first_call(
        self, spec: ModelSpec, messages: list[Message], records: list[CallRecord], response_format: dict[str, Any] | None
    ) -> tuple[_CallResult, list[Message]]:
        """The analyst's answer, after it checked claims with the web tools if research allows it.

        With ``research.analyst_tools`` the analyst may call the tools up to the members' budget;
        its final turn (tools refused with tool_choice "none" once the budget is spent) is the
        JSON. Returns the call and the messages it was made with (the repair prompt builds on them).
        """
        research = self.request.research
        available = list(getattr(self.tools, "available", None) or [])
        if research is None or not research.web_tools or not research.analyst_tools or not available:
            return await self._complete("analyst", spec, messages, records, response_format), messages
        schemas = self.tools.tool_schemas()
        messages = list(messages)
        used, budget = 0, research.budget
        while True:
            spent = used >= budget
            result = await self._complete(
                "analyst", spec, messages, records, None, tools=schemas, tool_choice="none" if spent else None
            )
            if result.error is not None or not result.tool_calls or spent:
                return result, messages
            calls = result.tool_calls[: budget - used]
            ids = [call.id or f"call_analyst_{used + i + 1}" for i, call in enumerate(calls)]
            used += len(calls)
            replies = await asyncio.gather(*(self._analyst_tool(call) for call in calls))
            messages += [
                _assistant_tool_message(result.text, calls, ids),
                *({"role": "tool", "tool_call_id": ids[i], "content": replies[i]} for i in range(len(calls))),
            ]

    async def _analyst_tool(self, call: ToolCall) -> str:
        name = call.name or ""
        try:
            outcome = await self.tools.call(name, call.arguments or "{}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Tool %s of the analyst crashed", name)
            return "error: the tool failed internally"
        if name == "web_search":
            self._analyst_searches += 1
        elif name == "web_fetch":
            self._analyst_fetches += 1
        self._analyst_sources += [_source_dict(src) for src in (getattr(outcome, "sources", None) or [])]
        return str(getattr(outcome, "content_for_model", "") or getattr(outcome, "summary", ""))

    async def _complete(
        self,
        role: str,
        spec: ModelSpec,
        messages: list[Message],
        records: list[CallRecord],
        response_format: dict[str, Any] | None,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> _CallResult:
        record = CallRecord(role=role, model=spec.model, status="running")
        self._records.append(record)
        records.append(record)
        started = time.monotonic()
        record.prompt_chars = _prompt_chars(spec, messages)  # until the provider reports the usage
        try:
            extra = {"tools": tools, "tool_choice": tool_choice} if tools else {}
            completion = await self.client.complete(spec, messages, response_format=response_format, **extra)
        except asyncio.CancelledError:
            _close_record(record, started, ProviderError(kind="cancelled", message=RUN_CANCELLED_MESSAGE))
            raise
        except Exception:
            log.exception("%s call to %s crashed", role, spec.model)
            error = ProviderError(kind="upstream_error", message="Internal error while calling this model.")
            _close_record(record, started, error)
            return _CallResult(record, error=error)

        error = completion.error
        if error is None and completion.finish_reason == "content_filter":
            error = ProviderError(kind="moderation", message=ERROR_MESSAGES["moderation"])
        record.usage = completion.usage
        if completion.usage != Usage() or (error is not None and not completion.text and _unbilled(error)):
            record.prompt_chars = 0
        else:
            record.streamed_chars = len(completion.text or "") + len(completion.reasoning or "")
        record.ttft_ms = completion.ttft_ms
        record.malformed_chunks = completion.malformed_chunks
        _close_record(record, started, error)
        return _CallResult(record, text=completion.text or "", error=error,
                           tool_calls=list(getattr(completion, "tool_calls", None) or []))

    def _response_format(self, model: str) -> dict[str, Any] | None:
        """JSON mode when the provider serving ``model`` accepts it."""
        registry = getattr(self.client, "registry", None)
        try:
            provider, _ = registry.resolve(model)  # type: ignore[union-attr]
        except (AttributeError, ValueError, KeyError, TypeError):
            return None  # unknown provider: the call itself will report the problem
        return {"type": "json_object"} if getattr(provider, "supports_response_format", False) else None

    # ----------------------------------------------------------------------- synthesis

    async def _synthesise(
        self, answers: list[tuple[str, str]], outcome: _AnalysisOutcome
    ) -> tuple[str | None, list[str]]:
        """The fused answer (or None) and, when it failed, why each writer failed."""
        request = self.request
        system_texts = [m.get("content") for m in request.messages if m.get("role") == "system"]
        writers = [request.writer]
        if request.fallback_writer is not None:
            writers.append(request.fallback_writer)
        problems: list[str] = []
        for spec in writers:
            extra = "\n\n".join(str(t) for t in [spec.system_prompt, *system_texts] if t)
            messages = prompts.writer_messages(
                system_extra=extra or None,
                previous_turns=self._previous_turns(),
                question=request.question,
                answers=answers,
                analysis=outcome.event.analysis if outcome.event else None,
                degraded_reason=outcome.degraded_reason,
            )
            self._emit(FinalStarted(writer_model=spec.model))
            text, error = await self._stream_writer(replace(spec, system_prompt=None), messages)
            if error is None:
                return text, []
            problems.append(f"The writer {spec.model} failed: {_clause(error.message)}.")
        return None, problems

    async def _stream_writer(self, spec: ModelSpec, messages: list[Message]) -> tuple[str, ProviderError | None]:
        record = CallRecord(role="writer", model=spec.model, status="running")
        self._records.append(record)
        started = time.monotonic()
        content: list[str] = []
        finish: str | None = None
        error: ProviderError | None = None
        unreported = _Unreported(record, spec, messages)
        try:
            async with aclosing(self.client.stream(spec, messages)) as stream:
                async for event in stream:
                    unreported.take(event)
                    if isinstance(event, (ContentDelta, ReasoningDelta)) and record.ttft_ms is None:
                        record.ttft_ms = _ms(time.monotonic() - started)
                    if isinstance(event, ContentDelta) and event.text:
                        if self._first_final_delta_at is None:
                            self._first_final_delta_at = time.monotonic()
                        content.append(event.text)
                        self._emit(FinalDelta(delta=event.text))
                    elif isinstance(event, UsageReport):
                        record.usage = event.usage
                    elif isinstance(event, Finish):
                        finish, record.malformed_chunks = event.reason, event.malformed_chunks
                        self._final_truncated_at = event.truncated_at
                    elif isinstance(event, StreamError):
                        error, record.malformed_chunks = event.error, event.malformed_chunks
        except asyncio.CancelledError:
            _close_record(record, started, ProviderError(kind="cancelled", message=RUN_CANCELLED_MESSAGE))
            raise
        except Exception:
            log.exception("Writer %s crashed while streaming", spec.model)
            error = ProviderError(kind="upstream_error", message="Internal error while reading the writer's answer.")
        text = "".join(content)
        error = _outcome_error(text, finish, error)
        _close_record(record, started, error)
        return text, error

    # ----------------------------------------------------------------------- helpers

    def _emit(self, event: PipelineEvent | _Crash) -> None:
        self._queue.put_nowait(event)

    def _previous_turns(self) -> list[Message]:
        """User and assistant turns before the current question (the question is restated)."""
        messages = self.request.messages
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
        return [dict(m) for m in messages[:last_user] if m.get("role") in ("user", "assistant")]

    def _total_usage(self) -> Usage:
        total = Usage()
        for record in self._records:
            total.add(record.usage)
        return total

    def _run_failed(self, kind: str, message: str) -> RunFailed:
        return RunFailed(
            kind=kind,
            message=message,
            failed_models=self._failed_models() if self._phase != "pending" else [],
            records=list(self._records),
            usage=self._total_usage(),
        )

    async def _cancel_children(self) -> None:
        tasks = [task for task in self._tasks if not task.done()]
        for member in self._members:
            if member.task in tasks:
                member.stop_message = RUN_CANCELLED_MESSAGE
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


async def run_fusion(request: FusionRequest, client: Any, **kwargs: Any) -> AsyncIterator[PipelineEvent]:
    """``FusionRun(request, client, **kwargs).events()``, for callers that need no controls."""
    async with aclosing(FusionRun(request, client, **kwargs).events()) as events:
        async for event in events:
            yield event


# --------------------------------------------------------------------------- module helpers


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _outcome_error(text: str, finish: str | None, error: ProviderError | None) -> ProviderError | None:
    """Why a streamed call produced no usable answer, or None when it did."""
    if error is not None:
        return error
    if finish is None:
        return ProviderError(kind="incomplete", message=ERROR_MESSAGES["incomplete"])
    if finish == "content_filter":
        return ProviderError(kind="moderation", message=ERROR_MESSAGES["moderation"])
    if not text.strip():
        return ProviderError(kind="empty", message=ERROR_MESSAGES["empty"])
    return None


def normalise_url(url: str) -> str:
    """The URL a source is known by: http(s) only, host lowercased, no userinfo, no fragment,
    no default port; "" when it is not a usable web URL."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _source_dict(source: Any) -> dict[str, str]:
    """A tools.Source (or a dict) as {url, title, kind}."""
    if isinstance(source, dict):
        get = source.get
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(source, key, default)
    return {"url": str(get("url", "") or ""), "title": str(get("title", "") or "")[:300], "kind": str(get("kind", "") or "")}


def _parse_arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"raw": (text or "")[:500]}
    return value if isinstance(value, dict) else {"raw": (text or "")[:500]}


def _assistant_tool_message(text: str, calls: list[ToolCall], ids: list[str]) -> Message:
    return {
        "role": "assistant",
        # null rather than "": some providers reject an empty text block.
        "content": text or None,
        "tool_calls": [
            {"id": ids[i], "type": "function", "function": {"name": call.name, "arguments": call.arguments or "{}"}}
            for i, call in enumerate(calls)
        ],
    }


def _lacks_tool_support(error: ProviderError) -> bool:
    """The provider refused the request because this model cannot take tools."""
    if error.kind not in ("bad_request", "model_not_found", "upstream_error") and error.status_code not in (400, 404, 422):
        return False
    return bool(_NO_TOOL_SUPPORT.search(error.message or ""))


def _prompt_chars(spec: ModelSpec, messages: list[Message]) -> int:
    """Characters of the messages one request sends (the client adds the spec's system prompt)."""
    return len(spec.system_prompt or "") + sum(len(str(m.get("content") or "")) for m in messages)


class _Unreported:
    """Counts one request's characters into ``record.prompt_chars``/``streamed_chars`` as they go,
    and takes them back when the provider reports the request's usage: a stream cut by a stop
    or an error keeps what its cost is estimated from."""

    def __init__(self, record: CallRecord, spec: ModelSpec, messages: list[Message]) -> None:
        self.record, self.prompt, self.streamed = record, _prompt_chars(spec, messages), 0
        record.prompt_chars += self.prompt

    def take(self, event: Any) -> None:
        if isinstance(event, (ContentDelta, ReasoningDelta)):
            self.streamed += len(event.text)
            self.record.streamed_chars += len(event.text)
        elif isinstance(event, UsageReport) or (isinstance(event, StreamError) and not self.streamed and _unbilled(event.error)):
            # Reported, or refused before any output: nothing of this request is left to estimate.
            self.record.prompt_chars -= self.prompt
            self.record.streamed_chars -= self.streamed
            self.prompt = self.streamed = 0


def _unbilled(error: ProviderError) -> bool:
    """A request the provider refused with an HTTP error, or never received: providers bill neither."""
    return error.status_code is not None or error.kind == "network"


def _copy_usage(*parts: Usage) -> Usage:
    total = Usage()
    for part in parts:
        total.add(part)
    return total


def _paragraph_gap(text: str) -> str:
    if not text.strip() or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


def _clause(message: str) -> str:
    """A message without its final full stop, to embed it in a longer sentence."""
    return message.strip().rstrip(".")


def _close_record(record: CallRecord, started: float, error: ProviderError | None) -> None:
    record.duration_ms = _ms(time.monotonic() - started)
    record.error = error
    if error is None:
        record.status = "complete"
    else:
        record.status = "cancelled" if error.kind == "cancelled" else "failed"


def _mark_invalid(record: CallRecord, problem: str) -> None:
    record.status = "failed"
    record.error = ProviderError(kind="invalid_output", message=f"Invalid analysis JSON: {problem}")
