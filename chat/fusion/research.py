"""Web research of one answer: the ``ToolRunner`` that panel members and the analyst share.

Owns running a turn's tool calls within a budget (concurrently; one ``tool`` message per call;
the budget-spent reply for calls past it), counting searches and fetches, collecting sources
(through ``chat.fusion.sources``) into a ``ResearchLog``, turning OpenRouter's server-tool
reports into the same log, and what a member is offered: its ``ToolMode``, the tools guidance in
its system prompt, OpenRouter's server tool definitions.

Knows nothing of panel events or phases: whoever wants events passes a ``ToolListener``.
Imports the engine's types, prompts and sources only: no Django, no httpx, no phase module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from chat.fusion import prompts
from chat.fusion.sources import merge_sources
from chat.fusion.types import Message, ModelSpec, ProviderError, ResearchSettings, ToolCall, ToolOutcome, Tools

log = logging.getLogger(__name__)

ToolMode = Literal["none", "local", "server"]

NO_TOOLS_NOTE = "This model can't use tools; it answered without web research."
BUDGET_SPENT_REPLY = "Not run: the budget of {n} tool calls for this answer is spent. Answer now with what you have."
_DESCRIBED = {"web_search": "web_search(query) searches the web", "web_fetch": "web_fetch(url) reads one page"}
# How providers say a model cannot take ``tools`` (OpenRouter: 404 "No endpoints found that
# support tool use"; others: 400 "… does not support tools", "tool calling is not supported").
_NO_TOOL_SUPPORT = re.compile(
    r"(?i)(support(s|ing)? tool|tool use|does not support tools|tools? (is|are) not supported|"
    r"tool.?calling|function.?calling)"
)


@dataclass
class ResearchLog:
    """What one answer looked up (a member's attempt, or the analyst of a run)."""

    sources: list[dict[str, str]] = field(default_factory=list)  # [{url, title, kind}], deduplicated
    searches: int = 0
    fetches: int = 0
    server_tool_use: dict[str, int] = field(default_factory=dict)  # OpenRouter's counts, summed
    calls: int = 0  # executed tool calls and server-tool reports: what the budget counts

    def count(self, name: str) -> None:
        if name == "web_search":
            self.searches += 1
        elif name == "web_fetch":
            self.fetches += 1


class ToolListener(Protocol):
    """Told about each executed tool call (a panel member turns these into panel events)."""

    def tool_started(self, call_id: str, name: str, arguments: dict[str, Any]) -> None: ...

    def tool_finished(self, call_id: str, name: str, ok: bool, summary: str, sources: list[dict[str, str]]) -> None: ...


class ToolRunner:
    """Runs the tool calls of one answer against ``tools``, at most ``budget`` of them.

    ``call_prefix`` names calls a provider sent without an id (``call_<slot>_<n>``,
    ``call_analyst_<n>``). Nothing here raises but cancellation: an unknown tool or a tool that
    crashed is a failed outcome the model reads, like any tool error.
    """

    def __init__(
        self,
        tools: Tools,
        budget: int,
        research: ResearchLog,
        *,
        call_prefix: str,
        listener: ToolListener | None = None,
    ) -> None:
        self.tools, self.budget, self.research = tools, budget, research
        self._call_prefix, self._listener = call_prefix, listener
        self.used = 0  # calls executed by this runner (a fallback analyst gets a runner of its own)
        self._ids_given = 0

    @property
    def spent(self) -> bool:
        return self.used >= self.budget

    def schemas(self) -> list[dict[str, Any]]:
        return self.tools.tool_schemas()

    async def run(self, calls: list[ToolCall], text: str) -> list[Message]:
        """Execute a turn's tool calls concurrently, within the budget; the messages to append."""
        ids = self._ids(calls)
        run_now = calls[: max(0, self.budget - self.used)]
        self.used += len(run_now)
        self.research.calls += len(run_now)
        replies = await asyncio.gather(*(self._run_one(call, ids[i]) for i, call in enumerate(run_now)))
        spent = [self._spent_reply()] * (len(calls) - len(run_now))
        return tool_messages(text, calls, ids, [*replies, *spent])

    def decline(self, calls: list[ToolCall], text: str) -> list[Message]:
        """Answer a turn's calls without running them: the budget is spent."""
        return tool_messages(text, calls, self._ids(calls), [self._spent_reply()] * len(calls))

    async def _run_one(self, call: ToolCall, call_id: str) -> str:
        """One call; returns what the model reads."""
        name = call.name or ""
        if self._listener is not None:
            self._listener.tool_started(call_id, name, parse_arguments(call.arguments))
        outcome = await self._outcome(name, call.arguments or "{}")
        self.research.count(name)
        sources = merge_sources(self.research.sources, outcome.sources)
        summary = outcome.summary or ("done" if outcome.ok else "failed")
        if self._listener is not None:
            self._listener.tool_finished(call_id, name, outcome.ok, summary, sources)
        return outcome.content_for_model or summary

    async def _outcome(self, name: str, arguments: str) -> ToolOutcome:
        available = self.tools.available
        if name not in available:
            offered = ", ".join(available) or "none"
            return ToolOutcome(
                False, f"error: unknown tool {name[:60]!r} (available: {offered})", f"unknown tool {name[:60]!r}"
            )
        try:
            return await self.tools.call(name, arguments)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Tool %s crashed", name)
            return ToolOutcome(False, "error: the tool failed internally", "internal error")

    def _ids(self, calls: list[ToolCall]) -> list[str]:
        ids = []
        for call in calls:
            self._ids_given += 1
            ids.append(call.id or f"{self._call_prefix}{self._ids_given}")
        return ids

    def _spent_reply(self) -> str:
        return BUDGET_SPENT_REPLY.format(n=self.budget)


def record_server_tools(
    research: ResearchLog, citations: Iterable[dict[str, str]], server_tool_use: dict[str, int]
) -> tuple[str, list[dict[str, str]]] | None:
    """Log what OpenRouter's own tools did in one turn; its summary and cited sources, or None
    when they did nothing."""
    if not citations and not server_tool_use:
        return None
    for key, value in server_tool_use.items():
        research.server_tool_use[key] = research.server_tool_use.get(key, 0) + value
    sources = merge_sources(research.sources, [{**c, "kind": "citation"} for c in citations])
    research.calls += 1
    searches = server_tool_use.get("web_search_requests") or server_tool_use.get("tool_calls_executed") or 0
    if searches:
        first = f"OpenRouter ran {searches} web search{'es' if searches != 1 else ''}"
    else:
        first = "OpenRouter's web tools were used"
    return f"{first}; {len(sources)} source{'s' if len(sources) != 1 else ''} cited", sources


def tool_mode(
    research: ResearchSettings | None,
    tools: Tools | None,
    *,
    known_without_tools: bool,
    served_by_openrouter: bool,
) -> tuple[ToolMode, str | None]:
    """How a member does research ("none" | "local" | "server"), and a note for the user or None."""
    if research is None or not research.web_tools:
        return "none", None
    if known_without_tools:
        return "none", NO_TOOLS_NOTE
    if research.server_tools and served_by_openrouter:
        return "server", None
    if tools is not None and tools.available:
        return "local", None
    return "none", None


def with_tools_guidance(spec: ModelSpec, mode: ToolMode, tools: Tools | None) -> ModelSpec:
    """The member's spec with a short note on the tools it has (and how to cite)."""
    if mode == "local" and tools is not None:
        offered = "; ".join(_DESCRIBED.get(name, name) for name in tools.available)
    elif mode == "server":
        offered = "web search and web page fetching are available as tools"
    else:
        return spec
    guidance = prompts.MEMBER_TOOLS_GUIDANCE.format(tools=offered)
    system = f"{spec.system_prompt}\n\n{guidance}" if spec.system_prompt else guidance
    return replace(spec, system_prompt=system)


def server_tool_defs(research: ResearchSettings) -> list[dict[str, Any]]:
    """OpenRouter's ``openrouter:web_search`` / ``openrouter:web_fetch`` for these settings."""
    search: dict[str, Any] = {"max_uses": research.budget}
    if research.allowed_domains:  # OpenRouter takes one of allowed / excluded
        search["allowed_domains"] = list(research.allowed_domains)
    elif research.excluded_domains:
        search["excluded_domains"] = list(research.excluded_domains)
    fetch: dict[str, Any] = {"max_uses": research.budget}
    if research.allowed_domains:
        fetch["allowed_domains"] = list(research.allowed_domains)
    if research.blocked_domains:
        fetch["blocked_domains"] = list(research.blocked_domains)
    return [
        {"type": "openrouter:web_search", "parameters": search},
        {"type": "openrouter:web_fetch", "parameters": fetch},
    ]


def lacks_tool_support(error: ProviderError) -> bool:
    """The provider refused the request because this model cannot take tools."""
    if error.kind not in ("bad_request", "model_not_found", "upstream_error") and error.status_code not in (
        400,
        404,
        422,
    ):
        return False
    return bool(_NO_TOOL_SUPPORT.search(error.message or ""))


def tool_messages(text: str, calls: list[ToolCall], ids: list[str], replies: list[str]) -> list[Message]:
    """The assistant message that made *calls*, then one ``tool`` message per call."""
    assistant: Message = {
        "role": "assistant",
        # null rather than "": some providers reject an empty text block.
        "content": text or None,
        "tool_calls": [
            {"id": ids[i], "type": "function", "function": {"name": call.name, "arguments": call.arguments or "{}"}}
            for i, call in enumerate(calls)
        ],
    }
    return [assistant, *({"role": "tool", "tool_call_id": ids[i], "content": replies[i]} for i in range(len(calls)))]


def parse_arguments(text: str) -> dict[str, Any]:
    """The arguments a model wrote, as an object (``{"raw": text}`` when they are not one)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"raw": (text or "")[:500]}
    return value if isinstance(value, dict) else {"raw": (text or "")[:500]}
