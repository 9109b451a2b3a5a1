"""The panel's tool loop (chat/fusion/member.py, research.py) end to end, without a database.

Real HTTP everywhere: the engine's ChatClient talks to the scripted upstream, and the real
``WebTools`` searches a fake SearXNG and fetches pages, both served by the local test web server
on 127.0.0.1 (the fetch guard trusts exactly that host and port, nothing else).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.fusion.client import ChatClient
from chat.fusion.pipeline import FusionRun
from chat.fusion.research import NO_TOOLS_NOTE
from chat.fusion.sources import normalise_url
from chat.fusion.providers import ProviderRegistry
from chat.testing.scripted import ScriptedUpstream
from chat.fusion.tools import FetchPolicy, WebTools, make_search_backend
from chat.fusion.types import (
    FusionRequest,
    Limits,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelNote,
    PanelToolFinished,
    PanelToolStarted,
    Provider,
    ResearchSettings,
    RunCompleted,
)
from tests.webserver import LocalWebServer

WATER_HTML = """<!doctype html><html><head><title>Boiling point of water</title></head><body><article>
<h1>Boiling point of water</h1>
<p>At sea level, pure water boils at 100 degrees Celsius. The boiling point depends on the air
pressure above the water: lower pressure, lower boiling point. This is why cooking takes longer
in the mountains, where the pressure is lower and water boils at a lower temperature.</p>
</article></body></html>"""
ALTITUDE_HTML = """<!doctype html><html><head><title>Cooking at altitude</title></head><body><article>
<h1>Cooking at altitude</h1>
<p>At 3,000 metres water boils at about 90 degrees Celsius, so pasta and eggs need more time.
Pressure cookers raise the pressure, and with it the boiling point, which shortens cooking again.</p>
</article></body></html>"""


@pytest.fixture
def web():
    with LocalWebServer() as server:
        server.add_body("/water", WATER_HTML.encode(), "text/html; charset=utf-8")
        server.add_body("/altitude", ALTITUDE_HTML.encode(), "text/html; charset=utf-8")
        server.add_json(
            "/searx/search",
            {
                "results": [
                    {
                        "url": server.url("/water"),
                        "title": "Boiling point of water",
                        "content": "Water boils at 100 °C.",
                    },
                    {"url": server.url("/altitude"), "title": "Cooking at altitude", "content": "Lower at altitude."},
                    # The same page again, with a fragment: still one source.
                    {"url": server.url("/water") + "#top", "title": "", "content": ""},
                ]
            },
        )
        yield server


def make_tools(web: LocalWebServer, **domains: Any) -> WebTools:
    search = make_search_backend({"backend": "searxng", "url": web.url("/searx")})
    policy = FetchPolicy(
        trusted_hosts=frozenset({"127.0.0.1"}), allowed_ports=frozenset({80, 443, web.port}), timeout=5
    )
    return WebTools(search=search, fetch_policy=policy, **domains)


RESEARCHER = {
    "chunk_chars": 7,
    "steps": [
        {"tool_calls": [{"name": "web_search", "arguments": {"query": "boiling point of water"}}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001}},
        {"tool_calls": [{"name": "web_fetch", "arguments": {"url": "{url0}"}},
                        {"name": "web_fetch", "arguments": {"url": "{url1}"}}],
         "usage": {"prompt_tokens": 20, "completion_tokens": 6, "cost": 0.002}},
        {"content": "Water boils at 100 °C at sea level, and at about 90 °C at 3,000 m.", "cite": True,
         "usage": {"prompt_tokens": 40, "completion_tokens": 30, "cost": 0.004}},
    ],
}  # fmt: skip
SCRIPTS: dict[str, Any] = {
    "sim/researcher": RESEARCHER,
    "sim/plain": {"content": "Water boils at 100 °C.", "chunk_chars": 50},
    "sim/looper": {"loop_tools": True, "content": "Enough searching: 100 °C at sea level.", "chunk_chars": 50},
    "sim/notools": {"no_tools_support": True, "content": "From memory: 100 °C.", "chunk_chars": 50},
    "sim/server": {"server_tools": {"citations": [
        {"url": "https://www.nist.gov/water#boiling", "title": "NIST: water"},
        {"url": "https://example.org/boiling", "title": "Excluded"},
        {"url": "HTTPS://WWW.NIST.GOV/water", "title": ""},
    ], "web_search_requests": 2}, "chunk_chars": 50},
    "sim/analyst": {},
    "sim/writer": {"chunk_chars": 50},
}  # fmt: skip


@pytest.fixture
async def up():
    async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as upstream:
        yield upstream


def client_for(up: ScriptedUpstream) -> ChatClient:
    registry = ProviderRegistry({"openrouter": Provider(name="openrouter", base_url=up.base_url, api_key="k")})
    return ChatClient(registry, limits=Limits(first_token=10, idle=10, total=30, max_retries=0))


def request(*models: str, **research: Any) -> FusionRequest:
    return FusionRequest(
        messages=[{"role": "user", "content": "At what temperature does water boil?"}],
        panel=[ModelSpec(model=m) for m in models],
        analyst=ModelSpec(model="sim/analyst"),
        writer=ModelSpec(model="sim/writer"),
        research=ResearchSettings(web_tools=True, **research),
    )


async def run(up: ScriptedUpstream, req: FusionRequest, **kwargs: Any) -> list[Any]:
    async with client_for(up) as client:
        return [event async for event in FusionRun(req, client, **kwargs).events()]


def of_slot(events: list[Any], slot: int) -> list[Any]:
    return [e for e in events if getattr(e, "slot", None) == slot]


def one(events: list[Any], cls: type) -> Any:
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, found
    return found[0]


class TestLocalTools:
    async def test_a_member_searches_reads_two_pages_and_answers_with_citations(self, up, web) -> None:
        events = await run(up, request("sim/researcher", "sim/plain"), tools=make_tools(web))
        mine = of_slot(events, 0)
        kinds = [type(e).__name__ for e in mine if not isinstance(e, PanelDelta)]
        assert kinds == [
            "PanelAdded",
            "PanelToolStarted", "PanelToolFinished",  # web_search
            "PanelToolStarted", "PanelToolStarted", "PanelToolFinished", "PanelToolFinished",  # 2 × web_fetch
            "PanelCompleted",
        ]  # fmt: skip
        started = [e for e in mine if isinstance(e, PanelToolStarted)]
        assert [s.name for s in started] == ["web_search", "web_fetch", "web_fetch"]
        assert started[0].arguments == {"query": "boiling point of water"}
        assert {s.arguments["url"] for s in started[1:]} == {web.url("/water"), web.url("/altitude")}
        finished = {e.call_id: e for e in mine if isinstance(e, PanelToolFinished)}
        assert all(f.ok for f in finished.values())
        assert finished[started[0].call_id].summary.startswith("Searched")
        assert {f.summary.split(" (")[0] for f in finished.values() if f.name == "web_fetch"} == {"Fetched 127.0.0.1"}
        # Both pages really were fetched from the local server.
        assert web.requests_to("/water") and web.requests_to("/altitude")

        completed = one(mine, PanelCompleted)
        assert "[127.0.0.1:%d/water](%s)" % (web.port, web.url("/water")) in completed.content
        assert web.url("/altitude") in completed.content
        # Sources: the two pages once each, however often they were seen (search, fragment, fetch).
        assert [s["url"] for s in completed.sources] == [web.url("/water"), web.url("/altitude")]
        assert completed.sources[0]["title"] == "Boiling point of water"
        # Usage is the sum of the three turns.
        usage = completed.record.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (70, 41)
        assert usage.cost == pytest.approx(0.007)

        # What the model was sent: tools, then its own calls and one tool message per call.
        calls = up.requests_for("sim/researcher")
        assert len(calls) == 3
        assert [t["function"]["name"] for t in calls[0]["params"]["tools"]] == ["web_search", "web_fetch"]
        second = calls[1]["messages"]
        assistant = next(m for m in second if m["role"] == "assistant")
        tool_msgs = [m for m in second if m["role"] == "tool"]
        assert assistant["content"] is None and assistant["tool_calls"][0]["function"]["name"] == "web_search"
        assert [m["tool_call_id"] for m in tool_msgs] == [assistant["tool_calls"][0]["id"]]
        assert "<search_results" in tool_msgs[0]["content"]
        third = [m for m in calls[2]["messages"] if m["role"] == "tool"]
        assert len(third) == 3 and any("pressure" in m["content"] for m in third[1:])
        assert "web_search(query)" in calls[0]["messages"][0]["content"]  # the member was told about its tools

        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert done.sources == [
            {"url": web.url("/water"), "title": "Boiling point of water", "members": ["sim/researcher"]},
            {"url": web.url("/altitude"), "title": "Cooking at altitude", "members": ["sim/researcher"]},
        ]
        assert done.tool_usage == {"searches": 1, "fetches": 2, "server_tool_use": {}}
        # The plain member got the same tools but answered straight away.
        assert one(of_slot(events, 1), PanelCompleted).sources == []

    async def test_a_member_that_keeps_calling_tools_stops_at_its_budget_and_still_answers(self, up, web) -> None:
        events = await run(up, request("sim/looper", max_tool_calls=2), tools=make_tools(web))
        started = [e for e in events if isinstance(e, PanelToolStarted)]
        assert len(started) == 2
        completed = one(events, PanelCompleted)
        assert completed.content == "Enough searching: 100 °C at sea level."
        calls = up.requests_for("sim/looper")
        assert len(calls) == 3
        assert all(c["params"].get("tools") for c in calls)
        assert "tool_choice" not in calls[0]["params"] and calls[-1]["params"]["tool_choice"] == "none"
        assert isinstance(events[-1], RunCompleted) and events[-1].tool_usage["searches"] == 2

    async def test_parallel_calls_beyond_the_budget_are_answered_but_not_run(self, up, web) -> None:
        up.set_scripts({**SCRIPTS, "sim/greedy": {"steps": [
            {"tool_calls": [{"name": "web_fetch", "arguments": {"url": web.url("/water")}},
                            {"name": "web_fetch", "arguments": {"url": web.url("/altitude")}},
                            {"name": "web_search", "arguments": {"query": "x"}}]},
            {"content": "Done."},
        ]}})  # fmt: skip
        events = await run(up, request("sim/greedy", max_tool_calls=2), tools=make_tools(web))
        assert len([e for e in events if isinstance(e, PanelToolStarted)]) == 2
        second = up.requests_for("sim/greedy")[1]
        tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
        assert len(tool_msgs) == 3 and tool_msgs[2]["content"].startswith("Not run: the budget of 2 tool calls")
        assert second["params"]["tool_choice"] == "none"
        assert one(events, PanelCompleted).content == "Done."

    async def test_a_refused_fetch_reaches_the_model_and_the_ui_as_a_tool_error(self, up, web) -> None:
        secret = f"http://127.0.0.2:{web.port}/water"  # loopback, but not the trusted host
        up.set_scripts({**SCRIPTS, "sim/curious": {"steps": [
            {"tool_calls": [{"name": "web_fetch", "arguments": {"url": secret}},
                            {"name": "web_fetch", "arguments": {"url": "http://169.254.169.254/latest/meta-data/"}}]},
            {"content": "I could not read those pages; from memory, 100 °C."},
        ]}})  # fmt: skip
        web.clear()
        events = await run(up, request("sim/curious"), tools=make_tools(web))
        finished = [e for e in events if isinstance(e, PanelToolFinished)]
        assert len(finished) == 2 and not any(f.ok for f in finished)
        assert all("blocked: private address" in f.summary for f in finished)
        assert all(f.sources == [] for f in finished)
        tool_msgs = [m for m in up.requests_for("sim/curious")[1]["messages"] if m["role"] == "tool"]
        assert all("blocked: private address" in m["content"] for m in tool_msgs)
        assert web.paths() == []  # nothing reached the server
        completed = one(events, PanelCompleted)
        assert completed.sources == [] and completed.content.startswith("I could not read")
        assert isinstance(events[-1], RunCompleted)

    async def test_an_unknown_tool_or_bad_arguments_are_tool_errors_too(self, up, web) -> None:
        up.set_scripts({**SCRIPTS, "sim/sloppy": {"steps": [
            {"tool_calls": [{"name": "run_shell", "arguments": {"cmd": "ls"}},
                            {"name": "web_fetch", "arguments": "{not json"}]},
            {"content": "Sorry."},
        ]}})  # fmt: skip
        events = await run(up, request("sim/sloppy"), tools=make_tools(web))
        started = [e for e in events if isinstance(e, PanelToolStarted)]
        assert started[0].arguments == {"cmd": "ls"} and started[1].arguments == {"raw": "{not json"}
        finished = [e for e in events if isinstance(e, PanelToolFinished)]
        assert [f.ok for f in finished] == [False, False]
        assert one(events, PanelCompleted).content == "Sorry."

    async def test_stopping_a_member_during_a_fetch_ends_it_cleanly(self, up, web) -> None:
        up.set_scripts({**SCRIPTS, "sim/patient": {"steps": [
            {"tool_calls": [{"name": "web_fetch", "arguments": {"url": web.url("/slow")}}]},
            {"content": "Never reached."},
        ]}})  # fmt: skip
        async with client_for(up) as client:
            fusion = FusionRun(request("sim/patient", "sim/plain"), client, tools=make_tools(web))
            events = []
            async for event in fusion.events():
                events.append(event)
                if isinstance(event, PanelToolStarted):
                    assert fusion.stop_member(0)
        failed = one(events, PanelFailed)
        assert failed.slot == 0 and failed.error.kind == "cancelled"
        assert not [e for e in events if isinstance(e, PanelToolFinished)]
        assert len(up.requests_for("sim/patient")) == 1
        assert isinstance(events[-1], RunCompleted) and events[-1].failed_models == ["sim/patient"]

    async def test_text_written_before_tool_calls_is_kept_and_the_answer_continues_it(self, up, web) -> None:
        up.set_scripts({**SCRIPTS, "sim/chatty": {"chunk_chars": 50, "steps": [
            {"content": "Let me check.", "tool_calls": [{"name": "web_search", "arguments": {"query": "boil"}}]},
            {"content": "It is 100 °C."},
        ]}})  # fmt: skip
        events = await run(up, request("sim/chatty"), tools=make_tools(web))
        text = "".join(e.delta for e in events if isinstance(e, PanelDelta))
        assert text == "Let me check.\n\nIt is 100 °C." == one(events, PanelCompleted).content
        assistant = next(m for m in up.requests_for("sim/chatty")[1]["messages"] if m["role"] == "assistant")
        assert assistant["content"] == "Let me check."

    async def test_without_web_tools_in_the_request_nothing_is_offered(self, up, web) -> None:
        req = request("sim/plain")
        req.research = ResearchSettings(web_tools=False)
        events = await run(up, req, tools=make_tools(web))
        assert "tools" not in up.requests_for("sim/plain")[0]["params"]
        assert not [e for e in events if isinstance(e, (PanelToolStarted, PanelNote))]

    async def test_fetch_only_tools_offer_only_web_fetch(self, up, web) -> None:
        policy = FetchPolicy(trusted_hosts=frozenset({"127.0.0.1"}), allowed_ports=frozenset({web.port}))
        await run(up, request("sim/plain"), tools=WebTools(search=None, fetch_policy=policy))
        tools = up.requests_for("sim/plain")[0]["params"]["tools"]
        assert [t["function"]["name"] for t in tools] == ["web_fetch"]


class TestModelsWithoutTools:
    async def test_the_providers_no_tools_error_makes_the_member_answer_without_tools(self, up, web) -> None:
        events = await run(up, request("sim/notools"), tools=make_tools(web))
        mine = of_slot(events, 0)
        assert [type(e).__name__ for e in mine if not isinstance(e, PanelDelta)] == [
            "PanelAdded", "PanelNote", "PanelCompleted",
        ]  # fmt: skip
        assert one(mine, PanelNote).message == NO_TOOLS_NOTE
        assert one(mine, PanelCompleted).content == "From memory: 100 °C."
        first, second = up.requests_for("sim/notools")
        assert first["params"].get("tools") and "tools" not in second["params"]
        assert "web_search" not in json.dumps(second["messages"])  # no tool guidance either

    async def test_a_catalogue_hint_skips_tools_up_front(self, up, web) -> None:
        events = await run(
            up, request("sim/notools", "sim/plain"), tools=make_tools(web), no_tool_models={"sim/notools"}
        )
        assert one(of_slot(events, 0), PanelNote).message == NO_TOOLS_NOTE
        assert [r["params"].get("tools") for r in up.requests_for("sim/notools")] == [None]
        assert up.requests_for("sim/plain")[0]["params"].get("tools")
        assert not of_slot(events, 1) or not [e for e in of_slot(events, 1) if isinstance(e, PanelNote)]


class TestServerTools:
    async def test_openrouter_server_tools_give_the_same_events_and_sources(self, up) -> None:
        events = await run(
            up,
            request("sim/server", server_tools=True, excluded_domains=("example.org",), blocked_domains=("evil.test",)),
            tools=None,
        )
        params = up.requests_for("sim/server")[0]["params"]
        assert params["tools"] == [
            {"type": "openrouter:web_search", "parameters": {"max_uses": 4, "excluded_domains": ["example.org"]}},
            {"type": "openrouter:web_fetch", "parameters": {"max_uses": 4, "blocked_domains": ["evil.test"]}},
        ]
        mine = of_slot(events, 0)
        started, finished = one(mine, PanelToolStarted), one(mine, PanelToolFinished)
        assert started.name == finished.name == "openrouter:web_search" and started.call_id == finished.call_id
        assert finished.ok and finished.summary == "OpenRouter ran 2 web searches; 1 source cited"
        completed = one(mine, PanelCompleted)
        assert completed.sources == [{"url": "https://www.nist.gov/water", "title": "NIST: water", "kind": "citation"}]
        assert len(up.requests_for("sim/server")) == 1  # no local loop
        done = events[-1]
        assert done.sources == [
            {"url": "https://www.nist.gov/water", "title": "NIST: water", "members": ["sim/server"]}
        ]
        assert done.tool_usage["server_tool_use"]["web_search_requests"] == 2

    async def test_members_of_other_providers_use_the_local_tools(self, up, web) -> None:
        registry = ProviderRegistry({
            "openrouter": Provider(name="openrouter", base_url=up.base_url),
            "local": Provider(name="local", base_url=up.base_url),
        })  # fmt: skip
        req = request("local:sim/researcher", "sim/server", server_tools=True)
        async with ChatClient(registry, limits=Limits(max_retries=0)) as client:
            events = [e async for e in FusionRun(req, client, tools=make_tools(web)).events()]
        assert up.requests_for("sim/researcher")[0]["params"]["tools"][0]["type"] == "function"
        assert up.requests_for("sim/server")[0]["params"]["tools"][0]["type"] == "openrouter:web_search"
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert {s["url"] for s in done.sources} == {
            web.url("/water"), web.url("/altitude"), "https://www.nist.gov/water", "https://example.org/boiling",
        }  # fmt: skip


class TestSourcesAcrossTheRun:
    async def test_members_sharing_a_source_are_listed_together(self, up, web) -> None:
        up.set_scripts({**SCRIPTS, "sim/other": {**RESEARCHER, "chunk_chars": 30}})
        events = await run(up, request("sim/researcher", "sim/other", "sim/researcher"), tools=make_tools(web))
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert [s["members"] for s in done.sources] == [["sim/researcher", "sim/other", "sim/researcher#2"]] * 2
        assert done.tool_usage == {"searches": 3, "fetches": 6, "server_tool_use": {}}

    async def test_a_retried_member_starts_its_research_over(self, up, web) -> None:
        up.set_scripts(
            {**SCRIPTS, "sim/flaky": {**RESEARCHER, "faults": [{"type": "http", "status": 400, "times": 1}]}}
        )
        async with client_for(up) as client:
            fusion = FusionRun(request("sim/flaky", "sim/plain"), client, tools=make_tools(web))
            events = []
            async for event in fusion.events():
                events.append(event)
                if isinstance(event, PanelFailed):
                    assert fusion.retry_member(0)
        assert [e.attempt for e in events if isinstance(e, PanelAdded) and e.slot == 0] == [1, 2]
        assert len(one(events, RunCompleted).sources) == 2


def test_urls_are_normalised_for_deduplication() -> None:
    assert normalise_url("HTTPS://Example.COM:443/a?b=1#frag") == "https://example.com/a?b=1"
    assert normalise_url("http://user:pw@example.com:8080") == "http://example.com:8080/"
    assert normalise_url("javascript:alert(1)") == normalise_url("ftp://x/") == normalise_url("http://") == ""
    assert normalise_url("http://[::1]:99/x") == "http://[::1]:99/x"


class TestClientAndScripts:
    @pytest.mark.parametrize("ignore_stream", [False, True])
    async def test_the_client_reports_citations_and_server_tool_use(self, up, ignore_stream) -> None:
        from chat.fusion.types import SourcesReport

        up.set_scripts({"m/s": {"server_tools": {"citations": [{"url": "https://a.example/x", "title": "A"}],
                                                 "web_search_requests": 3}, "ignore_stream": ignore_stream}})  # fmt: skip
        async with client_for(up) as client:
            tools = [{"type": "openrouter:web_search"}]
            events = [
                e async for e in client.stream(ModelSpec(model="m/s"), [{"role": "user", "content": "q"}], tools=tools)
            ]
        reports = [e for e in events if isinstance(e, SourcesReport)]
        assert [c["url"] for r in reports for c in r.citations] == ["https://a.example/x"]
        assert [r.server_tool_use for r in reports if r.server_tool_use] == [
            {"web_search_requests": 3, "tool_calls_requested": 3, "tool_calls_executed": 3}
        ]
        assert type(events[-1]).__name__ == "Finish"

    def test_scripts_with_a_mistyped_step_key_are_refused(self) -> None:
        from chat.testing.scripted import validate_scripts

        with pytest.raises(ValueError, match="step"):
            validate_scripts({"m": {"steps": [{"tool_cals": []}]}})
        with pytest.raises(ValueError, match="no_tools_support"):
            validate_scripts({"m": {"no_tools_support": 500}})


class TestAnalystTools:
    CHECKER = {
        "steps": [{"tool_calls": [{"name": "web_search", "arguments": {"query": "boiling point at altitude"}}]}, {}]
    }

    async def test_the_analyst_checks_a_claim_with_the_tools_then_writes_its_json(self, up, web):
        up.set_scripts({**SCRIPTS, "sim/checker": self.CHECKER})
        req = request("sim/plain", "sim/plain", analyst_tools=True)
        req.analyst = ModelSpec(model="sim/checker")
        events = [e async for e in FusionRun(req, client_for(up), tools=make_tools(web)).events()]
        done = events[-1]
        assert isinstance(done, RunCompleted), done
        assert done.analysis is not None and set(done.analysis) >= {"consensus", "blind_spots"}
        assert done.tool_usage["searches"] == 1
        assert any("analyst:sim/checker" in s["members"] for s in done.sources)
        checker = [r for r in up.requests if r["model"] == "sim/checker"]
        assert len(checker) == 2
        assert checker[0]["params"].get("tools") and not any(m.get("role") == "tool" for m in checker[0]["messages"])
        assert any(m.get("role") == "tool" for m in checker[1]["messages"])

    async def test_without_analyst_tools_the_analyst_gets_no_tools(self, up, web):
        events = [e async for e in FusionRun(request("sim/plain"), client_for(up), tools=make_tools(web)).events()]
        assert isinstance(events[-1], RunCompleted)
        analyst = [r for r in up.requests if r["model"] == "sim/analyst"]
        assert analyst and not any(r["params"].get("tools") for r in analyst)
