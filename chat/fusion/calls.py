"""What every phase of one run shares, and the bookkeeping of each model call it makes.

Owns ``RunContext`` (the request, the client, the tools, where events go, and the run's call
records), ``RunContext.complete`` (the one non-streamed call: analyst, repair, the analyst's tool
turns), and what every call records: its ``CallRecord`` opened and closed, the characters a cost
estimate needs while the provider has not reported usage (``Unreported``), and why a call's
output is unusable (``outcome_error``).

Imports only the engine's types: no Django, no httpx (``chat.fusion.client`` does the HTTP), and
no phase module (the phases import this one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chat.fusion.types import (
    ERROR_MESSAGES,
    CallRecord,
    Client,
    ClientEvent,
    ContentDelta,
    FusionRequest,
    Message,
    ModelSpec,
    PipelineEvent,
    Provider,
    ProviderError,
    ReasoningDelta,
    StreamError,
    ToolCall,
    Tools,
    Usage,
    UsageReport,
    ms,
)

log = logging.getLogger(__name__)

RUN_CANCELLED_MESSAGE = "The run was stopped."


@dataclass
class CallResult:
    """A finished non-streamed call: its record, its text, and why it failed (or None)."""

    record: CallRecord
    text: str = ""
    error: ProviderError | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class RunContext:
    """What the phases of one run share. ``records`` holds every call the run made, in order."""

    request: FusionRequest
    client: Client
    tools: Tools | None
    emit: Callable[[PipelineEvent], None]
    records: list[CallRecord] = field(default_factory=list)

    def open_record(self, role: str, model: str, *, slot: int | None = None, status: str = "running") -> CallRecord:
        record = CallRecord(role=role, model=model, status=status, slot=slot)
        self.records.append(record)
        return record

    def provider_of(self, model: str) -> Provider | None:
        """The provider serving ``model``, or None when the client cannot tell."""
        registry = self.client.registry
        if registry is None:
            return None
        try:
            provider, _ = registry.resolve(model)
        except (ValueError, KeyError):
            return None  # unknown provider: the call itself will report the problem
        return provider

    def previous_turns(self) -> list[Message]:
        """User and assistant turns before the current question (the question is restated)."""
        messages = self.request.messages
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
        return [dict(m) for m in messages[:last_user] if m.get("role") in ("user", "assistant")]

    def total_usage(self) -> Usage:
        return usage_sum(*(record.usage for record in self.records))

    async def complete(
        self,
        role: str,
        spec: ModelSpec,
        messages: list[Message],
        records: list[CallRecord],
        response_format: dict[str, Any] | None,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
    ) -> CallResult:
        """One whole call, recorded in the run's records and in ``records`` (the phase's)."""
        record = self.open_record(role, spec.model)
        records.append(record)
        started = time.monotonic()
        record.prompt_chars = prompt_chars(spec, messages)  # until the provider reports the usage
        try:
            completion = await self.client.complete(
                spec,
                messages,
                response_format=response_format,
                tools=tools or None,
                tool_choice=tool_choice if tools else None,
            )
        except asyncio.CancelledError:
            close_record(record, started, ProviderError(kind="cancelled", message=RUN_CANCELLED_MESSAGE))
            raise
        except Exception:
            log.exception("%s call to %s crashed", role, spec.model)
            crashed = ProviderError(kind="upstream_error", message="Internal error while calling this model.")
            close_record(record, started, crashed)
            return CallResult(record, error=crashed)

        error = completion.error
        if error is None and completion.finish_reason == "content_filter":
            error = ProviderError(kind="moderation", message=ERROR_MESSAGES["moderation"])
        record.usage = completion.usage
        if completion.usage != Usage() or (error is not None and not completion.text and unbilled(error)):
            record.prompt_chars = 0
        else:
            record.streamed_chars = len(completion.text or "") + len(completion.reasoning or "")
        record.ttft_ms = completion.ttft_ms
        record.malformed_chunks = completion.malformed_chunks
        close_record(record, started, error)
        return CallResult(record, text=completion.text or "", error=error, tool_calls=list(completion.tool_calls))


class Unreported:
    """Counts one request's characters into ``record.prompt_chars``/``streamed_chars`` as they go,
    and takes them back when the provider reports the request's usage: a stream cut by a stop
    or an error keeps what its cost is estimated from."""

    def __init__(self, record: CallRecord, spec: ModelSpec, messages: list[Message]) -> None:
        self.record, self.prompt, self.streamed = record, prompt_chars(spec, messages), 0
        record.prompt_chars += self.prompt

    def take(self, event: ClientEvent) -> None:
        if isinstance(event, (ContentDelta, ReasoningDelta)):
            self.streamed += len(event.text)
            self.record.streamed_chars += len(event.text)
        elif isinstance(event, UsageReport) or (
            isinstance(event, StreamError) and not self.streamed and unbilled(event.error)
        ):
            # Reported, or refused before any output: nothing of this request is left to estimate.
            self.record.prompt_chars -= self.prompt
            self.record.streamed_chars -= self.streamed
            self.prompt = self.streamed = 0


def prompt_chars(spec: ModelSpec, messages: list[Message]) -> int:
    """Characters of the messages one request sends (the client adds the spec's system prompt)."""
    return len(spec.system_prompt or "") + sum(len(str(m.get("content") or "")) for m in messages)


def unbilled(error: ProviderError) -> bool:
    """A request the provider refused with an HTTP error, or never received: providers bill neither."""
    return error.status_code is not None or error.kind == "network"


def outcome_error(text: str, finish: str | None, error: ProviderError | None) -> ProviderError | None:
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


def close_record(record: CallRecord, started: float, error: ProviderError | None) -> None:
    record.duration_ms = ms(time.monotonic() - started)
    record.error = error
    if error is None:
        record.status = "complete"
    else:
        record.status = "cancelled" if error.kind == "cancelled" else "failed"


def usage_sum(*parts: Usage) -> Usage:
    """A new Usage adding up *parts* (which stay as they are)."""
    total = Usage()
    for part in parts:
        total.add(part)
    return total


def clause(message: str) -> str:
    """A message without its final full stop, to embed it in a longer sentence."""
    return message.strip().rstrip(".")
