"""Engine events and run outcomes in OpenRouter's shapes: the ``FusionCall*Event`` stream events,
the ``OutputFusionServerToolItem``, Chat Completions chunks and completions.

Pure functions of their arguments; chat.api.completions and chat.api.responses call them.
"""

from __future__ import annotations

import json
from typing import Any

from chat.api.runs import ApiRun, Bill, Outcome
from chat.fusion import types as ev

PREFIX = "response.fusion_call"


def fusion_item_id(run: ApiRun) -> str:
    return f"fc_{run.run_id.hex}"


def fusion_event(event: ev.PipelineEvent, *, item_id: str) -> dict[str, Any] | None:
    """The ``FusionCall*Event`` for an engine event (without ``sequence_number``/``output_index``),
    or None for events that vocabulary has no word for (tool steps, notes)."""
    if isinstance(event, ev.PanelAdded):
        return {"type": f"{PREFIX}.panel.added", "item_id": item_id, "model": event.model, "slot": event.slot}
    if isinstance(event, ev.PanelDelta):
        return {
            "type": f"{PREFIX}.panel.delta",
            "item_id": item_id,
            "model": event.model,
            "slot": event.slot,
            "delta": event.delta,
        }
    if isinstance(event, ev.PanelReasoningDelta):
        return {
            "type": f"{PREFIX}.panel.reasoning.delta",
            "item_id": item_id,
            "model": event.model,
            "slot": event.slot,
            "delta": event.delta,
        }
    if isinstance(event, ev.PanelCompleted):
        return {
            "type": f"{PREFIX}.panel.completed",
            "item_id": item_id,
            "model": event.model,
            "slot": event.slot,
            "content": event.content,
        }
    if isinstance(event, ev.PanelFailed):
        failed: dict[str, Any] = {
            "type": f"{PREFIX}.panel.failed",
            "item_id": item_id,
            "model": event.model,
            "slot": event.slot,
            "error": event.error.message,
        }
        if event.error.status_code is not None:
            failed["status_code"] = event.error.status_code
        return failed
    if isinstance(event, ev.AnalysisStarted):
        return {
            "type": f"{PREFIX}.analysis.in_progress",
            "item_id": item_id,
            "analyst_model": event.analyst_model,
            "judge_model": event.analyst_model,
        }
    if isinstance(event, ev.AnalysisCompleted):
        return {"type": f"{PREFIX}.analysis.completed", "item_id": item_id, "analysis": event.analysis}
    if isinstance(event, ev.FinalStarted):  # the fusion call is done; the answer is written next
        return {"type": f"{PREFIX}.completed", "item_id": item_id}
    return None


def in_progress(item_id: str) -> dict[str, Any]:
    return {"type": f"{PREFIX}.in_progress", "item_id": item_id}


def fusion_item(run: ApiRun, outcome: Outcome, *, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``OutputFusionServerToolItem`` of a finished run."""
    item: dict[str, Any] = {
        "id": fusion_item_id(run),
        "type": "openrouter:fusion",
        # OpenRouter's ToolCallStatus: a run that failed is "incomplete" (with its failure_reason).
        "status": "completed" if outcome.run_failed is None and outcome.responses else "incomplete",
        "responses": [outcome.responses[s] for s in sorted(outcome.responses)],
    }
    if outcome.analysis is not None:
        item["analysis"] = outcome.analysis
    elif outcome.analysis_error:
        item["error"] = outcome.analysis_error
    if outcome.failed:
        item["failed_models"] = [outcome.failed[s] for s in sorted(outcome.failed)]
    if outcome.run_failed is not None:
        item["failure_reason"] = outcome.run_failed.kind
        item["error"] = outcome.run_failed.message
    found = sources if sources is not None else (outcome.completed.sources if outcome.completed else [])
    if found:
        item["sources"] = [{"url": s["url"], "title": s.get("title") or s["url"]} for s in found]
    return item


def fusion_summary(run: ApiRun, outcome: Outcome, bill: Bill) -> dict[str, Any]:
    """The ``fusion`` object of a completion: the tool item (``invoked`` false when an outer model
    answered without calling fusion), the panel, the calls, and where to read the run."""
    item = fusion_item(run, outcome) if outcome.fused else {"id": fusion_item_id(run), "type": "openrouter:fusion"}
    return {
        **item,
        "invoked": outcome.fused,
        "run_id": str(run.run_id),
        "conversation_id": run.conversation_id,
        "conversation_url": f"/c/{run.conversation_id}/",
        "panel": run.panel,
        "analyst": run.analyst,
        "writer": run.writer,
        "calls": bill.calls,
    }


# --------------------------------------------------------------------------- chat completions


def completion_id(run: ApiRun) -> str:
    return f"gen-fusion-{run.run_id.hex}"


def chunk(
    run: ApiRun, *, delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": completion_id(run),
        "object": "chat.completion.chunk",
        "created": run.created,
        "model": run.chosen.model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **extra,
    }


def completion(run: ApiRun, outcome: Outcome, bill: Bill) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": outcome.answer or None}
    if outcome.tool_calls:
        message["tool_calls"] = outcome.tool_calls
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": completion_id(run),
        "object": "chat.completion",
        "created": run.created,
        "model": run.chosen.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(outcome)}],
        "usage": bill.usage(),
        "fusion": fusion_summary(run, outcome, bill),
    }


def finish_reason(outcome: Outcome) -> str:
    if outcome.tool_calls:
        return "tool_calls"
    if outcome.completed is not None:
        truncated = outcome.completed.timings.get("final_truncated_at")
        return "length" if truncated else "stop"
    return "error"


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


KEEPALIVE = b": FUSION PROCESSING\n\n"
