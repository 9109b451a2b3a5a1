"""Typed requests, results and events of the fusion engine, and what it expects of its parts.

Owns the engine's vocabulary: the limits (``MAX_PANEL_MEMBERS``, ``MAX_TOKENS_LIMIT``), the
member statuses and run phases, requests, client events, call records, pipeline events, and the
``Client`` / ``Tools`` protocols the pipeline is given. Everyone else reads them from here.

Plain dataclasses, enums and protocols: imports nothing but the standard library (no Django, no
httpx, no other engine module). Event ``type`` strings mirror OpenRouter's fusion stream taxonomy
(``response.fusion_call.panel.delta`` → ``panel.delta``) so clients port easily.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

# --------------------------------------------------------------------------- limits and vocabularies

MAX_PANEL_MEMBERS = 8  # the panel takes 1–8 models
MAX_TOKENS_LIMIT = 200_000  # the largest ``max_tokens`` a model spec may ask for


class MemberStatus(str, Enum):
    """What a panel member is doing; the run layer checkpoints it, the browser shows it."""

    WAITING = "waiting"  # added, no token yet
    THINKING = "thinking"  # reasoning tokens only so far
    STREAMING = "streaming"  # content tokens arriving
    SEARCHING = "searching"  # a tool call is running
    COMPLETE = "complete"
    FAILED = "failed"
    STOPPED = "stopped"


# Statuses of a member that has not ended: a run that ends (or a process that died) leaves none.
LIVE_STATUSES: frozenset[MemberStatus] = frozenset(
    {MemberStatus.WAITING, MemberStatus.THINKING, MemberStatus.STREAMING, MemberStatus.SEARCHING}
)


class RunPhase(str, Enum):
    """Where a run is: the panel answers, the analyst compares, the writer writes the final answer."""

    PANEL = "panel"
    ANALYSIS = "analysis"
    FINAL = "final"
    DONE = "done"


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class Provider:
    """An OpenAI-compatible endpoint. ``api_key`` never appears in repr or errors."""

    name: str
    base_url: str
    api_key: str = field(default="", repr=False)
    # OpenRouter and OpenAI accept response_format={"type": "json_object"}; others may not.
    supports_response_format: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_openrouter(self) -> bool:
        """OpenRouter itself (by name or address): its usage accounting, reasoning and server tools."""
        return self.name == "openrouter" or "openrouter.ai" in (self.base_url or "")


@dataclass(frozen=True)
class Limits:
    """Separate limits of one streamed call, in seconds."""

    connect: float = 10.0
    first_token: float = 60.0  # request sent → first content (or reasoning/tool) token
    idle: float = 60.0  # gap between content chunks; keep-alive comments do not reset it
    total: float = 600.0  # whole call, retries included
    max_retries: int = 2  # only before any content arrived
    backoff_base: float = 0.5
    max_retry_after: float = 30.0
    # Most characters of one call's output (content and tool-call arguments; reasoning is capped
    # separately at the same number) that are kept and forwarded. Past it the stream is closed and
    # the call ends with ``Finish(reason="truncated", truncated_at=N)``. None or 0: no cap.
    max_output_chars: int | None = 200_000


# --------------------------------------------------------------------------- requests

ReasoningEffort = Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"]


@dataclass
class ModelSpec:
    """One model call's settings. ``model`` is ``provider:model`` or a plain OpenRouter id."""

    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    system_prompt: str | None = None
    label: str | None = None  # display name only


Message = dict[str, Any]  # {"role": "user"|"assistant"|"system", "content": str}

MAX_TOOL_CALLS_LIMIT = 16


@dataclass
class ResearchSettings:
    """Web research for the panel (a preset's ``research``).

    ``web_tools`` offers the injected tools (``web_search`` / ``web_fetch``) to every member, up to
    ``max_tool_calls`` executed calls each (1–16); the engine never builds backends itself.
    ``server_tools`` makes members served by OpenRouter use OpenRouter's own server tools
    (``openrouter:web_search`` / ``openrouter:web_fetch``) instead of the local loop.
    Domain lists are host names; subdomains match. ``analyst_tools`` also lets the analyst check
    claims with the same tools (same budget) before it writes its JSON.
    """

    web_tools: bool = False
    max_tool_calls: int = 4
    server_tools: bool = False
    excluded_domains: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()
    allowed_domains: tuple[str, ...] = ()
    analyst_tools: bool = False

    @property
    def budget(self) -> int:
        """``max_tool_calls`` clamped to 1–16."""
        try:
            value = int(self.max_tool_calls)
        except (TypeError, ValueError):
            value = 4
        return max(1, min(MAX_TOOL_CALLS_LIMIT, value))


