"""The HTTP API's OpenAPI 3.1 description, served at ``GET /api/v1/openapi.json``.

Request bodies are derived from the pydantic models the views validate with (chat.api.schemas),
so their limits cannot drift from what is enforced; the few fields pydantic types loosely are
narrowed to what chat.api.choose and the validators accept (``plugins``, ``tools``, content
parts, Responses input items). Responses are written out here after chat.api.shapes,
chat.api.completions, chat.api.responses and chat.api.models_list, and closed
(``additionalProperties: false``) so that tests/test_api_schema.py notices a field added there
and not here. Schema names are OpenRouter's (../shared/reference/openrouter_openapi.yaml) where
the shapes match; each schema describes what this server returns, not OpenRouter's superset.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from chat.api.schemas import (
    MAX_MESSAGES,
    TEXT_PARTS,
    ChatCompletionsBody,
    ResponsesBody,
)
from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.openrouter_shapes import FUSION_TOOL, OPENROUTER_PRESETS, WEB_FETCH, WEB_SEARCH

Schema = dict[str, Any]

REF = "#/components/schemas/"
FAILURE_REASONS = [
    "all_panels_failed",
    "writer_failed",
    "invalid_key",
    "rate_limited",
    "insufficient_credits",
    "invalid_model",
    "invalid_request",
    "cancelled",
]
# Each error status: OpenRouter's schema name, a title, and when this server answers with it.
ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "BadRequest",
        "Bad Request: the request is invalid",
        "Not JSON, a field that fails validation (`metadata.field` names it, dotted: `messages.2.role`), "
        "a last message that is not the user's, an unsupported plugin or tool, a provider without a key "
        "(`no_key`), or an inner call of a fusion (`fusion_recursion`).",
    ),
    401: (
        "Unauthorized",
        "Unauthorized: no valid API token",
        "No bearer token (`no_token`), or an unknown or revoked one (`bad_token`).",
    ),
    402: (
        "PaymentRequired",
        "Payment Required: over the spend limit or out of credits",
        "The run would pass the user's daily spend limit (`spend_limit`; `metadata.left_usd` is what is "
        "left today), or a provider reported insufficient credits (`insufficient_credits`).",
    ),
    404: (
        "NotFound",
        "Not Found: no such model or preset",
        "`model` names no fusion model or preset (`unknown_model`, `unknown_preset`; `metadata.field` is "
        "`model`), or a model of the panel is not in its provider's catalogue.",
    ),
    405: (
        "MethodNotAllowed",
        "Method Not Allowed",
        "Another HTTP method was used on this path (`method_not_allowed`).",
    ),
    413: ("PayloadTooLarge", "Payload Too Large", "The request body is over 1 MiB (`too_large`)."),
    429: (
        "TooManyRequests",
        "Too Many Requests: rate or concurrency limit",
        "Too many requests with this token (`rate_limited`), too many runs of this user going at once "
        "(`limit`, `busy`), or the provider rate-limited the run (`failure_reason` `rate_limited`). "
        "`Retry-After` says how many seconds to wait, except after the provider's own rate limit.",
    ),
    499: (
        "ClientClosedRequest",
        "Cancelled: the run was stopped",
        "The run was cancelled before it finished (`cancelled`), e.g. stopped from the chatroom.",
    ),
    502: (
        "BadGateway",
        "Bad Gateway: the run failed upstream",
        "Every panel member failed (`all_panels_failed`), the writer failed (`writer_failed`) or a "
        "provider refused the key (`invalid_key`); `metadata.failed_models` says why each member failed.",
    ),
}
MODEL_ID = {"type": "string", "minLength": 1}
EXAMPLE_PANEL = ["~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest"]
RUN_ERRORS = [400, 401, 402, 404, 405, 413, 429, 499, 502]


def openapi_document() -> Schema:
    """The OpenAPI 3.1 description of ``/api/v1/``, as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fusion chatroom API",
            "version": "1",
            "description": (
                "An OpenAI- and OpenRouter-compatible API for this server's fusion runs: a panel of models "
                "answers, an analyst compares the answers and a writer fuses them into one. Each request is "
                "a new conversation, which can be opened in the chatroom afterwards. Errors are "
                '`{"error": {"code", "message", "metadata": {"reason", …}}}` with the HTTP status as `code`.'
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/chat/completions": {"post": _chat_completions()},
            "/responses": {"post": _responses()},
            "/models": {"get": _models()},
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "fsn_ and 40 letters and digits",
                    "description": "An API token (Settings → API tokens): `Authorization: Bearer fsn_…`.",
                }
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again (a whole number, at least 1).",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
            "schemas": {**_request_schemas(), **_response_schemas(), **_error_schemas()},
        },
    }


