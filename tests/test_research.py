"""The ToolRunner (chat/fusion/research.py): budget, failing tools, sources, one runner for all.

Unit tests drive a ``ToolRunner`` with a fake ``Tools``; the last class runs whole fusions over
real HTTP against the scripted upstream to show a member and the analyst go through the same
runner (same budget rule, same error replies, same sources). No database, no network but
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from chat.fusion.client import ChatClient
from chat.fusion.pipeline import FusionRun
from chat.fusion.providers import ProviderRegistry
from chat.fusion.research import BUDGET_SPENT_REPLY, ResearchLog, ToolRunner, record_server_tools
from chat.fusion.types import (
    FusionRequest,
    Limits,
    ModelSpec,
    PanelToolFinished,
    Provider,
    ResearchSettings,
    RunCompleted,
    Source,
    ToolCall,
    ToolOutcome,
)
from chat.testing.scripted import ScriptedUpstream


class FakeTools:
    """A ``types.Tools`` that answers every call at once, or as ``behaviour`` says."""

    def __init__(self, available: tuple[str, ...] = ("web_search", "web_fetch"), behaviour: Any = None) -> None:
        self._available = available
        self.behaviour = behaviour
        self.calls: list[tuple[str, str]] = []

    @property
    def available(self) -> list[str]:
        return list(self._available)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": name}} for name in self._available]

    async def call(self, name: str, arguments_json: str) -> ToolOutcome:
        self.calls.append((name, arguments_json))
        if self.behaviour is not None:
            return await self.behaviour(name, arguments_json)
        args = json.loads(arguments_json or "{}")
        url = args.get("url") or f"https://example.com/{len(self.calls)}"
        return ToolOutcome(
            ok=True,
            content_for_model=f"result of {name}",
            summary=f"{name} done",
            sources=[Source(url=url, title=f"Page {len(self.calls)}", kind="fetch")],
        )


class Listener:
    def __init__(self) -> None:
        self.started: list[tuple[str, str, dict[str, Any]]] = []
        self.finished: list[tuple[str, str, bool, str, list[dict[str, str]]]] = []

    def tool_started(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        self.started.append((call_id, name, arguments))

    def tool_finished(self, call_id: str, name: str, ok: bool, summary: str, sources: list[dict[str, str]]) -> None:
        self.finished.append((call_id, name, ok, summary, sources))


def calls(*names: str, with_ids: bool = False) -> list[ToolCall]:
    return [
        ToolCall(
            index=i, id=f"id{i}" if with_ids else None, name=n, arguments=json.dumps({"url": f"https://x.test/{i}"})
        )
        for i, n in enumerate(names)
    ]


def runner(tools: FakeTools, budget: int = 4, listener: Listener | None = None, prefix: str = "call_0_") -> ToolRunner:
    return ToolRunner(tools, budget, ResearchLog(), call_prefix=prefix, listener=listener)


class TestTheBudget:
    async def test_calls_past_the_budget_are_answered_unrun(self) -> None:
        tools = FakeTools()
        r = runner(tools, budget=2)
        messages = await r.run(calls("web_fetch", "web_fetch", "web_fetch"), "Let me look.")
        assert len(tools.calls) == 2 and r.spent
        assistant, *replies = messages
        assert assistant["role"] == "assistant" and assistant["content"] == "Let me look."
        assert [c["id"] for c in assistant["tool_calls"]] == [m["tool_call_id"] for m in replies]
        assert [m["content"] for m in replies] == ["result of web_fetch"] * 2 + [BUDGET_SPENT_REPLY.format(n=2)]
        assert r.research.calls == 2

    async def test_a_spent_budget_declines_every_call_without_running_it(self) -> None:
        tools = FakeTools()
        r = runner(tools, budget=1)
        await r.run(calls("web_search"), "")
        messages = r.decline(calls("web_search", "web_fetch"), "")
        assert len(tools.calls) == 1
        assert messages[0]["content"] is None  # null, not "": some providers reject an empty text block
        assert [m["content"] for m in messages[1:]] == [BUDGET_SPENT_REPLY.format(n=1)] * 2

    async def test_the_calls_of_one_turn_run_concurrently(self) -> None:
        both_started = asyncio.Event()
        running = 0

        async def slow(name: str, arguments: str) -> ToolOutcome:
            nonlocal running
            running += 1
            if running == 2:
                both_started.set()
            await asyncio.wait_for(both_started.wait(), 2)
            return ToolOutcome(ok=True, content_for_model="ok", summary="ok")

        r = runner(FakeTools(behaviour=slow))
        await r.run(calls("web_fetch", "web_fetch"), "")
        assert both_started.is_set()

    async def test_ids_a_provider_left_out_are_numbered_after_the_prefix(self) -> None:
        r = runner(FakeTools(), budget=1, prefix="call_analyst_")
        first = await r.run(calls("web_fetch", "web_fetch"), "")
        second = r.decline(calls("web_fetch"), "")
        ids = [c["id"] for c in first[0]["tool_calls"]] + [c["id"] for c in second[0]["tool_calls"]]
        assert ids == ["call_analyst_1", "call_analyst_2", "call_analyst_3"]
        given = await runner(FakeTools()).run(calls("web_fetch", with_ids=True), "")
        assert given[1]["tool_call_id"] == "id0"


class TestFailingTools:
    async def test_a_tool_that_crashes_is_an_error_the_model_reads(self) -> None:
        async def crash(name: str, arguments: str) -> ToolOutcome:
            raise RuntimeError("boom")

        listener = Listener()
        r = runner(FakeTools(behaviour=crash), listener=listener)
        messages = await r.run(calls("web_fetch"), "")
        assert messages[1]["content"] == "error: the tool failed internally"
        assert listener.finished[0][2:4] == (False, "internal error")
        assert r.research.fetches == 1  # it was attempted, and counts

    async def test_an_unknown_tool_is_refused_without_calling_anything(self) -> None:
        tools = FakeTools(available=("web_fetch",))
        listener = Listener()
        messages = await runner(tools, listener=listener).run(calls("web_search"), "")
        assert tools.calls == []
        assert messages[1]["content"] == "error: unknown tool 'web_search' (available: web_fetch)"
        assert listener.finished[0][2] is False

    async def test_a_failed_outcome_reaches_the_model_and_the_listener(self) -> None:
        async def refuse(name: str, arguments: str) -> ToolOutcome:
            return ToolOutcome(ok=False, content_for_model="Error: blocked: private address", summary="")

        listener = Listener()
        messages = await runner(FakeTools(behaviour=refuse), listener=listener).run(calls("web_fetch"), "")
        assert messages[1]["content"] == "Error: blocked: private address"
        assert listener.finished[0][2:4] == (False, "failed")  # an empty summary still says something

    async def test_arguments_that_are_not_json_reach_the_listener_as_raw_text(self) -> None:
        listener = Listener()
        await runner(FakeTools(), listener=listener).run([ToolCall(index=0, name="web_fetch", arguments="{oops")], "")
        assert listener.started[0][2] == {"raw": "{oops"}


class TestSources:
    async def test_sources_are_deduplicated_by_normalised_url_and_counted(self) -> None:
        async def same_page(name: str, arguments: str) -> ToolOutcome:
            url = json.loads(arguments)["url"]
            return ToolOutcome(
                ok=True, content_for_model="page", summary="read", sources=[Source(url=url, title=None, kind="fetch")]
            )

        listener = Listener()
        r = runner(FakeTools(behaviour=same_page), listener=listener)
        pages = ["https://Example.COM/a#one", "https://example.com/a", "ftp://example.com/a"]
        await r.run(
            [ToolCall(index=i, name="web_fetch", arguments=json.dumps({"url": u})) for i, u in enumerate(pages)], ""
        )
        assert r.research.sources == [{"url": "https://example.com/a", "title": "", "kind": "fetch"}]
        assert r.research.fetches == 3 and r.research.searches == 0
        assert [f[4] for f in listener.finished] == [
            [{"url": "https://example.com/a", "title": "", "kind": "fetch"}]
        ] * 2 + [[]]

    def test_server_tools_join_the_same_log(self) -> None:
        research = ResearchLog()
        summary, sources = record_server_tools(
            research,
            [{"url": "https://nist.gov/w#x", "title": "NIST"}, {"url": "HTTPS://NIST.GOV/w", "title": ""}],
            {"web_search_requests": 2},
        ) or ("", [])
        assert summary == "OpenRouter ran 2 web searches; 2 sources cited"
        assert research.sources == [{"url": "https://nist.gov/w", "title": "NIST", "kind": "citation"}]
        assert research.calls == 1 and research.server_tool_use == {"web_search_requests": 2}
        assert record_server_tools(research, [], {}) is None


# --------------------------------------------------------------------------- one runner for all

SCRIPTS: dict[str, Any] = {
    "sim/looper": {"loop_tools": {"name": "web_fetch", "arguments": {"url": "https://example.com/page"}},
                   "content": "Done looking.", "chunk_chars": 50},
    "sim/checker": {"loop_tools": {"name": "web_fetch", "arguments": {"url": "https://example.com/page"}}},
    "sim/wrong": {"steps": [{"tool_calls": [{"name": "web_browse", "arguments": {}}]}, {"content": "Answered."}]},
    "sim/wrong-analyst": {"steps": [{"tool_calls": [{"name": "web_browse", "arguments": {}}]}, {}]},
    "sim/analyst": {},
    "sim/writer": {"chunk_chars": 50},
}  # fmt: skip


@pytest.fixture
async def up(scripted):
    return await scripted(SCRIPTS, time_scale=0.01)


def fusion_request(member: str, analyst: str, budget: int = 2) -> FusionRequest:
    return FusionRequest(
        messages=[{"role": "user", "content": "At what temperature does water boil?"}],
        panel=[ModelSpec(model=member)],
        analyst=ModelSpec(model=analyst),
        writer=ModelSpec(model="sim/writer"),
        research=ResearchSettings(web_tools=True, max_tool_calls=budget, analyst_tools=True),
    )


async def fuse(up: ScriptedUpstream, request: FusionRequest, tools: FakeTools) -> list[Any]:
    registry = ProviderRegistry({"openrouter": Provider(name="openrouter", base_url=up.base_url, api_key="k")})
    async with ChatClient(registry, limits=Limits(first_token=10, idle=10, total=30, max_retries=0)) as client:
        return [event async for event in FusionRun(request, client, tools=tools).events()]


def tool_replies(up: ScriptedUpstream, model: str) -> list[str]:
    last = up.requests_for(model)[-1]
    return [m["content"] for m in last["messages"] if m.get("role") == "tool"]


class TestOneRunnerForMembersAndTheAnalyst:
    async def test_both_keep_to_the_same_budget_then_answer(self, up) -> None:
        tools = FakeTools()
        events = await fuse(up, fusion_request("sim/looper", "sim/checker", budget=2), tools)
        done = events[-1]
        assert isinstance(done, RunCompleted), done
        assert len(tools.calls) == 4  # two for the member, two for the analyst
        for model in ("sim/looper", "sim/checker"):
            requests = up.requests_for(model)
            assert len(requests) == 3 and requests[-1]["params"].get("tool_choice") == "none"
            assert tool_replies(up, model) == ["result of web_fetch"] * 2
        assert done.tool_usage["fetches"] == 4
        # The member's pages and the analyst's, one source with both readers.
        assert done.sources == [
            {"url": "https://example.com/page", "title": "Page 1", "members": ["sim/looper", "analyst:sim/checker"]}
        ]

    async def test_both_read_the_same_error_for_an_unknown_tool(self, up) -> None:
        tools = FakeTools()
        events = await fuse(up, fusion_request("sim/wrong", "sim/wrong-analyst"), tools)
        assert isinstance(events[-1], RunCompleted), events[-1]
        assert tools.calls == []
        expected = "error: unknown tool 'web_browse' (available: web_search, web_fetch)"
        assert tool_replies(up, "sim/wrong") == tool_replies(up, "sim/wrong-analyst") == [expected]
        finished = [e for e in events if isinstance(e, PanelToolFinished)]
        assert [(e.name, e.ok) for e in finished] == [("web_browse", False)]  # the analyst has no card


class TestMergingSources:
    def test_a_page_seen_again_keeps_one_entry_and_gains_the_title_it_lacked(self) -> None:
        from chat.fusion.sources import merge_sources, run_sources

        kept: list[dict[str, str]] = []
        merge_sources(kept, [{"url": "https://a.test/x#frag", "title": "", "kind": "search"}])
        given = merge_sources(kept, [Source(url="HTTPS://A.TEST/x", title="A page", kind="fetch")])
        assert kept == [{"url": "https://a.test/x", "title": "A page", "kind": "search"}]
        assert given == [{"url": "https://a.test/x", "title": "A page", "kind": "fetch"}]
        assert run_sources([("m", kept), ("m#2", kept), ("m", [])]) == [
            {"url": "https://a.test/x", "title": "A page", "members": ["m", "m#2"]}
        ]
