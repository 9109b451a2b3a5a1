"""The MCP server against a live Daphne and the scripted upstream, read by the official ``mcp``
client: over streamable HTTP (tools, presets, inline panels, progress, errors, cancelling) and
over stdio (``manage.py mcp --user NAME``)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from tests.daphne import ROOT
from tests.live import LiveApp, live_app

WRITER_ANSWER = "The sky is blue because of Rayleigh scattering."
SCRIPTS: dict[str, Any] = {
    "sim/a": {"ttft_ms": 10, "tokens_per_s": 4000, "chunk_chars": 20, "content": "Alpha says the sky is blue."},
    "sim/b": {
        "ttft_ms": 10,
        "tokens_per_s": 4000,
        "chunk_chars": 20,
        "content": "Beta says blue, by Rayleigh scattering.",
    },
    "sim/slow": {"ttft_ms": 30, "tokens_per_s": 5, "chunk_chars": 4, "content": "slow " * 400},
    "sim/broken": {"faults": [{"type": "http", "status": 400, "times": -1}]},
    "sim/analyst": {},
    "sim/writer": {"ttft_ms": 10, "tokens_per_s": 4000, "chunk_chars": 20, "content": WRITER_ANSWER},
}
SIM_ROLES = {"analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}
BUILTINS = {
    "quality": {"name": "Quality", "members": [{"model": "sim/a"}, {"model": "sim/b"}], **SIM_ROLES},
    "fast": {"name": "Fast", "members": [{"model": "sim/a"}], **SIM_ROLES},
}
QUESTION = "Why is the sky blue?"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    env = {
        "FUSION_BUILTIN_PRESETS": json.dumps(BUILTINS),
        "FUSION_DEFAULT_PANEL": "sim/a,sim/b",
        "FUSION_DEFAULT_ANALYST": "sim/analyst",
        "FUSION_DEFAULT_WRITER": "sim/writer",
        "FUSION_MAX_CONCURRENT_RUNS_PER_USER": "20",
        "FUSION_API_RATE_PER_MIN": "6000",
        "FUSION_API_BURST": "1000",
    }
    with live_app(tmp_path_factory.mktemp("mcp"), SCRIPTS, env, name="mcp") as live:
        yield live


def new_user(app: LiveApp) -> dict[str, Any]:
    """A user with an API token: {"name", "id", "token"}."""
    name = f"mcp_{uuid.uuid4().hex[:8]}"
    token, user_id = app.orm(
        "from chat.api.tokens import api_token_create\n"
        f"u = User.objects.create_user({name!r}, password='x-long-password-1')\n"
        "result = [api_token_create(user=u, name='tests').secret, u.pk]"
    )
    return {"name": name, "id": user_id, "token": token}


def make_preset(app: LiveApp, user_id: int, name: str, members: list[str]) -> str:
    return app.orm(
        "from chat.presets import preset_create\n"
        f"u = User.objects.get(pk={user_id})\n"
        f"p = preset_create(user=u, name={name!r}, config={{'members': [{{'model': m}} for m in {members!r}], "
        "'analyst': {'model': 'sim/analyst'}, 'writer': {'model': 'sim/writer'}})\n"
        "result = p.slug"
    )


def http_transport(app: LiveApp, token: str) -> Any:
    """The SDK's streamable HTTP transport, sending *token* on every request."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    return streamable_http_client(f"{app.url}/mcp", http_client=http)


def http_client(app: LiveApp, token: str) -> Client:
    """The SDK's client over streamable HTTP (the 2026-07-28 revision, negotiated by the client)."""
    return Client(http_transport(app, token))


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


