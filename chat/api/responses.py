"""``POST /api/v1/responses``: the subset of the Responses API that OpenRouter's own Fusion clients
use — ``input``, ``instructions``, ``model``, ``tools`` with ``openrouter:fusion``, ``stream``.

``model`` is a fusion model (as in Chat Completions), or a plain model with the
``openrouter:fusion`` tool: then the tool's panel and analyst run and the request's model writes
the answer. The output holds an ``openrouter:fusion`` item, then the answer's message. Streamed,
the events are ``response.created``, ``response.in_progress``, the ``response.fusion_call.*``
events, the output item and text events, and ``response.completed`` with usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat.api import shapes
from chat.api.choose import Chosen, choose, choose_server_tool, is_fusion_model, server_tool
from chat.api.completions import failure_error
from chat.api.errors import invalid
from chat.api.runs import ApiRun, Bill, Outcome, api_run_start
from chat.api.schemas import ResponsesBody
from chat.dbthread import in_db_thread
from chat.fusion import types as ev
from chat.fusion.types import Message
from chat.models import ConversationSource


def messages_of(body: ResponsesBody) -> list[Message]:
    messages: list[Message] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    for i, item in enumerate(body.input):
        if item.type not in (None, "message"):
            raise invalid(
                f"Input items of type {item.type!r} are not supported; send messages.", field=f"input.{i}.type"
            )
        if item.role is None:
            raise invalid("A message needs a role.", field=f"input.{i}.role")
        messages.append({"role": "system" if item.role == "developer" else item.role, "content": item.text()})
    return messages


def chosen_for(user: User, body: ResponsesBody) -> Chosen:
    forwarded: dict[str, Any] = {
        "temperature": body.temperature,
        "max_tokens": body.max_output_tokens,
        "reasoning_effort": body.reasoning.effort if body.reasoning else None,
    }
    tool = server_tool([t.model_dump() for t in body.tools] if body.tools else None)
    if tool is not None and not is_fusion_model(body.model):
        return choose_server_tool(user=user, model=body.model, tool=tool, **forwarded)
    return choose(user=user, model=body.model, plugins=body.plugins, **forwarded)


async def response_start(*, user: User, body: ResponsesBody) -> ApiRun:
    chosen = await in_db_thread(chosen_for, user, body)
    return await api_run_start(user=user, chosen=chosen, messages=messages_of(body), source=ConversationSource.API)


def response_id(run: ApiRun) -> str:
    return f"resp_{run.run_id.hex}"


def message_id(run: ApiRun) -> str:
    return f"msg_{run.run_id.hex}"


def usage(bill: Bill) -> dict[str, Any]:
    return {
        "input_tokens": bill.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": bill.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": bill.reasoning_tokens},
        "total_tokens": bill.prompt_tokens + bill.completion_tokens,
        "cost": float(bill.cost_usd),
    }


def message_item(run: ApiRun, text: str, *, status: str) -> dict[str, Any]:
    return {
        "id": message_id(run),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else [],
    }


def response_object(
    run: ApiRun, *, status: str, outcome: Outcome | None = None, bill: Bill | None = None
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if outcome is not None:
        output.append(shapes.fusion_item(run, outcome))
        if outcome.run_failed is None:
            output.append(message_item(run, outcome.answer, status="completed"))
    body: dict[str, Any] = {
        "id": response_id(run),
        "object": "response",
        "created_at": run.created,
        "status": status,
        "model": run.chosen.model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "tools": [{"type": "openrouter:fusion"}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "usage": usage(bill) if bill is not None else None,
        "metadata": {"conversation_id": str(run.conversation_id), "run_id": str(run.run_id)},
    }
    if outcome is not None and outcome.run_failed is not None:
        error = failure_error(outcome)
        body["error"] = {"code": error.reason, "message": error.message}
    return body


async def response_json(run: ApiRun) -> dict[str, Any]:
    try:
        await run.wait()
    finally:
        run.cancel()
    if run.outcome.run_failed is not None and not run.outcome.responses:
        raise failure_error(run.outcome)
    bill = await run.bill()
    status = "completed" if run.outcome.run_failed is None else "failed"
    return response_object(run, status=status, outcome=run.outcome, bill=bill)


async def response_stream(run: ApiRun) -> AsyncIterator[bytes]:
    item_id = shapes.fusion_item_id(run)
    seq = 0

    def out(event: dict[str, Any]) -> bytes:
        nonlocal seq
        seq += 1
        return shapes.sse({**event, "sequence_number": seq})

    writing = False
    try:
        yield out({"type": "response.created", "response": response_object(run, status="in_progress")})
        yield out({"type": "response.in_progress", "response": response_object(run, status="in_progress")})
        yield out(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"id": item_id, "type": "openrouter:fusion", "status": "in_progress"},
            }
        )
        yield out({**shapes.in_progress(item_id), "output_index": 0})
        async for event in run.events(keepalive_s=settings.FUSION_API_KEEPALIVE_S):
            if event is None:
                yield shapes.KEEPALIVE
                continue
            fusion = shapes.fusion_event(event, item_id=item_id)
            if fusion is not None:
                fusion.pop("slot", None)  # the documented events carry the model, not our slot
                yield out({**fusion, "output_index": 0})
            if isinstance(event, ev.FinalStarted):
                writing = True
                yield out(
                    {
                        "type": "response.output_item.done",
                        "output_index": 0,
                        "item": shapes.fusion_item(run, run.outcome),
                    }
                )
                yield out(
                    {
                        "type": "response.output_item.added",
                        "output_index": 1,
                        "item": message_item(run, "", status="in_progress"),
                    }
                )
                yield out(
                    {
                        "type": "response.content_part.added",
                        "item_id": message_id(run),
                        "output_index": 1,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    }
                )
            elif isinstance(event, ev.FinalDelta) and event.delta:
                yield out(
                    {
                        "type": "response.output_text.delta",
                        "item_id": message_id(run),
                        "output_index": 1,
                        "content_index": 0,
                        "delta": event.delta,
                        "logprobs": [],
                    }
                )
        outcome = run.outcome
        bill = await run.bill()
        if writing:
            text = outcome.answer
            yield out(
                {
                    "type": "response.output_text.done",
                    "item_id": message_id(run),
                    "output_index": 1,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                }
            )
            yield out(
                {
                    "type": "response.content_part.done",
                    "item_id": message_id(run),
                    "output_index": 1,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []},
                }
            )
            yield out(
                {
                    "type": "response.output_item.done",
                    "output_index": 1,
                    "item": message_item(run, text, status="completed" if outcome.run_failed is None else "incomplete"),
                }
            )
        else:
            yield out(
                {"type": "response.output_item.done", "output_index": 0, "item": shapes.fusion_item(run, outcome)}
            )
        final = response_object(
            run, status="completed" if outcome.run_failed is None else "failed", outcome=outcome, bill=bill
        )
        kind = "response.completed" if outcome.run_failed is None else "response.failed"
        yield out({"type": kind, "response": final})
        yield shapes.sse("[DONE]")
    finally:
        run.cancel()
