"""The ``openrouter:fusion`` server tool: an outer model that decides whether to call fusion.

The outer model (the request's writer) reads the client's conversation and is offered a
``fusion`` function beside the client's own tools. If it answers, that is the answer. If it calls
``fusion``, the panel and the analyst run (the pipeline's callback) and the outer model gets the
result in OpenRouter's ``OutputFusionServerToolItem`` shape, then writes the answer. One fusion
call per turn: a second one gets ``failure_reason: fusion_invocation_capped``. A call of a client
tool ends the run with ``OuterToolCalls`` for the client to run.

Every outer call is a ``writer`` record of the run, so it is billed like the writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chat.fusion.calls import RUN_CANCELLED_MESSAGE, RunContext, Unreported, close_record, outcome_error
from chat.fusion.types import (
    ContentDelta,
    FinalDelta,
    FinalStarted,
    Finish,
    Message,
    ModelSpec,
    OuterRequest,
    OuterToolCalls,
    ProviderError,
    ReasoningDelta,
    StreamError,
    ToolCall,
    ToolCallDelta,
    UsageReport,
    merge_tool_call,
    ms,
)

log = logging.getLogger(__name__)

FUSION_FUNCTION_NAME = "fusion"
FUSION_FUNCTION = {
    "type": "function",
    "function": {
        "name": FUSION_FUNCTION_NAME,
        "description": (
            "Ask a panel of other models to answer the user's latest question independently (with web "
            "research when enabled), and get back their answers and a structured analysis of them: "
            "consensus, contradictions, partial coverage, unique insights and blind spots. It takes "
            "minutes and costs several completions: use it for hard, high-stakes or research questions, "
            "not for simple ones. Call it at most once."
        ),
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
CAPPED = {
    "type": "openrouter:fusion",
    "status": "incomplete",
    "failure_reason": "fusion_invocation_capped",
    "error": "fusion was already called in this turn; answer from its first result.",
}
# Outer calls per run at most: answer, or call fusion then answer (with room for a capped call).
MAX_OUTER_CALLS = 4


@dataclass
class OuterTurn:
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: ProviderError | None = None


@dataclass
class OuterResult:
    text: str | None  # None: the outer model failed
    problems: list[str] = field(default_factory=list)
    fused: bool = False
    client_calls: list[dict[str, Any]] = field(default_factory=list)
    first_delta_at: float | None = None
    truncated_at: int | None = None


class Outer:
    def __init__(self, ctx: RunContext, spec: ModelSpec, outer: OuterRequest) -> None:
        self.ctx, self.spec, self.outer = ctx, spec, outer
        self.first_delta_at: float | None = None
        self.truncated_at: int | None = None

    async def run(self, fuse: Callable[[], Awaitable[dict[str, Any]]]) -> OuterResult:
        """Call the outer model until it answers; *fuse* runs the panel and the analyst."""
        messages: list[Message] = list(self.outer.messages)
        result = OuterResult(text=None)
        for _ in range(MAX_OUTER_CALLS):
            turn = await self._turn(messages, offer_fusion=True)
            if turn.error is not None:
                result.problems.append(f"The model {self.spec.model} failed: {turn.error.message}")
                break
            fusion_calls = [c for c in turn.calls if c.name == FUSION_FUNCTION_NAME]
            client_calls = [c for c in turn.calls if c.name != FUSION_FUNCTION_NAME]
            if not fusion_calls:
                result.text = turn.text
                result.client_calls = [_as_dict(c, i) for i, c in enumerate(client_calls)]
                if result.client_calls:
                    self.ctx.emit(OuterToolCalls(calls=result.client_calls))
                break
            # Answer the fusion calls only: the model asks again for a client tool if it still needs it.
            ids = [c.id or f"call_fusion_{i}" for i, c in enumerate(fusion_calls)]
            replies = []
            for call in fusion_calls:
                if result.fused:
                    replies.append(json.dumps(CAPPED))
                    continue
                result.fused = True
                replies.append(json.dumps(await fuse(), ensure_ascii=False))
            messages.append(
                {
                    "role": "assistant",
                    "content": turn.text or None,
                    "tool_calls": [
                        {
                            "id": ids[i],
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments or "{}"},
                        }
                        for i, c in enumerate(fusion_calls)
                    ],
                }
            )
            messages += [{"role": "tool", "tool_call_id": ids[i], "content": r} for i, r in enumerate(replies)]
        else:
            result.problems.append(f"The model {self.spec.model} kept calling tools without answering.")
        result.first_delta_at, result.truncated_at = self.first_delta_at, self.truncated_at
        return result

    async def _turn(self, messages: list[Message], *, offer_fusion: bool) -> OuterTurn:
        """One streamed outer call: its text goes out as the final answer as it arrives."""
        tools = [FUSION_FUNCTION, *self.outer.tools] if offer_fusion else list(self.outer.tools)
        record = self.ctx.open_record("writer", self.spec.model)
        started = time.monotonic()
        unreported = Unreported(record, self.spec, messages)
        turn, finish = OuterTurn(), None
        calls: dict[int, ToolCall] = {}
        announced = False
        try:
            async with aclosing(self.ctx.client.stream(self.spec, messages, tools=tools, tool_choice="auto")) as stream:
                async for event in stream:
                    unreported.take(event)
                    if isinstance(event, (ContentDelta, ReasoningDelta, ToolCallDelta)) and record.ttft_ms is None:
                        record.ttft_ms = ms(time.monotonic() - started)
                    if isinstance(event, ContentDelta) and event.text:
                        if not announced:  # a second FinalStarted resets the answer: the last call's text is it
                            self.ctx.emit(FinalStarted(writer_model=self.spec.model))
                            announced = True
                        if self.first_delta_at is None:
                            self.first_delta_at = time.monotonic()
                        turn.text += event.text
                        self.ctx.emit(FinalDelta(delta=event.text))
                    elif isinstance(event, ToolCallDelta):
                        merge_tool_call(calls, event)
                    elif isinstance(event, UsageReport):
                        record.usage = event.usage
                    elif isinstance(event, Finish):
                        finish, record.malformed_chunks = event.reason, event.malformed_chunks
                        self.truncated_at = event.truncated_at
                    elif isinstance(event, StreamError):
                        turn.error, record.malformed_chunks = event.error, event.malformed_chunks
        except asyncio.CancelledError:
            close_record(record, started, ProviderError(kind="cancelled", message=RUN_CANCELLED_MESSAGE))
            raise
        except Exception:
            log.exception("outer model %s crashed while streaming", self.spec.model)
            turn.error = ProviderError(
                kind="upstream_error", message="Internal error while reading the model's answer."
            )
        turn.calls = [calls[i] for i in sorted(calls)]
        if turn.error is None and not turn.calls:
            turn.error = outcome_error(turn.text, finish, None)
        elif turn.error is None and finish is None:
            turn.error = outcome_error(turn.text, None, None)
        close_record(record, started, turn.error)
        return turn


def _as_dict(call: ToolCall, i: int) -> dict[str, Any]:
    return {
        "id": call.id or f"call_{i}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }
