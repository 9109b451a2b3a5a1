"""Web research through the websocket: tool frames, sources in state, the database and exports.

The scripted upstream plays a member that searches (a fake SearXNG on the local test web server),
reads two pages there and answers with citations; the fetch guard trusts exactly that test host.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.conversations import conversation_export_json, conversation_export_markdown, conversation_turns_state
from chat.models import Conversation, MemberResponse, Run, RunStatus
from chat.runs import manager
from chat.testing.scripted import ScriptedUpstream
from tests.test_consumers import collect_until, open_ws
from tests.test_tool_loop import ALTITUDE_HTML, RESEARCHER, WATER_HTML
from tests.webserver import LocalWebServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SCRIPTS: dict[str, Any] = {
    "sim/researcher": RESEARCHER,
    "sim/plain": {"content": "Water boils at 100 °C.", "chunk_chars": 50},
    "sim/notools": {"no_tools_support": True, "content": "From memory: 100 °C.", "chunk_chars": 50},
    "sim/curious": {"steps": [
        {"tool_calls": [{"name": "web_fetch", "arguments": {"url": "http://169.254.169.254/latest/meta-data/"}}]},
        {"content": "That page is off limits; 100 °C."},
    ]},
    "sim/analyst": {},
    "sim/writer": {"chunk_chars": 60},
}  # fmt: skip
RESEARCH = {"web_tools": True, "max_tool_calls": 4, "excluded_domains": [], "blocked_domains": []}


def panel(*members: str) -> dict[str, Any]:
    return {
        "members": [{"model": m} for m in members],
        "analyst": {"model": "sim/analyst"},
        "writer": {"model": "sim/writer"},
        "research": RESEARCH,
    }


@pytest.fixture
def web():
    with LocalWebServer() as server:
        server.add_body("/water", WATER_HTML.encode(), "text/html; charset=utf-8")
        server.add_body("/altitude", ALTITUDE_HTML.encode(), "text/html; charset=utf-8")
        server.add_json("/searx/search", {"results": [
            {"url": server.url("/water"), "title": "Boiling point of water", "content": "100 °C."},
            {"url": server.url("/altitude"), "title": "Cooking at altitude", "content": "Lower up high."},
        ]})  # fmt: skip
        yield server


@pytest.fixture
async def upstream(settings, web):
    async with ScriptedUpstream(SCRIPTS, time_scale=0.05) as up:
        settings.OPENROUTER_BASE_URL = up.base_url
        settings.OPENROUTER_API_KEY = "test-key"
        settings.FUSION_ALLOW_SERVER_KEY = True
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0.2
        settings.FUSION_SEARCH_BACKEND = "searxng"
        settings.FUSION_SEARCH_URL = web.url("/searx")
        settings.FUSION_SEARCH_PRICE_USD = 0.005
        settings.FUSION_FETCH_TRUSTED_HOSTS = [f"127.0.0.1:{web.port}"]
        yield up
    await manager.shutdown()


async def start(alice: Any, members: tuple[str, ...]) -> tuple[Any, str, list[dict[str, Any]]]:
    conv = await database_sync_to_async(Conversation.objects.create)(user=alice, panel=panel(*members))
    comm = await open_ws(alice, conv.pk)
    run_id = str(uuid.uuid4())
    await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "At what temperature does water boil?"})
    events = await collect_until(comm, {"completed", "failed"}, timeout=30)
    await comm.disconnect()
    return conv, run_id, events


def frames(events: list[dict[str, Any]], kind: str, slot: int | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and (slot is None or e.get("slot") == slot)]


async def test_tool_frames_sources_and_the_database(alice, upstream, web) -> None:
    conv, run_id, events = await start(alice, ("sim/researcher", "sim/plain"))
    assert events[0]["type"] == "run.started" and events[0]["research_notice"] is None
    assert events[-1]["type"] == "completed", events[-1]

    started = frames(events, "panel.tool.started", 0)
    finished = frames(events, "panel.tool.finished", 0)
    assert [f["name"] for f in started] == ["web_search", "web_fetch", "web_fetch"]
    assert started[0]["arguments"] == {"query": "boiling point of water"}
    assert all(f["ok"] for f in finished) and len(finished) == 3
    assert {f["call_id"] for f in finished} == {f["call_id"] for f in started}
    types = [e["type"] for e in events if e.get("slot") == 0]
    assert types.index("panel.tool.finished") < types.index("panel.delta") < types.index("panel.completed")
    assert finished[-1]["status"] == "waiting"  # back from "searching" once every call ended

    water, altitude = web.url("/water"), web.url("/altitude")
    (completed,) = frames(events, "panel.completed", 0)
    assert [s["url"] for s in completed["sources"]] == [water, altitude]
    assert f'href="{water}"' in completed["html"]  # the citations render as links
    done = events[-1]
    assert [s["url"] for s in done["sources"]] == [water, altitude]
    assert done["sources"][0]["members"] == ["sim/researcher"]
    assert done["tool_usage"]["searches"] == 1 and done["tool_usage"]["fetches"] == 2
    assert done["tool_usage"]["search_cost_usd"] == pytest.approx(0.005)

    run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
    assert run.status == RunStatus.COMPLETE
    assert [s["url"] for s in run.sources] == [water, altitude]
    assert run.tool_usage["fetches"] == 2
    assert run.cost_usd == Decimal(str(run.usage["cost"])).quantize(Decimal("0.000001")) + Decimal("0.005")
    member = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=0)
    assert [c["status"] for c in member.tool_calls] == ["done"] * 3
    assert [c["name"] for c in member.tool_calls] == ["web_search", "web_fetch", "web_fetch"]
    assert [s["url"] for s in member.sources] == [water, altitude] and member.status == "complete"
    plain = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=1)
    assert plain.tool_calls == [] and plain.sources == []

    # History (the page's state) and exports carry the same.
    conv = await database_sync_to_async(Conversation.objects.get)(pk=conv.pk)
    (state,) = await database_sync_to_async(conversation_turns_state)(conversation=conv)
    assert [c["summary"] for c in state["members"][0]["tool_calls"]][0].startswith("Searched")
    assert state["sources"] == run.sources and state["tool_usage"]["searches"] == 1
    exported = await database_sync_to_async(conversation_export_json)(conversation=conv)
    run_export = exported["turns"][0]["runs"][0]
    assert run_export["sources"] == run.sources and len(run_export["members"][0]["tool_calls"]) == 3
    markdown = await database_sync_to_async(conversation_export_markdown)(conversation=conv)
    assert "### Sources" in markdown
    assert f"- [Boiling point of water]({water}) (sim/researcher)" in markdown
    assert "- ✓ web_search: boiling point of water — Searched" in markdown


async def test_a_refused_fetch_is_a_failed_tool_frame_and_the_run_goes_on(alice, upstream, web) -> None:
    _, run_id, events = await start(alice, ("sim/curious",))
    (finished,) = frames(events, "panel.tool.finished", 0)
    assert finished["ok"] is False and "blocked: private address" in finished["summary"]
    assert events[-1]["type"] == "completed"
    run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
    member = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=0)
    assert member.tool_calls[0]["status"] == "failed" and "blocked" in member.tool_calls[0]["summary"]
    assert member.sources == [] and run.sources == []


async def test_a_model_without_tools_gets_a_note_and_no_search_backend_gets_a_notice(alice, upstream, settings) -> None:
    settings.FUSION_SEARCH_BACKEND = ""
    _, run_id, events = await start(alice, ("sim/notools",))
    notice = events[0]["research_notice"]
    assert "No search backend is configured" in notice and "web_fetch" in notice
    (note,) = frames(events, "panel.note", 0)
    assert note["message"] == "This model can't use tools; it answered without web research."
    assert events[-1]["type"] == "completed"
    tools = [r["params"].get("tools") for r in upstream.requests_for("sim/notools")]
    assert [t["function"]["name"] for t in tools[0]] == ["web_fetch"] and tools[1] is None
    run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
    member = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=0)
    assert member.notes == [note["message"]]
    assert run.tool_usage["notice"] == notice
