"""``POST /api/v1/chat/completions`` for fusion models: the run, streamed as ``chat.completion.chunk``
SSE or returned as one ``chat.completion``.

Streaming: the fused answer arrives as ``content``; the panel and the analysis go in an extra
``fusion`` field of content-less chunks (``FusionCall*Event`` objects, which OpenAI clients
ignore); an SSE comment goes out after ``FUSION_API_KEEPALIVE_S`` of silence; the last chunk
carries ``usage`` (``cost``: every inner call, from the ledger), then ``[DONE]``. A client that
disconnects cancels the run, which closes every upstream stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat.api import shapes
from chat.api.choose import Chosen, choose, choose_server_tool, is_fusion_model, server_tool
from chat.api.errors import ApiError, invalid
from chat.api.runs import ApiRun, Outcome, api_run_start
from chat.api.schemas import ChatCompletionsBody
from chat.fusion import types as ev
from chat.fusion.types import Message, OuterRequest
from chat.models import ConversationSource

log = logging.getLogger(__name__)

# A failed run as an HTTP status (OpenRouter's failure reasons).
FAILURE_STATUS = {
    "all_panels_failed": 502,
    "writer_failed": 502,
    "invalid_key": 502,
    "rate_limited": 429,
    "insufficient_credits": 402,
    "invalid_model": 404,
    "invalid_request": 400,
    "cancelled": 499,
}


def messages_of(body: ChatCompletionsBody) -> list[Message]:
    messages: list[Message] = []
    for m in body.messages:
        if m.role == "tool" or m.tool_calls:
            continue  # a client's own tool round trips are not the panel's business
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": m.text()})
    return messages


def chosen_for(user: User, body: ChatCompletionsBody) -> Chosen:
    forwarded: dict[str, Any] = {
        "temperature": body.temperature,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "reasoning_effort": body.reasoning.effort if body.reasoning else None,
    }
    tool = _server_tool(body)
    if tool is not None:
        return choose_server_tool(user=user, model=body.model, tool=tool, **forwarded)
    return choose(user=user, model=body.model, plugins=body.plugins, **forwarded)


def _server_tool(body: ChatCompletionsBody) -> dict[str, Any] | None:
    """The ``openrouter:fusion`` tool of a request for a plain model (the server-tool shape)."""
    if is_fusion_model(body.model) or not body.tools:
        return None
    return server_tool([t.model_dump(exclude_none=True) for t in body.tools])


def outer_request(body: ChatCompletionsBody) -> OuterRequest | None:
    """The outer model's conversation and the client's own function tools (server-tool shape)."""
    if _server_tool(body) is None:
        return None
    tools = []
    for i, tool in enumerate(body.tools or []):
        if tool.type == "openrouter:fusion":
            continue
        if tool.type != "function" or not isinstance(tool.function, dict) or not tool.function.get("name"):
            raise invalid(
                "Beside openrouter:fusion, only function tools ({type: function, function: {name, …}}) are supported.",
                field=f"tools.{i}",
            )
        if tool.function["name"] == "fusion":
            raise invalid(
                "A function tool may not be named 'fusion': that name is the fusion tool's.", field=f"tools.{i}"
            )
        tools.append(tool.model_dump(exclude_none=True))
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    return OuterRequest(messages=messages, tools=tools)


def failure_error(outcome: Outcome) -> ApiError:
    failed = outcome.run_failed
    assert failed is not None
    return ApiError(
        FAILURE_STATUS.get(failed.kind, 502),
        failed.kind,
        failed.message,
        failure_reason=failed.kind,
        failed_models=[outcome.failed[s] for s in sorted(outcome.failed)],
    )


async def completion_start(*, user: User, body: ChatCompletionsBody, source: str = ConversationSource.API) -> ApiRun:
    """Choose the panel and start the run (ApiError when refused: nothing is paid then)."""
    from chat.dbthread import in_db_thread

    chosen = await in_db_thread(chosen_for, user, body)
    outer = outer_request(body)
    return await api_run_start(user=user, chosen=chosen, messages=messages_of(body), source=source, outer=outer)


async def completion_json(run: ApiRun) -> dict[str, Any]:
    """Wait for the run; its ``chat.completion`` (ApiError when the run failed)."""
    try:
        await run.wait()
    finally:
        run.cancel()  # a client that went away cancelled this task: stop the run too
    if run.outcome.run_failed is not None:
        raise failure_error(run.outcome)
    return shapes.completion(run, run.outcome, await run.bill())


async def completion_stream(run: ApiRun) -> AsyncIterator[bytes]:
    """The run as ``chat.completion.chunk`` SSE, ending with usage and ``[DONE]``."""
    item_id = shapes.fusion_item_id(run)
    seq = 0

    def progress(event: dict[str, Any]) -> bytes:
        nonlocal seq
        seq += 1
        return shapes.sse(shapes.chunk(run, fusion={**event, "output_index": 0, "sequence_number": seq}))

    call_open = False  # a fusion call's in_progress went out, its completed not yet
    try:
        yield shapes.sse(shapes.chunk(run, delta={"role": "assistant", "content": ""}))
        if not run.outer:  # an outer model starts a fusion call only if it calls the tool
            call_open = True
            yield progress(shapes.in_progress(item_id))
        async for event in run.events(keepalive_s=settings.FUSION_API_KEEPALIVE_S):
            if event is None:
                yield shapes.KEEPALIVE
            elif isinstance(event, ev.FinalDelta):
                if event.delta:
                    yield shapes.sse(shapes.chunk(run, delta={"content": event.delta}))
            elif isinstance(event, ev.OuterToolCalls):
                calls = [{"index": i, **c} for i, c in enumerate(event.calls)]
                yield shapes.sse(shapes.chunk(run, delta={"tool_calls": calls}))
            elif isinstance(event, ev.FinalStarted):
                if call_open:  # the answer is being written: the fusion call is over
                    call_open = False
                    yield progress({"type": f"{shapes.PREFIX}.completed", "item_id": item_id})
            else:
                if isinstance(event, ev.PanelAdded) and not call_open and event.attempt == 1:
                    call_open = True
                    yield progress(shapes.in_progress(item_id))
                fusion = shapes.fusion_event(event, item_id=item_id)
                if fusion is not None:
                    yield progress(fusion)
        outcome = run.outcome
        bill = await run.bill()
        if outcome.run_failed is not None:
            error = failure_error(outcome).body()
            yield shapes.sse({**shapes.chunk(run, finish="error", usage=bill.usage()), **error})
        else:
            yield shapes.sse(
                shapes.chunk(
                    run,
                    finish=shapes.finish_reason(outcome),
                    usage=bill.usage(),
                    fusion=shapes.fusion_summary(run, outcome, bill),
                )
            )
        yield shapes.sse("[DONE]")
    finally:
        run.cancel()
