"""The request bodies the API accepts, validated with pydantic.

Field names and shapes follow OpenAI's and OpenRouter's Chat Completions and Responses requests
(../shared/reference/openrouter_openapi.yaml). Fields a client commonly sends that do not change
a fusion (``n`` of 1, ``user``, ``stream_options``, ``top_p`` …) are accepted and ignored, as
OpenRouter ignores parameters a model does not support; a value we cannot honour is a 400 that
names its field.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chat.api.errors import ApiError, invalid
from chat.fusion.types import MAX_TOKENS_LIMIT

MAX_MESSAGES = 200

T = TypeVar("T", bound=BaseModel)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


TEXT_PARTS = ("text", "input_text", "output_text")


class ContentPart(_Loose):
    type: str
    text: str | None = None


class ToolCallFunction(_Loose):
    name: str
    arguments: str = ""


class ToolCall(_Loose):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class _TextContent(_Loose):
    """A message whose ``content`` is text, or a list of text parts (other parts are refused:
    the panel reads text only)."""

    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else []:
            if part.type not in TEXT_PARTS:
                raise ValueError(f"content parts of type {part.type!r} are not supported; send text")
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class ChatMessage(_TextContent):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Reasoning(_Loose):
    effort: Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    enabled: bool | None = None


class ToolSpec(_Loose):
    type: str
    parameters: dict[str, Any] | None = None
    function: dict[str, Any] | None = None


class FusionPluginBody(_Loose):
    id: str
    enabled: bool | None = None
    analysis_models: list[str] | None = Field(default=None, min_length=1, max_length=8)
    model: str | None = None
    preset: str | None = None
    max_tool_calls: int | None = Field(default=None, ge=1, le=16)
    tools: list[ToolSpec] | None = Field(default=None, max_length=8)


class ChatCompletionsBody(_Loose):
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    reasoning: Reasoning | None = None
    plugins: list[dict[str, Any]] | None = None
    tools: list[ToolSpec] | None = None
    n: int | None = Field(default=None, ge=1, le=1)


class ResponsesInputItem(_TextContent):
    type: str | None = None
    role: Literal["system", "developer", "user", "assistant"] | None = None


class ResponsesBody(_Loose):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[ResponsesInputItem]
    instructions: str | None = None
    stream: bool = False
    tools: list[ToolSpec] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    reasoning: Reasoning | None = None
    plugins: list[dict[str, Any]] | None = None


def parse_body(model: type[T], data: Any) -> T:
    """*data* as *model*, or a 400 that names the first bad field and says what is wrong with it."""
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    if _has_lone_surrogate(data):
        raise invalid("The request body has a lone surrogate escape (such as \\ud800); send valid Unicode text.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def _has_lone_surrogate(data: Any) -> bool:
    """JSON may escape half of a UTF-16 pair (``"\\ud800"``): json.loads reads it into a str that no
    UTF-8 encoder, and so no database, accepts."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _first_error(exc: ValidationError) -> ApiError:
    # A union reports each branch; the deepest location is the one the data was meant to match.
    error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    # Union members add their type name to the location ("content.str"): keep the data's path.
    loc = [str(p) for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper()) and "[" not in str(p)]
    loc = [p for p in loc if p not in ("str", "list", "function-after", "literal")]
    field = ".".join(loc) or None
    message = str(error.get("msg") or "is invalid").removeprefix("Value error, ")
    return invalid(f"{field}: {message}" if field else message, field=field)