@dataclass
class OuterRequest:
    """The conversation an outer model reads (OpenAI shape: the client's own tool calls and tool
    results kept) and the client's function tools, which the outer model may call too: those
    calls end the run and go back to the client (``OuterToolCalls``)."""

    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FusionRequest:
    """One fusion run.

    ``messages`` is the conversation so far, ending with the current user prompt; it is what
    the analyst and the writer see. ``member_messages`` optionally gives panel member *i* its
    own thread instead (per-member follow-up mode); missing entries fall back to ``messages``.
    """

    messages: list[Message]
    panel: list[ModelSpec]
    analyst: ModelSpec
    writer: ModelSpec
    fallback_analyst: ModelSpec | None = None
    fallback_writer: ModelSpec | None = None
    member_messages: dict[int, list[Message]] | None = None
    research: ResearchSettings | None = None
    # The ``openrouter:fusion`` server tool: the writer is an outer model that is offered a
    # ``fusion`` function, and the panel runs only if it calls it (chat.fusion.outer).
    outer: OuterRequest | None = None

    @property
    def question(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content") or "")
        return ""


# --------------------------------------------------------------------------- usage


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None  # provider-reported (OpenRouter usage.cost), in credits/USD
    # Part of it was estimated by the server (chat.spend.call_usage): a cut stream reported nothing.
    estimated: bool = False

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.total_tokens += other.total_tokens
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
        self.estimated = self.estimated or other.estimated

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.estimated:  # only estimates say so
            del d["estimated"]
        return d


# --------------------------------------------------------------------------- errors

# Kinds a user can act on. The client maps HTTP status / error payloads onto these.
ErrorKind = Literal[
    "invalid_key",  # 401
    "insufficient_credits",  # 402
    "rate_limited",  # 429
    "moderation",  # 403 / content filter
    "model_not_found",  # 404 / "not a valid model ID"
    "bad_request",  # other 400
    "timeout",  # connect / first token / idle / total
    "upstream_error",  # 5xx, error object mid-stream, malformed
    "incomplete",  # stream ended without [DONE] or finish reason
    "empty",  # finished but produced no content
    "cancelled",
    "network",  # connection refused / reset
    "invalid_output",  # the call worked but its output is unusable (e.g. analysis JSON)
]

ERROR_MESSAGES: dict[str, str] = {
    "invalid_key": "The provider rejected the API key. Check the key configured for this provider.",
    "insufficient_credits": "The provider account is out of credits. Add credits or pick a cheaper model.",
    "rate_limited": "The provider is rate limiting requests. Wait a moment and retry.",
    "moderation": "The provider's moderation refused this request.",
    "model_not_found": "The provider does not know this model id. Check the spelling.",
    "bad_request": "The provider rejected the request as invalid.",
    "timeout": "The model took too long to answer.",
    "upstream_error": "The provider returned an error.",
    "incomplete": "The stream ended before the model finished its answer.",
    "empty": "The model finished without writing an answer.",
    "cancelled": "Stopped.",
    "network": "Could not reach the provider.",
    "invalid_output": "The model's output could not be used.",
}


@dataclass
class ProviderError:
    kind: str
    message: str  # short, human, never contains the API key
    status_code: int | None = None
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- client events
# What chat/fusion/client.py yields for one streamed completion.


@dataclass
class ContentDelta:
    text: str


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # a fragment; arguments arrive split across chunks


@dataclass
class UsageReport:
    usage: Usage


TRUNCATED = "truncated"  # Finish.reason when the client closed the stream at max_output_chars


@dataclass
class Finish:
    reason: str  # "stop", "length", "tool_calls", "content_filter", "truncated", …
    malformed_chunks: int = 0  # chunks of invalid JSON that were skipped
    truncated_at: int | None = None  # set with reason "truncated": the cap, in characters


def truncation_note(chars: int) -> str:
    """What a card says when a call's output was cut at the cap."""
    return f"Output truncated at {chars:,} characters."


@dataclass
class StreamError:
    error: ProviderError
    partial_text: str = ""  # content received before the error
    malformed_chunks: int = 0  # chunks of invalid JSON that were skipped


@dataclass
class SourcesReport:
    """What a provider's own (server-side) tools report: ``url_citation`` annotations of the
    message (``citations``: [{url, title, content}]) and/or ``usage.server_tool_use``
    (``{web_search_requests, tool_calls_requested, tool_calls_executed}``)."""

    citations: list[dict[str, str]] = field(default_factory=list)
    server_tool_use: dict[str, int] | None = None


ClientEvent = ContentDelta | ReasoningDelta | ToolCallDelta | UsageReport | Finish | StreamError | SourcesReport


@dataclass
class ToolCall:
    """A whole tool call, assembled from its ToolCallDelta fragments."""

    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""  # JSON text, as the model wrote it


def merge_tool_call(calls: dict[int, ToolCall], fragment: ToolCallDelta) -> None:
    """Add one streamed fragment to the tool call it belongs to (by index)."""
    call = calls.setdefault(fragment.index, ToolCall(index=fragment.index))
    call.id = call.id or fragment.id
    call.name = call.name or fragment.name or ""
    call.arguments += fragment.arguments or ""


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds every duration of these types is given in."""
    return int(round(seconds * 1000))


@dataclass
class Completion:
    """A whole completion, as ``ChatClient.complete`` returns it."""

    text: str = ""
    reasoning: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None  # None when the call failed
    error: ProviderError | None = None
    ttft_ms: int | None = None  # to the first content, reasoning or tool token
    duration_ms: int = 0
    malformed_chunks: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    truncated_at: int | None = None  # the output was cut at max_output_chars


@dataclass
class CallRecord:
    """What every model call records (panel member, analyst, repair, writer)."""

    role: str  # "panel" | "analyst" | "writer"
    model: str
    status: str = "pending"  # pending | running | complete | failed | cancelled
    ttft_ms: int | None = None
    duration_ms: int | None = None
    usage: Usage = field(default_factory=Usage)
    error: ProviderError | None = None
    malformed_chunks: int = 0
    slot: int | None = None  # panel member's index in the request; None for analyst/writer
    # Characters sent and streamed (content + reasoning) by the requests of this call whose usage
    # the provider did not report, e.g. a stream cut by a stop: what its cost is estimated from.
    prompt_chars: int = 0
    streamed_chars: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = self.usage.to_dict()
        d["error"] = self.error.to_dict() if self.error else None
        return d


# --------------------------------------------------------------------------- pipeline events
# What chat/fusion/pipeline.py yields. ``slot`` is the panel member's index in the request.


@dataclass
class PanelAdded:
    """A member (re)starts. A repeated PanelAdded for a slot (attempt > 1) means the member was
    retried: consumers reset that slot's text, the new attempt streams from scratch."""

    slot: int
    model: str
    type: str = "panel.added"
    attempt: int = 1


@dataclass
class PanelDelta:
    slot: int
    model: str
    delta: str
    type: str = "panel.delta"


@dataclass
class PanelReasoningDelta:
    slot: int
    model: str
    delta: str
    type: str = "panel.reasoning.delta"


@dataclass
class PanelCompleted:
    slot: int
    model: str
    content: str
    record: CallRecord
    type: str = "panel.completed"
    # Pages this member searched, fetched or cited: [{url, title, kind}], deduplicated.
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PanelFailed:
    slot: int
    model: str
    error: ProviderError
    partial_content: str
    record: CallRecord
    type: str = "panel.failed"
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PanelToolStarted:
    """A member called a tool (``web_search`` / ``web_fetch``; ``openrouter:web_search`` for
    OpenRouter's server tools). ``arguments`` is the parsed JSON the model wrote
    (``{"raw": text}`` when it was not a JSON object)."""

    slot: int
    model: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    type: str = "panel.tool.started"


@dataclass
class PanelToolFinished:
    """A tool call ended. ``ok`` False: ``summary`` is the tool error the model was given
    (e.g. "blocked: private address"); the run goes on either way."""

    slot: int
    model: str
    call_id: str
    name: str
    ok: bool
    summary: str
    sources: list[dict[str, str]] = field(default_factory=list)  # [{url, title, kind}]
    type: str = "panel.tool.finished"


@dataclass
class PanelNote:
    """Something a user should know about a member that is not a failure, e.g. that it
    answered without web research because it cannot use tools."""

    slot: int
    model: str
    message: str
    type: str = "panel.note"


@dataclass
class AnalysisStarted:
    analyst_model: str
    type: str = "analysis.in_progress"


@dataclass
class AnalysisCompleted:
    analyst_model: str
    analysis: dict[str, Any]  # the OpenRouter FusionAnalysisResult shape, model ids not labels
    label_map: dict[str, str]  # "Response A" → model id ("model#2" for a model listed a second time)
    records: list[CallRecord]
    type: str = "analysis.completed"
    notes: list[str] = field(default_factory=list)  # e.g. unknown labels dropped during validation


@dataclass
class AnalysisDegraded:
    reason: str  # human sentence: why there is no analysis
    records: list[CallRecord]
    type: str = "analysis.degraded"


@dataclass
class FinalStarted:
    writer_model: str
    type: str = "final.started"


@dataclass
class FinalDelta:
    delta: str
    type: str = "final.delta"


@dataclass
class OuterToolCalls:
    """The outer model called the client's own function tools: the run ends with them, for the
    client to run and send back (``[{id, type: "function", function: {name, arguments}}]``)."""

    calls: list[dict[str, Any]]
    type: str = "outer.tool_calls"


@dataclass
class RunCompleted:
    answer: str
    analysis: dict[str, Any] | None
    analysis_error: str | None
    failed_models: list[str]
    records: list[CallRecord]  # every call: panel, analyst(s), writer(s)
    usage: Usage  # totals
    # ms: panel, analysis, synthesis, total, final_ttft; and final_truncated_at (characters, not
    # ms) when the fused answer was cut at Limits.max_output_chars.
    timings: dict[str, int]
    type: str = "completed"
    # Every source of the run, deduplicated: [{url, title, members: [model ids]}].
    sources: list[dict[str, Any]] = field(default_factory=list)
    # {"searches": n, "fetches": n, "server_tool_use": {web_search_requests, …}}
    tool_usage: dict[str, Any] = field(default_factory=dict)


FailureKind = Literal[
    "all_panels_failed",
    "invalid_model",
    "invalid_key",
    "rate_limited",
    "insufficient_credits",
    "writer_failed",
    "cancelled",
    "invalid_request",
]


@dataclass
class RunFailed:
    kind: str  # a FailureKind
    message: str
    failed_models: list[str]
    records: list[CallRecord]
    usage: Usage
    type: str = "failed"


PipelineEvent = (
    PanelAdded
    | PanelDelta
    | PanelReasoningDelta
    | PanelCompleted
    | PanelFailed
    | PanelToolStarted
    | PanelToolFinished
    | PanelNote
    | AnalysisStarted
    | AnalysisCompleted
    | AnalysisDegraded
    | FinalStarted
    | FinalDelta
    | OuterToolCalls
    | RunCompleted
    | RunFailed
)


# --------------------------------------------------------------------------- tools
# What a ``Tools`` call returns (chat.fusion.tools.WebTools makes them; the engine reads them).

SourceKind = Literal["search", "fetch"]


@dataclass
class Source:
    url: str
    title: str | None
    kind: SourceKind


@dataclass
class ToolOutcome:
    ok: bool
    content_for_model: str  # the tool message's content
    summary: str  # short, for the UI ("Searched “x” — 5 results", "Fetch failed: too large")
    sources: list[Source] = field(default_factory=list)


# --------------------------------------------------------------------------- what the pipeline is given


class Registry(Protocol):
    """Which provider serves a model id (``chat.fusion.providers.ProviderRegistry``)."""

    def resolve(self, model: str) -> tuple[Provider, str]: ...


class Client(Protocol):
    """A chat-completions client (``chat.fusion.client.ChatClient``, or a test's fake).

    ``stream`` ends with exactly one ``Finish`` or ``StreamError`` and never raises for provider
    trouble; closing it closes the upstream call. ``registry`` tells which provider serves a
    model (JSON mode, server tools); a client without one gets neither.
    """

    @property
    def registry(self) -> Registry | None: ...

    def stream(
        self,
        spec: ModelSpec,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> AsyncGenerator[ClientEvent, None]: ...

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> Completion: ...


class Tools(Protocol):
    """The web tools of one run (``chat.fusion.tools.WebTools``).

    ``call`` never raises but for cancellation: a failure is a ``ToolOutcome`` with ``ok`` False.
    """

    @property
    def available(self) -> list[str]: ...

    def tool_schemas(self) -> list[dict[str, Any]]: ...

    async def call(self, name: str, arguments_json: str) -> ToolOutcome: ...
