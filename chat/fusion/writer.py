"""The final phase: the writer streams the fused answer, and the fallback writer takes over.

Owns ``Writer.write``: build the writer's prompt from the question, the answers and the analysis
(or the reason there is none), stream it as ``FinalStarted`` + ``FinalDelta`` events, and when
the writer fails or writes nothing (an error, no finish, a content filter, empty output) start
again with the fallback writer, if one is configured: a second ``FinalStarted`` tells consumers
to reset the final answer's text.

No Django, no httpx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from chat.fusion import prompts
from chat.fusion.analyst import AnalysisOutcome, Answers
from chat.fusion.calls import RUN_CANCELLED_MESSAGE, RunContext, Unreported, clause, close_record, outcome_error
from chat.fusion.types import (
    CallRecord,
    ClientEvent,
    ContentDelta,
    FinalDelta,
    FinalStarted,
    Finish,
    Message,
    ModelSpec,
    ProviderError,
    ReasoningDelta,
    StreamError,
    UsageReport,
    ms,
)

log = logging.getLogger(__name__)


@dataclass
class _Draft:
    """One writer's call as it streams."""

    record: CallRecord
    started: float
    content: list[str] = field(default_factory=list)
    finish: str | None = None
    error: ProviderError | None = None


@dataclass
class WrittenAnswer:
    """The fused answer, or None with why each writer failed."""

    text: str | None
    problems: list[str] = field(default_factory=list)


class Writer:
    """The final phase of one run. After ``write``, ``first_delta_at`` (monotonic time of the
    first word of the answer) and ``truncated_at`` (the output cap it was cut at) are set."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.first_delta_at: float | None = None
        self.truncated_at: int | None = None

    async def write(self, answers: Answers, analysis: AnalysisOutcome) -> WrittenAnswer:
        request = self.ctx.request
        system_texts = [m.get("content") for m in request.messages if m.get("role") == "system"]
        writers = [request.writer] if request.fallback_writer is None else [request.writer, request.fallback_writer]
        problems: list[str] = []
        for spec in writers:
            extra = "\n\n".join(str(t) for t in [spec.system_prompt, *system_texts] if t)
            messages = prompts.writer_messages(
                system_extra=extra or None,
                previous_turns=self.ctx.previous_turns(),
                question=request.question,
                answers=answers,
                analysis=analysis.analysis,
                degraded_reason=analysis.degraded_reason,
            )
            self.ctx.emit(FinalStarted(writer_model=spec.model))
            text, error = await self._stream(replace(spec, system_prompt=None), messages)
            if error is None:
                return WrittenAnswer(text)
            problems.append(f"The writer {spec.model} failed: {clause(error.message)}.")
        return WrittenAnswer(None, problems)

    async def _stream(self, spec: ModelSpec, messages: list[Message]) -> tuple[str, ProviderError | None]:
        """One writer's answer, streamed as FinalDelta events, and why it is unusable (or None)."""
        record = self.ctx.open_record("writer", spec.model)
        draft = _Draft(record, time.monotonic())
        unreported = Unreported(record, spec, messages)
        try:
            async with aclosing(self.ctx.client.stream(spec, messages)) as stream:
                async for event in stream:
                    unreported.take(event)
                    self._take(draft, event)
        except asyncio.CancelledError:
            close_record(record, draft.started, ProviderError(kind="cancelled", message=RUN_CANCELLED_MESSAGE))
            raise
        except Exception:
            log.exception("Writer %s crashed while streaming", spec.model)
            draft.error = ProviderError(
                kind="upstream_error", message="Internal error while reading the writer's answer."
            )
        text = "".join(draft.content)
        error = outcome_error(text, draft.finish, draft.error)
        close_record(record, draft.started, error)
        return text, error

    def _take(self, draft: _Draft, event: ClientEvent) -> None:
        record = draft.record
        if isinstance(event, (ContentDelta, ReasoningDelta)) and record.ttft_ms is None:
            record.ttft_ms = ms(time.monotonic() - draft.started)
        if isinstance(event, ContentDelta) and event.text:
            if self.first_delta_at is None:
                self.first_delta_at = time.monotonic()
            draft.content.append(event.text)
            self.ctx.emit(FinalDelta(delta=event.text))
        elif isinstance(event, UsageReport):
            record.usage = event.usage
        elif isinstance(event, Finish):
            draft.finish, record.malformed_chunks = event.reason, event.malformed_chunks
            self.truncated_at = event.truncated_at
        elif isinstance(event, StreamError):
            draft.error, record.malformed_chunks = event.error, event.malformed_chunks