# --------------------------------------------------------------------------- operations


def _chat_completions() -> Schema:
    return {
        "operationId": "sendChatCompletionRequest",
        "summary": "Create a chat completion with a fusion model",
        "description": (
            "Runs a fusion for the conversation in `messages` (the last message is the user's question) "
            "and returns the fused answer. The panel is named by `model` (`fusion`, `fusion/<preset>`, "
            "`openrouter/fusion`, `openrouter/fusion-flash`) and/or configured inline by the `fusion` "
            "plugin. With `stream: true` the answer arrives as `chat.completion.chunk` server-sent events."
        ),
        "tags": ["Chat"],
        "requestBody": _json_body(
            "ChatRequest",
            {
                "fusion": {
                    "summary": "The user's default panel",
                    "value": {"model": "fusion", "messages": [{"role": "user", "content": "Why is the sky blue?"}]},
                },
                "plugin": {
                    "summary": "A panel configured inline",
                    "value": {
                        "model": "fusion",
                        "messages": [
                            {"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Why is the sky blue?"},
                        ],
                        "plugins": [{"id": "fusion", "analysis_models": list(EXAMPLE_PANEL), "tools": []}],
                    },
                },
            },
        ),
        "responses": {
            "200": {
                "description": (
                    "The fused answer; with `stream: true`, the run as server-sent events: one `data:` event per "
                    "`chat.completion.chunk`, first the assistant role, then content-less chunks whose `fusion` "
                    "field carries the `response.fusion_call.*` events (panel, analysis), then the answer as "
                    "`delta.content` (or the client's `tool_calls`). The last chunk has `finish_reason`, `usage` "
                    "and the `fusion` summary (when the run failed, `finish_reason: error` and an `error` "
                    "object), and `data: [DONE]` ends the stream. SSE comments (`: FUSION PROCESSING`) keep "
                    "idle connections open."
                ),
                "content": {
                    "application/json": {"schema": _ref("ChatResult")},
                    "text/event-stream": {"schema": _ref("ChatStreamingResponse")},
                },
            },
            **_errors(RUN_ERRORS),
        },
    }


def _responses() -> Schema:
    return {
        "operationId": "createResponses",
        "summary": "Create a response with a fusion model or the openrouter:fusion tool",
        "description": (
            "The subset of the Responses API that OpenRouter's Fusion clients use. `model` is a fusion "
            "model (as in Chat Completions), or any model with the `openrouter:fusion` tool: then the tool's "
            "panel and analyst run and `model` writes the answer. The output holds an `openrouter:fusion` "
            "item, then the answer's message. A run that failed after some panel members answered is a "
            '200 with `status: "failed"` and `error`.'
        ),
        "tags": ["Responses"],
        "requestBody": _json_body(
            "ResponsesRequest",
            {
                "fusion": {
                    "summary": "A fusion model",
                    "value": {"model": "fusion", "input": "Why is the sky blue?", "instructions": "Be brief."},
                },
                "server_tool": {
                    "summary": "A plain model with the openrouter:fusion tool",
                    "value": {
                        "model": "~anthropic/claude-opus-latest",
                        "input": [{"type": "message", "role": "user", "content": "Why is the sky blue?"}],
                        "tools": [{"type": FUSION_TOOL, "parameters": {"analysis_models": list(EXAMPLE_PANEL)}}],
                    },
                },
            },
        ),
        "responses": {
            "200": {
                "description": (
                    "The response; with `stream: true`, the run as server-sent events: one `data:` event per "
                    "Responses stream event, each with a `sequence_number`: `response.created`, "
                    "`response.in_progress`, the `openrouter:fusion` output item and its `response.fusion_call.*` "
                    "events, the message item with its `response.output_text.delta` events, then "
                    "`response.completed` (or `response.failed`) with `usage`; `data: [DONE]` ends the stream. "
                    "SSE comments (`: FUSION PROCESSING`) keep idle connections open."
                ),
                "content": {
                    "application/json": {"schema": _ref("OpenResponsesResult")},
                    "text/event-stream": {"schema": _ref("ResponsesStreamingResponse")},
                },
            },
            **_errors(RUN_ERRORS),
        },
    }


