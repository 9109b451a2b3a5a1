"""The fusion pipeline: panel → analysis → final answer, as one stream of typed events.

    run = FusionRun(request, client, tools=web_tools)
    async for event in run.events():
        ...
    # meanwhile, from any other task on the same event loop:
    run.stop_member(1); run.retry_member(1); run.fuse_now(); run.cancel()

This module owns the driver and the controls: validating the request, starting and waiting for
the panel's members, handing the answers to the analyst and the writer, and the run's one
terminal event. Each phase lives in its own module:

* ``member``   — one member's turn loop (streaming, tool calls, how it ends);
* ``research`` — the ``ToolRunner`` members and the analyst share, and the research log;
* ``analyst``  — the analysis with its repair attempt, fallback analyst and degraded mode;
* ``writer``   — the fused answer and the fallback writer;
* ``calls``    — what the phases share (``RunContext``) and each call's record.

It imports the engine only: no Django, no httpx, no database (``chat.runs`` drives it for the
site, ``manage.py fuse`` for the terminal).

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
* ``timings`` are milliseconds (``panel``, ``analysis``, ``synthesis`` — the final phase —,
  ``total``); ``final_ttft`` is measured from the start of the run, i.e. how long the user waited
  for the first word of the fused answer.

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
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from chat.fusion.analysis import distinct_model_ids
from chat.fusion.analyst import AnalysisOutcome, Analyst, Answers
from chat.fusion.calls import RUN_CANCELLED_MESSAGE, RunContext, clause
from chat.fusion.member import STOPPED_MESSAGE, Member, MemberRun
from chat.fusion.outer import Outer
from chat.fusion.research import ResearchLog
from chat.fusion.sources import merge_sources, run_sources
from chat.fusion.types import (
    ERROR_MESSAGES,
    MAX_PANEL_MEMBERS,
    MAX_TOKENS_LIMIT,
    AnalysisCompleted,
    CallRecord,
    Client,
    FusionRequest,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelFailed,
    PipelineEvent,
    ProviderError,
    RunCompleted,
    RunFailed,
    RunPhase,
    Tools,
    ms,
)
from chat.fusion.writer import Writer

# When every member failed the same way, the run fails that way too (a user can act on it).
_PANEL_FAILURE_KINDS = {
    "invalid_key": "invalid_key",
    "insufficient_credits": "insufficient_credits",
    "rate_limited": "rate_limited",
    "model_not_found": "invalid_model",
    "cancelled": "cancelled",
}

SKIPPED_MESSAGE = "Skipped by fuse now"

log = logging.getLogger(__name__)


def validate_request(request: FusionRequest) -> list[str]:
    """Every problem with the request, as sentences a user can act on; empty when it is valid."""
    problems: list[str] = []
    if not 1 <= len(request.panel) <= MAX_PANEL_MEMBERS:
        problems.append(f"The panel needs between 1 and {MAX_PANEL_MEMBERS} models (got {len(request.panel)}).")
    if not request.question.strip():
        problems.append("The question is empty.")

    roles = [(f"Panel model {i + 1}", spec) for i, spec in enumerate(request.panel)]
    roles += [("The analyst", request.analyst), ("The writer", request.writer)]
    if request.fallback_analyst:
        roles.append(("The fallback analyst", request.fallback_analyst))
    if request.fallback_writer:
        roles.append(("The fallback writer", request.fallback_writer))
    for role, spec in roles:
        problems += _spec_problems(role, spec)

    for slot in request.member_messages or {}:
        if not 0 <= slot < len(request.panel):
            problems.append(f"Messages were given for panel slot {slot}, which does not exist.")
    return problems


def _spec_problems(role: str, spec: ModelSpec) -> list[str]:
    problems = []
    if not spec.model or not spec.model.strip():
        problems.append(f"{role} has no model id.")
    if spec.temperature is not None and not 0 <= spec.temperature <= 2:
        problems.append(f"{role}: temperature must be between 0 and 2 (got {spec.temperature}).")
    if spec.max_tokens is not None and not 0 < spec.max_tokens <= MAX_TOKENS_LIMIT:
        problems.append(f"{role}: max tokens must be between 1 and {MAX_TOKENS_LIMIT} (got {spec.max_tokens}).")
    return problems


@dataclass
class _Crash:
    """A bug in the driver: events() re-raises it rather than ending quietly."""

    exc: BaseException


def _after_the_end(event: PipelineEvent) -> None:
    log.warning("an event after the run ended was dropped: %s", type(event).__name__)


class FusionRun:
    """One fusion run. Iterate ``events()`` once; call the controls from anywhere on the loop."""

    def __init__(
        self,
        request: FusionRequest,
        client: Client,
        *,
        reuse_answers: dict[int, str] | None = None,
        reuse_analysis: AnalysisCompleted | None = None,
        rng: random.Random | None = None,
        tools: Tools | None = None,
        no_tool_models: set[str] | frozenset[str] | None = None,
        reuse_sources: dict[int, list[dict[str, str]]] | None = None,
        carry_over: dict[int, ProviderError] | None = None,
        carry_over_text: dict[int, str] | None = None,
        panel_only: bool = False,
    ) -> None:
        """``tools``: a ``chat.fusion.tools.WebTools``, used when ``request.research.web_tools``
        is on. ``no_tool_models``: model ids known (catalogue) not to support tools.
        ``reuse_answers`` / ``reuse_sources``: answers (and their sources) of slots that are not
        asked again; ``reuse_analysis``: an analysis to use instead of calling the analyst.
        ``carry_over`` (with its partial ``carry_over_text``): slots that ended without an answer
        in an earlier run and are not asked again; they end at once with that error (no call).
        ``panel_only``: end after the panel (a member retried alone): no analysis, no answer."""
        for slot in [*(reuse_answers or {}), *(carry_over or {})]:
            if not 0 <= slot < len(request.panel):
                raise ValueError(f"reuse_answers names slot {slot}, but the panel has {len(request.panel)}.")
        self.request = request
        self.client = client
        self.tools = tools
        self._reuse_answers = dict(reuse_answers or {})
        self._reuse_sources = dict(reuse_sources or {})
        self._carry_over = dict(carry_over or {})
        self._carry_over_text = dict(carry_over_text or {})
        self._panel_only = panel_only
        self._no_tool_models = frozenset(no_tool_models or ())

        ids = distinct_model_ids([spec.model for spec in request.panel])
        self._members = [Member(slot=i, spec=spec, model_id=ids[i]) for i, spec in enumerate(request.panel)]
        self._queue: asyncio.Queue[PipelineEvent | _Crash] = asyncio.Queue()
        # A consumer that can apply some events at once, in the task that emits them, sets this
        # (chat.runs.live: a delta's text), which saves a wake-up of the consumer per event. It
        # returns True when it took the event, and is asked only while nothing waits in the
        # queue, so the consumer still sees every event once and in order.
        self.sink: Callable[[PipelineEvent], bool] | None = None
        self._ctx = RunContext(request=request, client=client, tools=tools, emit=self._emit)
        self._analyst_research = ResearchLog()  # what the analyst looked up (no card of its own)
        self._analyst = Analyst(self._ctx, rng or random.Random(), self._analyst_research, reuse=reuse_analysis)
        self._writer = Writer(self._ctx)
        self._wake = asyncio.Event()  # set whenever a member settles
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._phase: RunPhase | None = None  # None until the run starts: panel → analysis → final → done
        self._started = False
        self._fusing = False
        self._cancel_requested = False
        self._panel_asked = True  # False while an outer model has not called fusion

    def _emit(self, event: PipelineEvent) -> None:
        sink = self.sink
        if sink is not None and self._queue.empty() and sink(event):
            return
        self._queue.put_nowait(event)

    # ----------------------------------------------------------------------- public API

    async def events(self) -> AsyncGenerator[PipelineEvent, None]:
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
            # Nothing emits after the end. The sink and the phases' emit are bound methods that
            # hold the run in cycles: dropped, the run's objects (streams, calls, analysis) are
            # freed with the last reference to it, not at the next full garbage collection.
            self.sink = None
            self._ctx.emit = _after_the_end
            for member in self._members:  # a cancelled task's traceback holds this run's frames
                member.task = None

    def stop_member(self, slot: int) -> bool:
        """Stop one running member; it ends with PanelFailed(kind="cancelled")."""
        task = self._running_task(slot)
        if task is None:
            return False
        self._members[slot].stop_message = STOPPED_MESSAGE
        task.cancel()
        return True

    def retry_member(self, slot: int) -> bool:
        """During the panel phase, restart a member that failed or was stopped."""
        if self._phase is not RunPhase.PANEL or self._fusing or not 0 <= slot < len(self._members):
            return False
        member = self._members[slot]
        if not member.finished or member.content is not None:
            return False
        self._ctx.emit(PanelAdded(slot=slot, model=member.spec.model, attempt=member.attempt + 1))
        self._start_member(member)
        return True

    def fuse_now(self) -> bool:
        """Stop waiting for the panel: skip running members and analyse the answers so far.

        Refused (False) before any member has completed, since there would be nothing to fuse.
        """
        if self._phase is not RunPhase.PANEL or not any(m.content is not None for m in self._members):
            return False
        self._fusing = True
        for member in self._members:
            task = self._running_task(member.slot)
            if task is not None:
                member.stop_message = SKIPPED_MESSAGE
                task.cancel()
        return True

    def cancel(self) -> None:
        """Stop everything; events() then yields RunFailed(kind="cancelled") and ends."""
        if self._cancel_requested or self._phase is RunPhase.DONE:
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
            self._ctx.emit(self._run_failed("cancelled", RUN_CANCELLED_MESSAGE))
        except Exception as exc:  # a bug: surface it through events()
            await self._cancel_children()
            self._queue.put_nowait(_Crash(exc))
        finally:
            self._phase = RunPhase.DONE

    async def _run_phases(self) -> None:
        started = time.monotonic()
        problems = validate_request(self.request)
        if problems:
            self._ctx.emit(self._run_failed("invalid_request", "Invalid request: " + " ".join(problems)))
            return

        if self.request.outer is not None:
            await self._outer_phases(started)
            return
        self._phase = RunPhase.PANEL
        answers = await self._panel()
        panel_done = time.monotonic()
        self._phase = RunPhase.ANALYSIS
        if not answers:
            self._ctx.emit(self._all_panels_failed())
            return
        if self._panel_only:
            timings = {"panel": ms(panel_done - started), "total": ms(panel_done - started)}
            self._ctx.emit(self._completed("", AnalysisOutcome(), timings))
            return

        analysis = await self._analyst.analyse(answers)
        analysis_done = time.monotonic()
        self._phase = RunPhase.FINAL

        written = await self._writer.write(answers, analysis)
        finished = time.monotonic()
        if written.text is None:
            kept = "The panel answers and the analysis are kept." if analysis.event else "The panel answers are kept."
            self._ctx.emit(self._run_failed("writer_failed", " ".join([*written.problems, kept])))
            return
        timings = {
            "panel": ms(panel_done - started),
            "analysis": ms(analysis_done - panel_done),
            "synthesis": ms(finished - analysis_done),
            "total": ms(finished - started),
            "final_ttft": ms((self._writer.first_delta_at or finished) - started),
        }
        if self._writer.truncated_at:  # not a time: the characters the fused answer was cut at
            timings["final_truncated_at"] = self._writer.truncated_at
        self._ctx.emit(self._completed(written.text, analysis, timings))

    async def _outer_phases(self, started: float) -> None:
        """The server-tool shape (chat.fusion.outer): the panel runs only if the outer model calls it."""
        assert self.request.outer is not None
        self._phase = RunPhase.FINAL
        self._panel_asked = False
        analysis = AnalysisOutcome()

        async def fuse() -> dict[str, Any]:
            nonlocal analysis
            self._panel_asked = True
            self._phase = RunPhase.PANEL
            answers = await self._panel()
            self._phase = RunPhase.ANALYSIS
            if not answers:
                failed = self._all_panels_failed()
                item = {"type": "openrouter:fusion", "status": "incomplete", "failure_reason": failed.kind}
                self._phase = RunPhase.FINAL
                return {**item, "error": failed.message, "failed_models": self._failed_items()}
            analysis = await self._analyst.analyse(answers)
            self._phase = RunPhase.FINAL
            return self._tool_item(analysis)

        outer = Outer(self._ctx, self.request.writer, self.request.outer)
        result = await outer.run(fuse)
        finished = time.monotonic()
        if result.text is None:
            self._ctx.emit(self._run_failed("writer_failed", " ".join(result.problems)))
            return
        timings = {"total": ms(finished - started), "final_ttft": ms((result.first_delta_at or finished) - started)}
        if result.truncated_at:
            timings["final_truncated_at"] = result.truncated_at
        self._ctx.emit(self._completed(result.text, analysis, timings))

    def _tool_item(self, analysis: AnalysisOutcome) -> dict[str, Any]:
        """What the outer model reads: OpenRouter's OutputFusionServerToolItem."""
        item: dict[str, Any] = {
            "type": "openrouter:fusion",
            "status": "completed",
            "responses": [
                {"model": m.spec.model, "content": m.content} for m in self._members if m.content is not None
            ],
        }
        if analysis.analysis is not None:
            item["analysis"] = analysis.analysis
        else:
            item["error"] = (
                f"No analysis: {analysis.degraded_reason or 'the analyst failed'}. Compare the responses yourself."
            )
        failed = self._failed_items()
        if failed:
            item["failed_models"] = failed
        sources = [{"url": s["url"], "title": s.get("title") or s["url"]} for s in self._run_sources()]
        if sources:
            item["sources"] = sources
        return item

    def _failed_items(self) -> list[dict[str, Any]]:
        items = []
        for m in self._members:
            if m.content is None:
                item: dict[str, Any] = {"model": m.spec.model, "error": m.error.message if m.error else "No answer."}
                if m.error is not None and m.error.status_code is not None:
                    item["status_code"] = m.error.status_code
                items.append(item)
        return items

    def _completed(self, answer: str, analysis: AnalysisOutcome, timings: dict[str, int]) -> RunCompleted:
        return RunCompleted(
            answer=answer,
            analysis=analysis.analysis,
            analysis_error=analysis.degraded_reason,
            failed_models=self._failed_models(),
            records=list(self._ctx.records),
            usage=self._ctx.total_usage(),
            timings=timings,
            sources=self._run_sources(),
            tool_usage=self._tool_usage(),
        )

    # ----------------------------------------------------------------------- panel

    async def _panel(self) -> Answers:
        """Start every member (or serve it from ``reuse_answers``), wait for all; their answers."""
        for member in self._members:
            self._ctx.emit(PanelAdded(slot=member.slot, model=member.spec.model))
        for member in self._members:
            if member.slot in self._reuse_answers:
                self._complete_from_reuse(member, self._reuse_answers[member.slot])
            elif member.slot in self._carry_over:
                self._end_from_carry_over(member, self._carry_over[member.slot])
            else:
                self._start_member(member)
        # Re-checked after every wake-up: a retry may have restarted a member meanwhile.
        while True:
            self._wake.clear()
            if all(m.finished for m in self._members):
                break
            await self._wake.wait()
        return [(m.model_id, m.content) for m in self._members if m.content is not None]

    def _start_member(self, member: Member) -> None:
        member.restart()
        record = self._ctx.open_record("panel", member.spec.model, slot=member.slot, status="pending")
        attempt = MemberRun(self._ctx, member, record, no_tool_models=self._no_tool_models)
        task = asyncio.create_task(self._run_member(attempt), name=f"fusion-member-{member.slot}")
        member.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_member(self, attempt: MemberRun) -> None:
        try:
            await attempt.run()
        finally:
            self._wake.set()

    def _complete_from_reuse(self, member: Member, content: str) -> None:
        # No call is made, so the record stays out of the run's records and totals.
        member.attempt, member.finished, member.content = 1, True, content
        merge_sources(member.research.sources, self._reuse_sources.get(member.slot) or [])
        record = CallRecord(role="panel", model=member.spec.model, status="complete", duration_ms=0, slot=member.slot)
        self._ctx.emit(
            PanelCompleted(
                slot=member.slot,
                model=member.spec.model,
                content=content,
                record=record,
                sources=list(member.research.sources),
            )
        )

    def _end_from_carry_over(self, member: Member, error: ProviderError) -> None:
        # Not asked again: it ends as it ended before, without a call (a retry may still start it).
        member.attempt, member.finished, member.error = 1, True, error
        record = CallRecord(role="panel", model=member.spec.model, status="cancelled", duration_ms=0, slot=member.slot)
        text = self._carry_over_text.get(member.slot, "")
        self._ctx.emit(
            PanelFailed(slot=member.slot, model=member.spec.model, error=error, partial_content=text, record=record)
        )

    def _running_task(self, slot: int) -> asyncio.Task[None] | None:
        """The task of a member still running in the panel phase, or None."""
        if self._phase is not RunPhase.PANEL or not 0 <= slot < len(self._members):
            return None
        member = self._members[slot]
        if member.finished or member.task is None or member.task.done():
            return None
        return member.task

    def _all_panels_failed(self) -> RunFailed:
        errors = [m.error for m in self._members if m.error is not None]
        kinds = {e.kind for e in errors}
        kind = _PANEL_FAILURE_KINDS.get(kinds.pop(), "all_panels_failed") if len(kinds) == 1 else "all_panels_failed"
        if kind == "cancelled":
            message = "Every panel model was stopped before it answered, so there is nothing to fuse."
        elif kind != "all_panels_failed":
            message = f"Every panel model failed: {ERROR_MESSAGES[errors[0].kind]}"
        else:
            details = "; ".join(f"{m.model_id}: {clause(m.error.message)}" for m in self._members if m.error)
            message = f"Every panel model failed, so there is nothing to fuse. {details}."
        return self._run_failed(kind, message)

    def _failed_models(self) -> list[str]:
        if not self._panel_asked:  # the outer model answered without calling fusion
            return []
        return [m.model_id for m in self._members if m.content is None]

    # ----------------------------------------------------------------------- research totals

    def _run_sources(self) -> list[dict[str, Any]]:
        """Every member's sources and the analyst's, deduplicated over the run: [{url, title, members}]."""
        by_member = [(m.model_id, m.research.sources) for m in self._members]
        by_member.append((f"analyst:{self.request.analyst.model}", self._analyst_research.sources))
        return run_sources(by_member)

    def _tool_usage(self) -> dict[str, Any]:
        logs = [*(m.research for m in self._members), self._analyst_research]
        server: dict[str, int] = {}
        for log in logs:
            for key, value in log.server_tool_use.items():
                server[key] = server.get(key, 0) + value
        return {
            "searches": sum(log.searches for log in logs),
            "fetches": sum(log.fetches for log in logs),
            "server_tool_use": server,
        }

    # ----------------------------------------------------------------------- the end

    def _run_failed(self, kind: str, message: str) -> RunFailed:
        return RunFailed(
            kind=kind,
            message=message,
            failed_models=self._failed_models() if self._phase is not None else [],
            records=list(self._ctx.records),
            usage=self._ctx.total_usage(),
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


async def run_fusion(request: FusionRequest, client: Client, **kwargs: Any) -> AsyncGenerator[PipelineEvent, None]:
    """``FusionRun(request, client, **kwargs).events()``, for callers that need no controls."""
    async with aclosing(FusionRun(request, client, **kwargs).events()) as events:
        async for event in events:
            yield event
