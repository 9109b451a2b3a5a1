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
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

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
    PanelReasoningDelta,
    PipelineEvent,
    ProviderError,
    ReasoningDelta,
    RunCompleted,
    RunFailed,
    StreamError,
    Usage,
    UsageReport,
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
    ) -> None:
        for slot in reuse_answers or {}:
            if not 0 <= slot < len(request.panel):
                raise ValueError(f"reuse_answers names slot {slot}, but the panel has {len(request.panel)}.")
        self.request = request
        self.client = client
        self._reuse_answers = dict(reuse_answers or {})
        self._reuse_analysis = reuse_analysis
        self._rng = rng or random.Random()

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
                },
            )
        )

    # ----------------------------------------------------------------------- panel

    def _start_member(self, member: _Member) -> None:
        member.attempt += 1
        member.finished = False
        member.content = None
        member.error = None
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
        record = CallRecord(role="panel", model=member.spec.model, status="complete", duration_ms=0, slot=member.slot)
        self._emit(PanelCompleted(slot=member.slot, model=member.spec.model, content=content, record=record))

    async def _run_member(self, member: _Member, record: CallRecord) -> None:
        record.status = "running"
        started = time.monotonic()
        slot, model = member.slot, member.spec.model
        messages = (self.request.member_messages or {}).get(slot) or self.request.messages
        content: list[str] = []
        finish: str | None = None
        error: ProviderError | None = None
        partial_text = ""
        try:
            async with aclosing(self.client.stream(member.spec, messages)) as stream:
                async for event in stream:
                    if isinstance(event, (ContentDelta, ReasoningDelta)) and record.ttft_ms is None:
                        record.ttft_ms = _ms(time.monotonic() - started)
                    if isinstance(event, ContentDelta) and event.text:
                        content.append(event.text)
                        self._emit(PanelDelta(slot=slot, model=model, delta=event.text))
                    elif isinstance(event, ReasoningDelta) and event.text:
                        self._emit(PanelReasoningDelta(slot=slot, model=model, delta=event.text))
                    elif isinstance(event, UsageReport):
                        record.usage = event.usage
                    elif isinstance(event, Finish):
                        finish, record.malformed_chunks = event.reason, event.malformed_chunks
                    elif isinstance(event, StreamError):
                        error, partial_text = event.error, event.partial_text
                        record.malformed_chunks = event.malformed_chunks
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
        if error is None:
            member.content = text
            self._emit(PanelCompleted(slot=slot, model=model, content=text, record=record))
        else:
            member.error = error
            self._emit(PanelFailed(slot=slot, model=model, error=error, partial_content=text, record=record))
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

        first = await self._complete("analyst", call_spec, messages, records, response_format)
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

    async def _complete(
        self,
        role: str,
        spec: ModelSpec,
        messages: list[Message],
        records: list[CallRecord],
        response_format: dict[str, Any] | None,
    ) -> _CallResult:
        record = CallRecord(role=role, model=spec.model, status="running")
        self._records.append(record)
        records.append(record)
        started = time.monotonic()
        try:
            completion = await self.client.complete(spec, messages, response_format=response_format)
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
        record.ttft_ms = completion.ttft_ms
        record.malformed_chunks = completion.malformed_chunks
        _close_record(record, started, error)
        return _CallResult(record, text=completion.text or "", error=error)

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
        try:
            async with aclosing(self.client.stream(spec, messages)) as stream:
                async for event in stream:
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