def _models() -> Schema:
    return {
        "operationId": "getModels",
        "summary": "List the caller's fusion models",
        "description": (
            "`fusion` (the caller's default panel), OpenRouter's aliases, `fusion/<key>` for each built-in "
            "preset and `fusion/<slug>` for each of the caller's presets. `pricing.request` is the high "
            "estimate of one run for a short prompt, in USD; prompt and completion prices are 0."
        ),
        "tags": ["Models"],
        "responses": {
            "200": {
                "description": "The caller's fusion models.",
                "content": {"application/json": {"schema": _ref("ModelsListResponse")}},
            },
            **_errors([401, 405, 429]),
        },
    }


def _json_body(name: str, examples: dict[str, Any]) -> Schema:
    return {
        "required": True,
        "content": {"application/json": {"schema": _ref(name), "examples": examples}},
    }


def _errors(statuses: list[int]) -> Schema:
    responses: Schema = {}
    for status in statuses:
        name, title, description = ERRORS[status]
        response: Schema = {
            "description": f"{title}. {description}",
            "content": {"application/json": {"schema": _ref(f"{name}Response")}},
        }
        if status == 429:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(status)] = response
    return responses


# --------------------------------------------------------------------------- request bodies


def _request_schemas() -> dict[str, Schema]:
    """The request bodies: the pydantic models' schemas under OpenRouter's names, with the fields
    pydantic types loosely narrowed to what is accepted, and the plugin and server tool (which
    chat.api.choose and chat.openrouter_shapes validate by hand) written out."""
    schemas: dict[str, Schema] = {}
    chat = schemas["ChatRequest"] = _pydantic(ChatCompletionsBody, schemas)
    responses = schemas["ResponsesRequest"] = _pydantic(ResponsesBody, schemas)

    chat["properties"]["model"]["examples"] = ["fusion", "fusion/quality", "openrouter/fusion"]
    chat["properties"]["messages"]["description"] = (
        f"The conversation, at most {MAX_MESSAGES} messages; the last one is the user's question. "
        "Tool calls and tool results are left out of what the panel reads."
    )
    chat["properties"]["tools"] = {
        "type": "array",
        "items": {"anyOf": [_ref("FusionServerTool_OpenRouter"), _ref("ChatFunctionTool")]},
        "description": (
            "With a model that is not a fusion model, the `openrouter:fusion` tool makes that model an outer "
            "model that may call fusion, and the client's function tools come back as `tool_calls`. "
            "With a fusion model, tools are ignored."
        ),
    }
    schemas["ChatFunctionTool"] = {
        "type": "object",
        "description": "One of the client's functions; the outer model may call it.",
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "not": {"const": "fusion"}},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                },
                "required": ["name"],
            },
        },
        "required": ["type", "function"],
    }
    # A content part must be text: the panel reads text only (schemas._TextContent).
    schemas["ContentPart"]["properties"]["type"] = {"enum": list(TEXT_PARTS)}

    responses["properties"]["model"]["examples"] = ["fusion", "fusion/fast"]
    # Input items are messages with a role (responses.messages_of refuses any other).
    item = schemas["ResponsesInputItem"]
    item["properties"]["type"] = {"const": "message"}
    item["properties"]["role"] = {"enum": ["system", "developer", "user", "assistant"]}
    item["required"] = ["role"]
    responses["properties"]["tools"] = {
        "type": "array",
        "items": {"anyOf": [_ref("FusionServerTool_OpenRouter"), _ref("ToolSpec")]},
        "description": "The `openrouter:fusion` tool runs its panel; other tools are accepted and ignored.",
    }
    schemas["ToolSpec"]["properties"]["type"] = {"type": "string", "not": {"const": FUSION_TOOL}}
    schemas["ToolSpec"]["description"] = "Any other tool: accepted and ignored."

    for body in (chat, responses):
        body["properties"]["plugins"] = {
            "type": "array",
            "items": _ref("FusionPlugin"),
            "description": "Only the fusion plugin is supported; the last enabled one applies.",
        }
    panel = {
        "analysis_models": {
            "type": "array",
            "items": {**MODEL_ID},
            "minItems": 1,
            "maxItems": MAX_PANEL_MEMBERS,
            "description": "The panel's model ids.",
        },
        "max_tool_calls": {"type": "integer", "minimum": 1, "maximum": 16},
        "tools": {
            "type": "array",
            "items": _ref("FusionToolSpec"),
            "description": "The panel's web tools (both when left out; none when empty).",
        },
    }
    schemas["FusionPlugin"] = {
        "type": "object",
        "description": "OpenRouter's Fusion plugin: configures the panel inline.",
        "properties": {
            "id": {"const": "fusion"},
            "enabled": {"type": "boolean"},
            **panel,
            "model": {**MODEL_ID, "description": "The analyst and the writer."},
            "preset": {
                "type": "string",
                "description": (
                    "A built-in preset key, the slug of one of your presets, or one of OpenRouter's curated "
                    f"names ({', '.join(OPENROUTER_PRESETS)}); the plugin's other fields override it."
                ),
            },
        },
        "required": ["id"],
    }
    schemas["FusionToolSpec"] = {
        "type": "object",
        "description": "A tool of the panel: web search or web fetch.",
        "properties": {
            "type": {"enum": [WEB_SEARCH, WEB_FETCH]},
            "parameters": {
                "type": "object",
                "properties": {"excluded_domains": _strings(), "blocked_domains": _strings()},
            },
        },
        "required": ["type"],
    }
    schemas["FusionServerTool_OpenRouter"] = {
        "type": "object",
        "description": "The openrouter:fusion server tool: its panel and analyst run, the request's model writes.",
        "properties": {"type": {"const": FUSION_TOOL}, "parameters": _ref("FusionServerToolConfig")},
        "required": ["type"],
    }
    schemas["FusionServerToolConfig"] = {
        "type": "object",
        "properties": {
            **copy.deepcopy(panel),
            "model": {**MODEL_ID, "description": "The analyst; the request's model when left out."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "reasoning": {
                "type": "object",
                "properties": {"effort": copy.deepcopy(schemas["Reasoning"]["properties"]["effort"])},
            },
        },
    }
    return schemas


def _pydantic(model: type[BaseModel], defs: dict[str, Schema]) -> Schema:
    """*model*'s JSON schema with its definitions moved into *defs*, without pydantic's titles."""
    schema = _untitled(model.model_json_schema(ref_template=REF + "{model}"))
    defs.update(schema.pop("$defs", {}))
    return schema


def _untitled(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


# --------------------------------------------------------------------------- responses


def _response_schemas() -> dict[str, Schema]:
    s: dict[str, Schema] = {}
    s["ChatUsage"] = _obj(
        {
            "prompt_tokens": _count(),
            "completion_tokens": _count(),
            "total_tokens": _count(),
            "completion_tokens_details": _obj({"reasoning_tokens": _count()}),
            "cost": {"type": "number", "minimum": 0, "description": "USD, every inner call of the run."},
            "is_byok": {"type": "boolean"},
            "cost_estimated": {
                "type": "boolean",
                "description": "Part of the cost is estimated (a provider reported no usage).",
            },
        },
        description="Token usage and cost of the whole run: the panel, the analyst and the writer.",
    )
    s["FusionAnalysisResult"] = _obj(
        {
            "consensus": _strings(),
            "contradictions": _array(
                _obj({"topic": _str(), "stances": _array(_obj({"model": _str(), "stance": _str()}))})
            ),
            "partial_coverage": _array(_obj({"models": _strings(), "point": _str()})),
            "unique_insights": _array(_obj({"model": _str(), "insight": _str()})),
            "blind_spots": _strings(),
        },
        description="The analyst's comparison of the panel's answers (model ids, not labels).",
    )
    s["FusionSource"] = _obj({"url": _str(), "title": _str()}, description="A page the run searched or fetched.")
    item_properties: Schema = {
        "id": _str(),
        "type": {"const": FUSION_TOOL},
        "status": {"enum": ["in_progress", "completed", "incomplete"]},
        "responses": _array(_obj({"model": _str(), "content": _str()})),
        "analysis": _ref("FusionAnalysisResult"),
        "error": {"type": "string", "description": "Why there is no analysis, or why the run failed."},
        "failed_models": _array(
            _obj({"model": _str(), "error": _str(), "status_code": {"type": "integer"}}, required=["model", "error"])
        ),
        "failure_reason": {"enum": FAILURE_REASONS},
        "sources": _array(_ref("FusionSource")),
    }
    s["OutputFusionServerToolItem"] = _obj(
        item_properties,
        required=["id", "type", "status"],
        description="The openrouter:fusion output item: the panel's answers and the analysis.",
    )
    s["FusionCallRecord"] = _obj(
        {
            "role": {"enum": ["panel", "analyst", "writer", "search", "run"]},
            "model": _str(),
            "slot": {"type": "integer", "minimum": 0, "description": "The member's index (panel calls)."},
            "status": _str(),
            "prompt_tokens": _count(),
            "completion_tokens": _count(),
            "reasoning_tokens": _count(),
            "cost": {"type": "number"},
            "estimated": {"type": "boolean"},
            "ttft_ms": {"type": ["integer", "null"]},
            "duration_ms": {"type": ["integer", "null"]},
        },
        required=[
            "role",
            "model",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "cost",
            "estimated",
            "ttft_ms",
            "duration_ms",
        ],
        description="One call of the run that reached a provider, as billed.",
    )
    s["FusionSummary"] = _obj(
        {
            **item_properties,
            "status": {"enum": ["completed", "incomplete"]},
            "invoked": {
                "type": "boolean",
                "description": "Whether the panel ran: an outer model may answer without calling fusion.",
            },
            "run_id": {"type": "string", "format": "uuid"},
            "conversation_id": {"type": "integer"},
            "conversation_url": {"type": "string", "description": "Where the run can be read in the chatroom."},
            "panel": _strings(),
            "analyst": _str(),
            "writer": _str(),
            "calls": _array(_ref("FusionCallRecord")),
        },
        required=["id", "type", "invoked", "run_id", "conversation_id", "conversation_url"]
        + ["panel", "analyst", "writer", "calls"],
        description=(
            "The openrouter:fusion item of a finished run (only its id and type when the panel did not run), "
            "with the panel, every call and the conversation."
        ),
    )
    s.update(_fusion_call_events())

    # Chat Completions
    finish = {"enum": ["stop", "length", "tool_calls", "error"]}
    s["ChatToolCall"] = _obj(
        {
            "id": _str(),
            "type": {"const": "function"},
            "function": _obj({"name": _str(), "arguments": {"type": "string", "description": "JSON."}}),
        },
        description="A call of one of the client's functions, for the client to run.",
    )
    s["ChatStreamToolCall"] = _obj(
        {"index": _count(), **s["ChatToolCall"]["properties"]}, description="A tool call, whole, in one chunk."
    )
    s["ChatResult"] = _obj(
        {
            "id": _str(),
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": _str(),
            "choices": _one(
                _obj(
                    {
                        "index": {"const": 0},
                        "message": _obj(
                            {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "tool_calls": _array(_ref("ChatToolCall")),
                            },
                            required=["role", "content"],
                        ),
                        "finish_reason": finish,
                    }
                )
            ),
            "usage": _ref("ChatUsage"),
            "fusion": _ref("FusionSummary"),
        },
        description="A chat completion: the fused answer, its usage and the fusion.",
    )
    fusion_events = [_ref(name) for name in FUSION_CALL_EVENTS]
    s["ChatStreamChunk"] = _obj(
        {
            "id": _str(),
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": _str(),
            "choices": _one(
                _obj(
                    {
                        "index": {"const": 0},
                        "delta": _obj(
                            {
                                "role": {"const": "assistant"},
                                "content": _str(),
                                "tool_calls": _array(_ref("ChatStreamToolCall")),
                            },
                            required=[],
                        ),
                        "finish_reason": {"anyOf": [finish, {"type": "null"}]},
                    }
                )
            ),
            "fusion": {
                "anyOf": [*fusion_events, _ref("FusionSummary")],
                "description": "A fusion call event, or in the last chunk the fusion summary.",
            },
            "usage": _ref("ChatUsage"),
            "error": _ref("StreamErrorData"),
        },
        required=["id", "object", "created", "model", "choices"],
        description="A chunk of a streamed completion; `usage` is in the last chunk.",
    )
    s["StreamErrorData"] = _error_data(
        {"type": "integer"}, "Why the streamed run failed (the last chunk, with `finish_reason: error`)."
    )
    s["ChatStreamingResponse"] = _sse_event("ChatStreamChunk")

    # Responses
    part = _obj({"type": {"const": "output_text"}, "text": _str(), "annotations": {"type": "array", "maxItems": 0}})
    s["ResponseOutputText"] = part
    s["OutputMessage"] = _obj(
        {
            "id": _str(),
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "status": {"enum": ["in_progress", "completed", "incomplete"]},
            "content": _array(_ref("ResponseOutputText")),
        },
        description="The fused answer.",
    )
    output_item = {"anyOf": [_ref("OutputFusionServerToolItem"), _ref("OutputMessage")]}
    s["ResponsesUsage"] = _obj(
        {
            "input_tokens": _count(),
            "input_tokens_details": _obj({"cached_tokens": _count()}),
            "output_tokens": _count(),
            "output_tokens_details": _obj({"reasoning_tokens": _count()}),
            "total_tokens": _count(),
            "cost": {"type": "number", "minimum": 0},
        }
    )
    s["OpenResponsesResult"] = _obj(
        {
            "id": _str(),
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "status": {"enum": ["in_progress", "completed", "failed"]},
            "model": _str(),
            "output": _array(output_item),
            "error": {"anyOf": [_obj({"code": _str(), "message": _str()}), {"type": "null"}]},
            "incomplete_details": {"type": "null"},
            "tools": _one(_obj({"type": {"const": FUSION_TOOL}})),
            "tool_choice": {"const": "auto"},
            "parallel_tool_calls": {"const": False},
            "usage": {"anyOf": [_ref("ResponsesUsage"), {"type": "null"}]},
            "metadata": _obj({"conversation_id": _str(), "run_id": {"type": "string", "format": "uuid"}}),
        },
        description="A response: the openrouter:fusion item, then the answer's message.",
    )
    seq = {"sequence_number": {"type": "integer", "minimum": 1}}
    for name, kinds in (
        ("OpenResponsesCreatedEvent", ["response.created"]),
        ("OpenResponsesInProgressEvent", ["response.in_progress"]),
        ("StreamEventsResponseCompleted", ["response.completed"]),
        ("StreamEventsResponseFailed", ["response.failed"]),
    ):
        s[name] = _obj({"type": {"const": kinds[0]}, "response": _ref("OpenResponsesResult"), **seq})
    for name, kind in (
        ("StreamEventsResponseOutputItemAdded", "response.output_item.added"),
        ("StreamEventsResponseOutputItemDone", "response.output_item.done"),
    ):
        s[name] = _obj({"type": {"const": kind}, "output_index": _count(), "item": output_item, **seq})
    text_at = {"item_id": _str(), "output_index": _count(), "content_index": _count()}
    for name, kind in (
        ("ContentPartAddedEvent", "response.content_part.added"),
        ("ContentPartDoneEvent", "response.content_part.done"),
    ):
        s[name] = _obj({"type": {"const": kind}, **text_at, "part": _ref("ResponseOutputText"), **seq})
    logprobs = {"type": "array", "maxItems": 0}
    s["TextDeltaEvent"] = _obj(
        {"type": {"const": "response.output_text.delta"}, **text_at, "delta": _str(), "logprobs": logprobs, **seq}
    )
    s["TextDoneEvent"] = _obj(
        {"type": {"const": "response.output_text.done"}, **text_at, "text": _str(), "logprobs": logprobs, **seq}
    )
    s["StreamEvents"] = {
        "anyOf": [
            _ref(name)
            for name in (
                "OpenResponsesCreatedEvent",
                "OpenResponsesInProgressEvent",
                "StreamEventsResponseCompleted",
                "StreamEventsResponseFailed",
                "StreamEventsResponseOutputItemAdded",
                "StreamEventsResponseOutputItemDone",
                "ContentPartAddedEvent",
                "ContentPartDoneEvent",
                "TextDeltaEvent",
                "TextDoneEvent",
                *FUSION_CALL_EVENTS,
            )
        ]
    }
    s["ResponsesStreamingResponse"] = _sse_event("StreamEvents")

    # Models
    s["Model"] = _obj(
        {
            "id": _str(),
            "canonical_slug": _str(),
            "name": _str(),
            "created": {"type": "integer", "description": "When the preset was made (0 for built-ins)."},
            "description": _str(),
            "context_length": {"type": "null"},
            "architecture": _obj(
                {
                    "modality": {"const": "text->text"},
                    "input_modalities": _one({"const": "text"}),
                    "output_modalities": _one({"const": "text"}),
                    "tokenizer": _str(),
                    "instruct_type": {"type": "null"},
                }
            ),
            "pricing": _obj(
                {
                    "prompt": _decimal(),
                    "completion": _decimal(),
                    "request": {**_decimal(), "description": "USD: the high estimate of one run, short prompt."},
                    "image": _decimal(),
                }
            ),
            "top_provider": _obj(
                {
                    "context_length": {"type": "null"},
                    "max_completion_tokens": {"type": "null"},
                    "is_moderated": {"type": "boolean"},
                }
            ),
            "per_request_limits": {"type": "null"},
            "supported_parameters": _strings(),
            "default_parameters": {"type": "null"},
            "supported_voices": {"type": "null"},
            "links": _obj({"details": _str()}),
            "fusion": _obj(
                {
                    "panel": _strings(),
                    "analyst": {"type": ["string", "null"]},
                    "writer": {"type": ["string", "null"]},
                    "estimate_usd": {
                        "anyOf": [
                            _obj({"low": {"type": "number"}, "high": {"type": "number"}}),
                            {"type": "null"},
                        ],
                        "description": "The estimated cost of one run (short prompt), low and high, in USD.",
                    },
                    "estimate_prompt_tokens": _count(),
                },
                description="The panel this model runs.",
            ),
        },
        description="A fusion model: the default panel, an alias, a built-in preset or one of your presets.",
    )
    s["ModelsListResponse"] = _obj(
        {"data": _array(_ref("Model")), "total_count": _count(), "links": _obj({"next": {"type": "null"}})},
        description="The caller's fusion models.",
    )
    return s


# The FusionCall*Event schemas: name → (type, fields besides item_id, output_index, sequence_number).
FUSION_CALL_EVENTS: dict[str, tuple[str, Schema]] = {
    "FusionCallInProgressEvent": ("in_progress", {}),
    "FusionCallPanelAddedEvent": ("panel.added", {"model": {"type": "string"}}),
    "FusionCallPanelDeltaEvent": ("panel.delta", {"model": {"type": "string"}, "delta": {"type": "string"}}),
    "FusionCallPanelReasoningDeltaEvent": (
        "panel.reasoning.delta",
        {"model": {"type": "string"}, "delta": {"type": "string"}},
    ),
    "FusionCallPanelCompletedEvent": (
        "panel.completed",
        {"model": {"type": "string"}, "content": {"type": "string"}},
    ),
    "FusionCallPanelFailedEvent": ("panel.failed", {"model": {"type": "string"}, "error": {"type": "string"}}),
    "FusionCallAnalysisInProgressEvent": (
        "analysis.in_progress",
        {"analyst_model": {"type": "string"}, "judge_model": {"type": "string", "deprecated": True}},
    ),
    "FusionCallAnalysisCompletedEvent": ("analysis.completed", {"analysis": {"$ref": REF + "FusionAnalysisResult"}}),
    "FusionCallCompletedEvent": ("completed", {}),
}


def _fusion_call_events() -> dict[str, Schema]:
    """The ``response.fusion_call.*`` events (chat.api.shapes.fusion_event). In Chat Completions
    chunks the panel events also carry ``slot``, the member's index in the panel."""
    events = {}
    for name, (kind, fields) in FUSION_CALL_EVENTS.items():
        properties: Schema = {
            "type": {"const": f"response.fusion_call.{kind}"},
            "item_id": _str(),
            "output_index": _count(),
            "sequence_number": {"type": "integer", "minimum": 1},
            **copy.deepcopy(fields),
        }
        optional = []
        if kind.startswith("panel."):
            properties["slot"] = {"type": "integer", "minimum": 0, "description": "Chat Completions chunks only."}
            optional.append("slot")
        if kind == "panel.failed":
            properties["status_code"] = {"type": "integer", "description": "The provider's HTTP status, if any."}
            optional.append("status_code")
        events[name] = _obj(properties, required=[k for k in properties if k not in optional])
    return events


def _sse_event(data: str) -> Schema:
    """One server-sent event whose data is a JSON *data* object, or the ``[DONE]`` sentinel."""
    return {
        "type": "object",
        "description": f"A server-sent event: `data` is a JSON {data}, or `[DONE]` at the end.",
        "properties": {
            "event": {"type": "string"},
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(data)},
                ]
            },
        },
        "required": ["data"],
    }