class Progress:
    """A progress_callback that keeps every (progress, total, message) it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []
        self.arrived = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))
        self.arrived.set()

    @property
    def messages(self) -> list[str]:
        return [m or "" for _, _, m in self.seen]


class TestTools:
    async def test_the_fusion_tool_is_listed_with_its_input_schema(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
        schema = tools["fusion"].input_schema
        assert schema["required"] == ["question"]
        for name in (
            "preset",
            "analysis_models",
            "analyst",
            "writer",
            "web_tools",
            "max_tool_calls",
            "excluded_domains",
        ):
            assert name in schema["properties"], name
        assert "analysis" in tools["fusion"].output_schema["properties"]


class TestCallingFusion:
    async def test_a_builtin_preset_returns_the_fused_answer_and_the_analysis(self, app):
        user = new_user(app)
        progress = Progress()
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool(
                "fusion", {"question": QUESTION, "preset": "quality"}, progress_callback=progress
            )
        assert not result.is_error, text_of(result)
        assert text_of(result) == WRITER_ANSWER
        data = result.structured_content
        assert data is not None
        assert data["answer"] == WRITER_ANSWER
        assert data["status"] == "completed"
        assert {r["model"] for r in data["responses"]} == {"sim/a", "sim/b"}
        assert set(data["analysis"]) >= {"consensus", "contradictions", "unique_insights", "blind_spots"}
        assert data["failed_models"] == []
        assert data["usage"]["total_tokens"] > 0 and data["usage"]["cost"] >= 0
        assert data["conversation_url"].startswith("/c/")
        run = app.orm(
            f"r = Run.objects.get(pk={data['run_id']!r}, user_id={user['id']})\n"
            "result = [r.status, r.conversation.source]"
        )
        assert run == ["complete", "mcp"]

    async def test_progress_arrives_for_each_member_and_the_analysis(self, app):
        user = new_user(app)
        progress = Progress()
        async with http_client(app, user["token"]) as client:
            await client.call_tool("fusion", {"question": QUESTION, "preset": "quality"}, progress_callback=progress)
        messages = progress.messages
        assert any("sim/a answered" in m for m in messages), messages
        assert any("sim/b answered" in m for m in messages), messages
        assert any("sim/analyst is comparing" in m for m in messages), messages
        assert "Analysis done" in messages
        assert any("sim/writer is writing" in m for m in messages), messages
        assert messages[-1] == "Done"
        steps = [p for p, _, _ in progress.seen]
        assert steps == sorted(set(steps)), "progress must increase with every notification"

    async def test_an_inline_panel_replaces_the_presets_members_and_roles(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool(
                "fusion",
                {"question": QUESTION, "analysis_models": ["sim/b"], "analyst": "sim/analyst", "writer": "sim/writer"},
            )
        assert not result.is_error, text_of(result)
        assert text_of(result) == WRITER_ANSWER
        data = result.structured_content
        assert data is not None
        assert [r["model"] for r in data["responses"]] == ["sim/b"]
        assert data["analysis"] is not None
        config = app.orm(f"result = Run.objects.get(pk={data['run_id']!r}).config")
        assert [m["model"] for m in config["members"]] == ["sim/b"]

    async def test_research_settings_reach_the_runs_config(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool(
                "fusion",
                {"question": QUESTION, "preset": "fast", "max_tool_calls": 3, "excluded_domains": ["example.com"]},
            )
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        research = app.orm(f"result = Run.objects.get(pk={result.structured_content['run_id']!r}).config['research']")
        assert research["max_tool_calls"] == 3
        assert research["excluded_domains"] == ["example.com"]

    async def test_a_users_preset_is_named_by_its_slug(self, app):
        user = new_user(app)
        slug = make_preset(app, user["id"], "Deep Research", ["sim/b"])
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool("fusion", {"question": QUESTION, "preset": slug})
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        assert [r["model"] for r in result.structured_content["responses"]] == ["sim/b"]


class TestHandshakeEraClients:
    async def test_a_2025_client_is_served_statelessly_with_progress(self, app):
        user = new_user(app)
        progress = Progress()
        async with Client(http_transport(app, user["token"]), mode="legacy") as client:
            assert client.protocol_version == "2025-11-25"
            result = await client.call_tool(
                "fusion", {"question": QUESTION, "preset": "fast"}, progress_callback=progress
            )
        assert not result.is_error, text_of(result)
        assert text_of(result) == WRITER_ANSWER
        assert "sim/a answered" in progress.messages


class TestHostsAndOrigins:
    def test_a_host_outside_allowed_hosts_is_refused(self, app):
        user = new_user(app)
        response = httpx.post(
            f"{app.url}/mcp", headers={"Host": "evil.example", "Authorization": f"Bearer {user['token']}"}, json={}
        )
        assert response.status_code == 400
        assert response.json()["error"]["metadata"]["reason"] == "bad_host"

    def test_a_web_page_of_another_origin_is_refused(self, app):
        user = new_user(app)
        headers = {"Origin": "http://evil.example", "Authorization": f"Bearer {user['token']}"}
        response = httpx.post(f"{app.url}/mcp", headers=headers, json={})
        assert response.status_code == 403
        assert response.json()["error"]["metadata"]["reason"] == "bad_origin"

    async def test_another_allowed_host_is_served_with_its_own_origin(self, app):
        user = new_user(app)
        headers = {"Origin": f"http://localhost:{app.port}", "Authorization": f"Bearer {user['token']}"}
        http = httpx2.AsyncClient(headers=headers)
        async with Client(streamable_http_client(f"http://localhost:{app.port}/mcp", http_client=http)) as client:
            assert "fusion" in {t.name for t in (await client.list_tools()).tools}


class TestErrors:
    async def test_a_bad_token_is_401_in_openrouters_error_shape(self, app):
        response = httpx.post(
            f"{app.url}/mcp",
            headers={"Authorization": "Bearer fsn_" + "x" * 40, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == 401 and error["message"] and error["metadata"]["reason"] == "bad_token"

    async def test_no_token_is_401_and_the_sdk_client_cannot_connect(self, app):
        response = httpx.post(f"{app.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert response.status_code == 401
        assert response.json()["error"]["metadata"]["reason"] == "no_token"
        with pytest.raises(Exception):
            async with http_client(app, "fsn_" + "y" * 40) as client:
                await client.list_tools()

    async def test_an_unknown_preset_is_a_tool_error_naming_it(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool("fusion", {"question": QUESTION, "preset": "no-such-panel"})
        assert result.is_error
        assert "No preset 'no-such-panel'" in text_of(result)

    async def test_another_users_preset_slug_is_no_preset(self, app):
        owner, other = new_user(app), new_user(app)
        slug = make_preset(app, owner["id"], "Private Panel", ["sim/a"])
        async with http_client(app, other["token"]) as client:
            result = await client.call_tool("fusion", {"question": QUESTION, "preset": slug})
        assert result.is_error
        assert f"No preset {slug!r}" in text_of(result)
        assert app.orm(f"result = Run.objects.filter(user_id={other['id']}).count()") == 0

    async def test_every_member_failing_is_a_tool_error_with_the_failure_reason(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool("fusion", {"question": QUESTION, "analysis_models": ["sim/broken"]})
        assert result.is_error
        assert "sim/broken" in text_of(result)
        assert result.structured_content is not None
        assert result.structured_content["failure_reason"] == "all_panels_failed"
        assert [f["model"] for f in result.structured_content["failed_models"]] == ["sim/broken"]

    async def test_an_unknown_model_is_refused_before_anything_runs(self, app):
        user = new_user(app)
        async with http_client(app, user["token"]) as client:
            result = await client.call_tool("fusion", {"question": QUESTION, "analysis_models": ["sim/nope"]})
        assert result.is_error
        assert "sim/nope" in text_of(result)
        assert app.orm(f"result = Run.objects.filter(user_id={user['id']}).count()") == 0


class TestCancelling:
    async def test_cancelling_the_request_cancels_the_run_and_closes_its_upstream_streams(self, app):
        user = new_user(app)
        progress = Progress()
        async with http_client(app, user["token"]) as client:
            with anyio.move_on_after(30) as timeout:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: client.call_tool(
                            "fusion",
                            {"question": QUESTION, "analysis_models": ["sim/slow"]},
                            progress_callback=progress,
                        )
                    )
                    await progress.arrived.wait()  # the run has started
                    while not app.upstream.requests_for("sim/slow"):
                        await anyio.sleep(0.05)
                    await anyio.sleep(0.3)  # the member is streaming
                    tg.cancel_scope.cancel()  # the SDK's way: the call's task is cancelled
            assert not timeout.cancelled_caught
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "sim/slow" not in app.upstream.disconnects:
            await anyio.sleep(0.1)
        assert "sim/slow" in app.upstream.disconnects
        status: list[str] = []
        while time.monotonic() < deadline:
            status = await app.aorm(
                f"result = list(Run.objects.filter(user_id={user['id']}).values_list('status', flat=True))"
            )
            if status != ["running"]:
                break
            await anyio.sleep(0.2)
        assert status == ["cancelled"]


@pytest.mark.django_db
class TestChoosingThePanel:
    @pytest.fixture(autouse=True)
    def builtins(self, settings):
        settings.FUSION_BUILTIN_PRESETS = BUILTINS

    def test_inline_fields_replace_the_presets_and_research_is_merged_over_its_own(self, alice):
        from chat.api.mcp import PanelChoice, chosen_for

        panel = PanelChoice(
            preset="fusion/quality", analysis_models=["sim/x", "sim/y"], writer="sim/w", research={"max_tool_calls": 2}
        )
        chosen = chosen_for(alice, panel)
        assert chosen.builtin_key == "quality"
        assert [m["model"] for m in chosen.config["members"]] == ["sim/x", "sim/y"]
        assert chosen.config["analyst"] == {"model": "sim/analyst"} and chosen.config["writer"] == {"model": "sim/w"}
        assert chosen.config["research"]["max_tool_calls"] == 2

    def test_no_preset_is_the_default_panel(self, alice, settings):
        from chat.api.mcp import PanelChoice, chosen_for

        settings.FUSION_DEFAULT_PANEL = ["sim/a", "sim/b"]
        chosen = chosen_for(alice, PanelChoice())
        assert [m["model"] for m in chosen.config["members"]] == ["sim/a", "sim/b"] and chosen.builtin_key == ""


@pytest.mark.django_db(transaction=True)
class TestOneSessionManagerPerEventLoop:
    """Daphne has no lifespan: the SDK's session manager starts with the first request of each loop
    (each test here runs on a fresh one)."""

    async def _list_tools_twice(self, alice) -> None:
        from asgiref.sync import sync_to_async

        from chat.api import mcp
        from chat.api.tokens import api_token_create
        from fusionsite.asgi import application

        secret = (await sync_to_async(api_token_create)(user=alice, name="in-process")).secret
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=application), headers={"Authorization": f"Bearer {secret}"}
        )
        for _ in range(2):
            async with Client(streamable_http_client("http://127.0.0.1/mcp", http_client=http)) as client:
                assert "fusion" in {t.name for t in (await client.list_tools()).tools}
        assert len([loop for loop in mcp._running if not loop.is_closed()]) == 1

    async def test_the_first_loop_starts_its_manager(self, alice):
        await self._list_tools_twice(alice)

    async def test_a_later_loop_starts_another(self, alice):
        await self._list_tools_twice(alice)


class TestStdio:
    async def test_the_command_serves_the_tool_over_stdio_as_the_named_user(self, app):
        user = new_user(app)
        params = StdioServerParameters(
            command=sys.executable, args=["manage.py", "mcp", "--user", user["name"]], env=app.env, cwd=ROOT
        )
        with anyio.fail_after(60):
            async with Client(params) as client:
                result = await client.call_tool("fusion", {"question": QUESTION, "preset": "fast"})
        assert not result.is_error, text_of(result)
        assert text_of(result) == WRITER_ANSWER
        assert result.structured_content is not None
        owner = app.orm(f"result = Run.objects.get(pk={result.structured_content['run_id']!r}).user.username")
        assert owner == user["name"]

    async def test_cancelling_a_call_over_stdio_cancels_the_run(self, app):
        user = new_user(app)
        params = StdioServerParameters(
            command=sys.executable, args=["manage.py", "mcp", "--user", user["name"]], env=app.env, cwd=ROOT
        )
        app.upstream.disconnects.clear()
        progress = Progress()
        with anyio.fail_after(60):
            async with Client(params) as client:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: client.call_tool(
                            "fusion",
                            {"question": QUESTION, "analysis_models": ["sim/slow"]},
                            progress_callback=progress,
                        )
                    )
                    await progress.arrived.wait()
                    await anyio.sleep(0.3)
                    tg.cancel_scope.cancel()  # the client sends notifications/cancelled
                deadline = time.monotonic() + 10  # with the server still running: the cancel did it
                while time.monotonic() < deadline and "sim/slow" not in app.upstream.disconnects:
                    await anyio.sleep(0.1)
                assert "sim/slow" in app.upstream.disconnects

    def test_an_unknown_user_is_refused(self, app):
        import subprocess

        done = subprocess.run(
            [sys.executable, "manage.py", "mcp", "--user", "nobody-here"],
            cwd=ROOT,
            env=app.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "No active user 'nobody-here'" in done.stderr
        assert done.stdout == ""
