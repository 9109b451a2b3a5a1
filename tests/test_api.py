"""The HTTP API against a live Daphne and the scripted upstream, read by the official ``openai``
client: each way of naming the panel, streamed and not, sync and async; errors; disconnects."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.live import LiveApp, live_app

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
    "sim/outer": {
        "steps": [{"tool_calls": [{"name": "fusion", "arguments": {}}]}, {"content": "Outer answer from the panel."}]
    },
    "sim/direct": {"ttft_ms": 5, "content": "Two plus two is four."},
    "sim/greedy": {
        "steps": [
            {"tool_calls": [{"name": "fusion", "arguments": {}}]},
            {"tool_calls": [{"name": "fusion", "arguments": {}}]},
            {"content": "Answered after a capped second call."},
        ]
    },
    "sim/clienttool": {"steps": [{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}]},
    "sim/writer": {
        "ttft_ms": 10,
        "tokens_per_s": 4000,
        "chunk_chars": 20,
        "content": "The sky is blue because of Rayleigh scattering.",
    },
}
SIM_ROLES = {"analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}
BUILTINS = {
    "quality": {"name": "Quality", "members": [{"model": "sim/a"}, {"model": "sim/b"}], **SIM_ROLES},
    "fast": {"name": "Fast", "members": [{"model": "sim/a"}], **SIM_ROLES},
}
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


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
        "FUSION_API_KEEPALIVE_S": "0.5",
    }
    with live_app(tmp_path_factory.mktemp("api"), SCRIPTS, env, name="api") as live:
        yield live


def new_token(app: LiveApp, **user_fields: Any) -> tuple[str, int]:
    name = f"api_{uuid.uuid4().hex[:8]}"
    got = app.orm(
        "from chat.api.tokens import api_token_create\n"
        f"u = User.objects.create_user({name!r}, password='x-long-password-1')\n"
        f"result = [api_token_create(user=u, name='tests').secret, u.pk]"
    )
    return got[0], got[1]


def client(app: LiveApp, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/api/v1", api_key=token, max_retries=0, timeout=30)


def aclient(app: LiveApp, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{app.url}/api/v1", api_key=token, max_retries=0, timeout=30)


class TestNamingThePanel:
    @pytest.mark.parametrize(
        "model", ["fusion", "openrouter/fusion", "fusion/quality", "fusion/fast", "openrouter/fusion-flash"]
    )
    def test_each_fusion_model_answers_with_the_fused_answer(self, app, model):
        token, _ = new_token(app)
        done = client(app, token).chat.completions.create(model=model, messages=QUESTION)
        assert done.choices[0].message.content == SCRIPTS["sim/writer"]["content"]
        assert done.model == model
        assert done.usage is not None and done.usage.total_tokens > 0
        fusion = done.model_extra["fusion"]
        assert fusion["status"] == "completed"
        assert {r["model"] for r in fusion["responses"]} <= {"sim/a", "sim/b"}

    def test_a_users_preset_is_named_by_its_slug(self, app):
        token, user_id = new_token(app)
        app.orm(
            "from chat.presets import preset_create\n"
            f"u = User.objects.get(pk={user_id})\n"
            "p = preset_create(user=u, name='Deep Research', config={'members': [{'model': 'sim/b'}], "
            "'analyst': {'model': 'sim/analyst'}, 'writer': {'model': 'sim/writer'}})\n"
            "result = p.slug"
        )
        done = client(app, token).chat.completions.create(model="fusion/deep-research", messages=QUESTION)
        assert [r["model"] for r in done.model_extra["fusion"]["responses"]] == ["sim/b"]

    def test_the_plugin_configures_the_panel_inline(self, app):
        token, _ = new_token(app)
        done = client(app, token).chat.completions.create(
            model="fusion/quality",
            messages=QUESTION,
            extra_body={"plugins": [{"id": "fusion", "analysis_models": ["sim/b"], "tools": []}]},
        )
        assert [r["model"] for r in done.model_extra["fusion"]["responses"]] == ["sim/b"]


class TestStreaming:
    def test_the_openai_client_reads_the_stream_and_the_last_chunk_has_usage(self, app):
        token, _ = new_token(app)
        stream = client(app, token).chat.completions.create(model="fusion", messages=QUESTION, stream=True)
        text, kinds, usage = "", [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            extra = chunk.model_extra or {}
            if extra.get("fusion") and "type" in extra["fusion"]:
                kinds.append(extra["fusion"]["type"])
            usage = chunk.usage or usage
        assert text == SCRIPTS["sim/writer"]["content"]
        assert kinds[0] == "response.fusion_call.in_progress"
        for kind in ("panel.added", "panel.delta", "panel.completed", "analysis.in_progress", "analysis.completed"):
            assert f"response.fusion_call.{kind}" in kinds
        assert usage is not None and usage.model_extra["cost"] >= 0

    async def test_the_async_client_streams_too(self, app):
        token, _ = new_token(app)
        stream = await aclient(app, token).chat.completions.create(model="fusion/fast", messages=QUESTION, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        assert text == SCRIPTS["sim/writer"]["content"]


class TestErrors:
    def test_a_bad_token_is_401(self, app):
        with pytest.raises(openai.AuthenticationError) as exc:
            client(app, "fsn_" + "x" * 40).chat.completions.create(model="fusion", messages=QUESTION)
        assert exc.value.status_code == 401

    def test_an_unknown_preset_is_404(self, app):
        token, _ = new_token(app)
        with pytest.raises(openai.NotFoundError) as exc:
            client(app, token).chat.completions.create(model="fusion/nope", messages=QUESTION)
        assert exc.value.body["metadata"]["field"] == "model"

    def test_a_bad_field_is_400_and_named(self, app):
        token, _ = new_token(app)
        with pytest.raises(openai.BadRequestError) as exc:
            client(app, token).chat.completions.create(model="fusion", messages=QUESTION, temperature=7)
        assert exc.value.body["metadata"]["field"] == "temperature"

    def test_every_member_failing_is_502_with_the_failure_reason(self, app):
        token, _ = new_token(app)
        with pytest.raises(openai.APIStatusError) as exc:
            client(app, token).chat.completions.create(
                model="fusion",
                messages=QUESTION,
                extra_body={"plugins": [{"id": "fusion", "analysis_models": ["sim/broken"], "tools": []}]},
            )
        assert exc.value.status_code == 502
        assert exc.value.body["metadata"]["failure_reason"] == "all_panels_failed"


class TestDisconnect:
    def test_a_client_that_goes_away_cancels_the_run_and_its_upstream_streams(self, app):
        token, user_id = new_token(app)
        with httpx.stream(
            "POST",
            f"{app.url}/api/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "model": "fusion",
                "messages": QUESTION,
                "stream": True,
                "plugins": [{"id": "fusion", "analysis_models": ["sim/slow"], "tools": []}],
            },
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if "panel.delta" in line:
                    break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "sim/slow" not in app.upstream.disconnects:
            time.sleep(0.1)
        assert "sim/slow" in app.upstream.disconnects
        status = app.orm(f"result = list(Run.objects.filter(user_id={user_id}).values_list('status', flat=True))")
        assert status == ["cancelled"]


class TestResponses:
    def test_the_event_sequence_of_a_streamed_response(self, app):
        token, _ = new_token(app)
        stream = client(app, token).responses.create(
            model="fusion/quality", input="Why is the sky blue?", instructions="Be brief.", stream=True
        )
        kinds, text, final = [], "", None
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.completed":
                final = event.response
        assert kinds[0] == "response.created"
        order = [
            "response.created",
            "response.fusion_call.in_progress",
            "response.fusion_call.panel.added",
            "response.fusion_call.panel.delta",
            "response.fusion_call.panel.completed",
            "response.fusion_call.analysis.in_progress",
            "response.fusion_call.analysis.completed",
            "response.fusion_call.completed",
            "response.output_text.delta",
            "response.completed",
        ]
        positions = [kinds.index(k) for k in order]
        assert positions == sorted(positions), kinds
        assert text == SCRIPTS["sim/writer"]["content"]
        assert final is not None and final.usage is not None and final.usage.total_tokens > 0
        fusion = final.output[0].model_dump()
        assert fusion["type"] == "openrouter:fusion" and fusion["status"] == "completed"
        assert "analysis" in fusion and {r["model"] for r in fusion["responses"]} == {"sim/a", "sim/b"}
        assert final.output_text == text

    def test_the_server_tool_shape_runs_its_panel_and_the_outer_model_writes(self, app):
        token, _ = new_token(app)
        done = client(app, token).responses.create(
            model="sim/writer",
            input="Why is the sky blue?",
            tools=[
                {
                    "type": "openrouter:fusion",
                    "parameters": {"analysis_models": ["sim/b"], "model": "sim/analyst", "tools": []},
                }
            ],
        )
        fusion = done.output[0].model_dump()
        assert [r["model"] for r in fusion["responses"]] == ["sim/b"]
        assert done.output_text == SCRIPTS["sim/writer"]["content"]


class TestModels:
    def test_the_list_has_fusion_the_builtins_the_aliases_and_my_presets_only(self, app):
        token, user_id = new_token(app)
        other, other_id = new_token(app)
        app.orm(
            "from chat.presets import preset_create\n"
            f"u = User.objects.get(pk={other_id})\n"
            "preset_create(user=u, name='Secret Panel', config={'members': [{'model': 'sim/b'}], "
            "'analyst': {'model': 'sim/analyst'}, 'writer': {'model': 'sim/writer'}})"
        )
        ids = [m.id for m in client(app, token).models.list()]
        assert ids[:3] == ["fusion", "openrouter/fusion", "openrouter/fusion-flash"]
        assert "fusion/quality" in ids and "fusion/fast" in ids
        assert "fusion/secret-panel" not in ids
        assert "fusion/secret-panel" in [m.id for m in client(app, other).models.list()]

    def test_a_second_users_token_cannot_run_the_first_users_preset(self, app):
        token, user_id = new_token(app)
        app.orm(
            "from chat.presets import preset_create\n"
            f"u = User.objects.get(pk={user_id})\n"
            "preset_create(user=u, name='Mine Only', config={'members': [{'model': 'sim/b'}], "
            "'analyst': {'model': 'sim/analyst'}, 'writer': {'model': 'sim/writer'}})"
        )
        intruder, _ = new_token(app)
        with pytest.raises(openai.NotFoundError):
            client(app, intruder).chat.completions.create(model="fusion/mine-only", messages=QUESTION)


FUSION_TOOL = {
    "type": "openrouter:fusion",
    "parameters": {"analysis_models": ["sim/a", "sim/b"], "model": "sim/analyst", "tools": []},
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


class TestServerTool:
    def test_the_outer_model_calls_fusion_reads_the_result_and_answers(self, app):
        token, _ = new_token(app)
        done = client(app, token).chat.completions.create(model="sim/outer", messages=QUESTION, tools=[FUSION_TOOL])
        assert done.choices[0].message.content == "Outer answer from the panel."
        fusion = done.model_extra["fusion"]
        assert fusion["invoked"] and {r["model"] for r in fusion["responses"]} == {"sim/a", "sim/b"}
        # The outer model was offered the fusion function, then read the OutputFusionServerToolItem.
        outer = [r for r in app.upstream.requests if r["model"] == "sim/outer"][-2:]
        assert any(t["function"]["name"] == "fusion" for t in outer[0]["params"]["tools"])
        result = json.loads(outer[1]["messages"][-1]["content"])
        assert result["type"] == "openrouter:fusion" and result["status"] == "completed"
        assert set(result) >= {"analysis", "responses"}
        roles = [c["role"] for c in fusion["calls"]]
        assert roles.count("writer") == 2 and roles.count("panel") == 2  # both outer calls are billed

    def test_an_outer_model_that_answers_alone_runs_no_panel(self, app):
        token, _ = new_token(app)
        before = len([r for r in app.upstream.requests if r["model"] in ("sim/a", "sim/b")])
        done = client(app, token).chat.completions.create(model="sim/direct", messages=QUESTION, tools=[FUSION_TOOL])
        assert done.choices[0].message.content == "Two plus two is four."
        assert done.model_extra["fusion"]["invoked"] is False
        assert len([r for r in app.upstream.requests if r["model"] in ("sim/a", "sim/b")]) == before

    def test_a_second_fusion_call_is_capped(self, app):
        token, _ = new_token(app)
        done = client(app, token).chat.completions.create(model="sim/greedy", messages=QUESTION, tools=[FUSION_TOOL])
        assert done.choices[0].message.content == "Answered after a capped second call."
        last = [r for r in app.upstream.requests if r["model"] == "sim/greedy"][-1]
        replies = [json.loads(m["content"]) for m in last["messages"] if m["role"] == "tool"]
        assert replies[0]["status"] == "completed"
        assert replies[1]["failure_reason"] == "fusion_invocation_capped"
        assert len([r for r in app.upstream.requests if r["model"] == "sim/analyst"]) >= 1

    def test_the_clients_own_tools_come_back_as_tool_calls(self, app):
        token, _ = new_token(app)
        done = client(app, token).chat.completions.create(
            model="sim/clienttool", messages=QUESTION, tools=[FUSION_TOOL, WEATHER]
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}

    def test_streamed_the_fusion_call_events_come_before_the_answer(self, app):
        token, _ = new_token(app)
        stream = client(app, token).chat.completions.create(
            model="sim/outer", messages=QUESTION, tools=[FUSION_TOOL], stream=True
        )
        kinds, text = [], ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                kinds.append("content")
            fusion = (chunk.model_extra or {}).get("fusion")
            if fusion and "type" in fusion and "sequence_number" in fusion:
                kinds.append(fusion["type"])
        assert text == "Outer answer from the panel."
        assert kinds.count("response.fusion_call.in_progress") == 1
        assert kinds.count("response.fusion_call.completed") == 1
        assert kinds.index("response.fusion_call.completed") < kinds.index("content")


def post(app: LiveApp, token: str | None, body: Any, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{app.url}/api/v1/chat/completions", json=body, headers={**auth, **headers}, timeout=30)


SIMPLE = {"model": "fusion/fast", "messages": QUESTION}


class TestEveryErrorStatus:
    def test_no_token_and_a_revoked_token_are_401(self, app):
        token, user_id = new_token(app)
        assert post(app, None, SIMPLE).json()["error"]["code"] == 401
        app.orm(
            "from chat.api.tokens import api_token_revoke\nfrom chat.models import ApiToken\n"
            f"[api_token_revoke(token=t) for t in ApiToken.objects.filter(user_id={user_id})]"
        )
        response = post(app, token, SIMPLE)
        assert response.status_code == 401
        assert response.json()["error"]["metadata"]["reason"] == "bad_token"

    def test_the_spend_limit_is_402_with_the_amount_left(self, app):
        token, user_id = new_token(app)
        app.orm(f"UserLimits.objects.create(user_id={user_id}, daily_spend_limit_usd='0.0001')")
        response = post(app, token, SIMPLE)
        assert response.status_code == 402
        error = response.json()["error"]
        assert error["metadata"]["reason"] == "spend_limit" and error["metadata"]["left_usd"] == pytest.approx(0.0001)
        assert "left today" in error["message"]
        assert app.orm(f"result = Run.objects.filter(user_id={user_id}).count()") == 0  # nothing paid, nothing stored
        assert app.orm(f"result = Conversation.objects.filter(user_id={user_id}).count()") == 0

    def test_the_concurrency_limit_is_429_with_retry_after(self, app):
        token, user_id = new_token(app)
        app.orm(
            "from django.utils import timezone\n"
            f"for i in range(20):\n"
            f"    c = Conversation.objects.create(user_id={user_id})\n"
            "    t = Turn.objects.create(conversation=c, index=0, prompt='busy')\n"
            f"    Run.objects.create(user_id={user_id}, conversation=c, turn=t, client_run_id=f'busy-{{i}}', status='running', heartbeat_at=timezone.now() + timezone.timedelta(hours=1))"
        )
        response = post(app, token, SIMPLE)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["metadata"]["reason"] == "limit"

    def test_a_request_from_a_fusions_inner_call_cannot_start_one(self, app):
        token, _ = new_token(app)
        client(app, token).chat.completions.create(**SIMPLE)
        assert app.upstream.requests[-1]["headers"].get("x-fusion-depth") == "1"  # inner calls carry it
        response = post(app, token, SIMPLE, **{"X-Fusion-Depth": "1"})
        assert response.status_code == 400
        assert response.json()["error"]["metadata"]["reason"] == "fusion_recursion"

    def test_wrong_method_bad_json_and_a_huge_body(self, app):
        token, _ = new_token(app)
        got = httpx.get(f"{app.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 405
        bad = httpx.post(
            f"{app.url}/api/v1/chat/completions",
            content=b"{not json",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        huge = post(app, token, {**SIMPLE, "messages": [{"role": "user", "content": "x" * 1_100_000}]})
        assert huge.status_code == 413

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"messages": QUESTION}, "model"),
            ({"model": "fusion", "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
            ({"model": "fusion", "messages": [{"role": "user", "content": "  "}]}, "messages.0.content"),
            ({"model": "fusion", "messages": QUESTION, "plugins": [{"id": "web"}]}, "plugins.0.id"),
            ({"model": "fusion", "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
            ({"model": "fusion", "messages": QUESTION, "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ],
    )
    def test_validation_errors_name_the_field(self, app, body, field):
        token, _ = new_token(app)
        response = post(app, token, body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["metadata"]["field"] == field

    def test_a_non_streamed_request_whose_client_gives_up_cancels_the_run(self, app):
        token, user_id = new_token(app)
        slow = {**SIMPLE, "plugins": [{"id": "fusion", "analysis_models": ["sim/slow"], "tools": []}]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{app.url}/api/v1/chat/completions", json=slow, headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
        deadline = time.monotonic() + 10
        status: list[str] = []
        while time.monotonic() < deadline:
            status = app.orm(f"result = list(Run.objects.filter(user_id={user_id}).values_list('status', flat=True))")
            if status == ["cancelled"]:
                break
            time.sleep(0.3)
        assert status == ["cancelled"]