# --------------------------------------------------------------------------- errors


def _error_schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {
        "ErrorMetadata": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "A machine-readable word: invalid_request, no_token, …"},
                "field": {"type": "string", "description": "The request field at fault, dotted (messages.2.role)."},
                "retry_after": {"type": "number", "description": "Seconds to wait (429)."},
                "left_usd": {"type": ["number", "null"], "description": "What is left of today's limit (402)."},
                "failure_reason": {"enum": FAILURE_REASONS},
                "failed_models": _array(
                    _obj(
                        {"model": _str(), "error": _str(), "status_code": {"type": "integer"}},
                        required=["model", "error"],
                    )
                ),
            },
            "required": ["reason"],
            "additionalProperties": False,
        }
    }
    for status, (name, title, _) in ERRORS.items():
        schemas[f"{name}ResponseErrorData"] = _error_data({"const": status}, f"Error data for {name}Response")
        schemas[f"{name}Response"] = _obj({"error": _ref(f"{name}ResponseErrorData")}, description=title)
    return schemas


def _error_data(code: Schema, description: str) -> Schema:
    return _obj(
        {"code": code, "message": {"type": "string"}, "metadata": _ref("ErrorMetadata")},
        description=description,
    )


# --------------------------------------------------------------------------- small builders


def _obj(properties: Schema, *, required: list[str] | None = None, description: str | None = None) -> Schema:
    """A closed object; every property is required unless *required* says otherwise."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> Schema:
    return {"$ref": REF + name}


def _str() -> Schema:
    return {"type": "string"}


def _strings() -> Schema:
    return {"type": "array", "items": {"type": "string"}}


def _count() -> Schema:
    return {"type": "integer", "minimum": 0}


def _decimal() -> Schema:
    return {"type": "string", "pattern": r"^\d+(\.\d+)?$"}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _one(items: Schema) -> Schema:
    return {"type": "array", "items": items, "minItems": 1, "maxItems": 1}
