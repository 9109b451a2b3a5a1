"""The HTTP API against its own OpenAPI description (``GET /api/v1/openapi.json``).

schemathesis fuzzes each operation on a live Daphne with the scripted upstream and a valid token,
and checks that no response is a server error and that every response's status, content type,
headers and body are the ones the document describes (streamed responses event by event). The
paths the fuzzer cannot reach with a healthy upstream and a fresh user (a failing upstream, the
spend and concurrency limits, the outer model's tool calls, a body too large, no token) are sent
on purpose and checked against the same document.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat.api.models_list import api_models_for_user
from chat.api.openapi import openapi_document
from tests.live import LiveApp, live_app
from tests.test_api import new_token

FAILING = {"times": -1}
PRICED = {"pricing": {"prompt": "0.00001", "completion": "0.00003"}}  # so that a run's estimate is not 0
SCRIPTS: dict[str, Any] = {
    "sim/a": {"chunk_chars": 20, "content": "Alpha says the sky is blue.", **PRICED},
    "sim/b": {"chunk_chars": 20, "content": "Beta says blue, by Rayleigh scattering.", **PRICED},
    "sim/analyst": PRICED,
    "sim/writer": {"chunk_chars": 20, "content": "The sky is blue because of Rayleigh scattering.", **PRICED},
    "sim/outer": {"steps": [{"tool_calls": [{"name": "fusion", "arguments": {}}]}, {"content": "From the panel."}]},
    "sim/direct": {"content": "Two plus two is four."},
    "sim/clienttool": {"steps": [{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}]},
    "sim/broken": {"faults": [{"type": "http", "status": 400, **FAILING}]},
    "sim/limited": {"faults": [{"type": "http", "status": 429, **FAILING}]},
    "sim/no-credits": {"faults": [{"type": "http", "status": 402, **FAILING}]},
}
SIM_ROLES = {"analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}
BUILTINS = {
    "quality": {"name": "Quality", "members": [{"model": "sim/a"}, {"model": "sim/b"}], **SIM_ROLES},
    "fast": {"name": "Fast", "members": [{"model": "sim/a"}], **SIM_ROLES},
}
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
SIMPLE = {"model": "fusion", "messages": QUESTION}
FUSION_TOOL = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["sim/a", "sim/b"], "tools": []}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
MAX_RUNS = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
DOCUMENTED = CHECKS[1:]  # for the 5xx the document promises

# Loaded with the module: schemathesis's fixture loader (schemathesis.pytest.from_fixture) fails
# on pytest 9, so the document comes from Python; TestTheDocument checks that it is what is served.
# A stream is read to its end (schemathesis stops after 20 events by default, and then checks
# each event it read but not the stream as a whole). Most model ids the fuzzer draws are real
# ones, so that its requests get past the 404 and run a fusion.
MODELS = ["fusion", "fusion/quality", "fusion/fast", "openrouter/fusion", "openrouter/fusion-flash"]
MODELS += ["sim/a", "sim/writer", "sim/outer", "sim/clienttool"]
MODEL_FIELDS = ["model", "plugins[*].model", "plugins[*].analysis_models[*]"]
MODEL_FIELDS += ["tools[*].parameters.model", "tools[*].parameters.analysis_models[*]"]
SCHEMA = schemathesis.openapi.from_dict(
    openapi_document(),
    config=schemathesis.Config.from_dict(
        {
            "max-stream-events": 10_000,
            "dictionaries": {"models": {"values": MODELS}},
            "parameters": {f"body.{field}": {"dictionary": "models", "probability": 0.8} for field in MODEL_FIELDS},
        }
    ),
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    env = {
        "FUSION_BUILTIN_PRESETS": json.dumps(BUILTINS),
        "FUSION_DEFAULT_PANEL": "sim/a,sim/b",
        "FUSION_DEFAULT_ANALYST": "sim/analyst",
        "FUSION_DEFAULT_WRITER": "sim/writer",
        # The fuzzer sends a thousand requests with one token, one after the other.
        "FUSION_MAX_CONCURRENT_RUNS_PER_USER": str(MAX_RUNS),
        "FUSION_API_RATE_PER_MIN": "600000",
        "FUSION_API_BURST": "100000",
        "FUSION_DAILY_SPEND_LIMIT_USD": "0",
        "FUSION_API_KEEPALIVE_S": "0.2",
    }
    with live_app(tmp_path_factory.mktemp("api_schema"), SCRIPTS, env, name="api_schema") as live:
        yield live


@pytest.fixture(scope="module")
def call(app: LiveApp) -> dict[str, Any]:
    """How a case reaches the live server: its URL, and a token of a user of its own."""
    token, _ = new_token(app)
    return {"base_url": f"{app.url}/api/v1", "headers": bearer(token), "timeout": 30}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sent(call: dict[str, Any], operation: str, *, checks: list[Any] = CHECKS, **case: Any) -> schemathesis.Response:
    """*case* sent to *operation* ("POST /responses") and its response checked against the document."""
    method, path = operation.split(" ")
    return SCHEMA[path][method].Case(**case).call_and_validate(checks=checks, **call)


def sse_data(response: schemathesis.Response) -> list[Any]:
    """The JSON of each event of a finished stream (which ends with ``[DONE]``)."""
    lines = response.content.decode().splitlines()
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_is_a_server_error_and_every_response_is_documented(case: schemathesis.Case, call) -> None:
    case.call_and_validate(checks=CHECKS, **call)


class TestTheDocument:
    def test_it_is_valid_openapi_3_1_and_describes_the_three_endpoints(self, app):
        served = httpx.get(f"{app.url}/api/v1/openapi.json")
        assert served.status_code == 200 and served.headers["Content-Type"] == "application/json"
        document = served.json()
        assert document["openapi"] == "3.1.0" and document["servers"] == [{"url": "/api/v1"}]
        assert document == openapi_document()
        loaded = schemathesis.openapi.from_url(f"{app.url}/api/v1/openapi.json")
        loaded.validate()  # against the OpenAPI 3.1 meta-schema
        operations = {(op.method.upper(), op.path) for op in (r.ok() for r in loaded.get_all_operations())}
        assert operations == {("POST", "/chat/completions"), ("POST", "/responses"), ("GET", "/models")}

    def test_it_is_served_without_a_token_and_only_to_get(self, app):
        assert httpx.get(f"{app.url}/api/v1/openapi.json").status_code == 200
        refused = httpx.post(f"{app.url}/api/v1/openapi.json")
        assert refused.status_code == 405 and refused.json()["error"]["metadata"]["reason"] == "method_not_allowed"


class TestStreams:
    def test_a_streamed_completion_is_documented_event_by_event(self, call):
        body = {"model": "fusion/quality", "messages": QUESTION, "stream": True}
        chunks = sse_data(sent(call, "POST /chat/completions", body=body))
        kinds = [c["fusion"].get("type") for c in chunks if "fusion" in c]
        assert "response.fusion_call.panel.delta" in kinds and "response.fusion_call.analysis.completed" in kinds
        assert chunks[-1]["usage"]["total_tokens"] > 0 and chunks[-1]["fusion"]["status"] == "completed"

    def test_a_streamed_completion_that_fails_ends_with_a_documented_error(self, call):
        plugin = {"id": "fusion", "analysis_models": ["sim/broken"], "tools": []}
        body = {"model": "fusion", "messages": QUESTION, "stream": True, "plugins": [plugin]}
        chunks = sse_data(sent(call, "POST /chat/completions", body=body))
        assert chunks[-1]["choices"][0]["finish_reason"] == "error"
        assert chunks[-1]["error"]["metadata"]["failure_reason"] == "all_panels_failed"

    def test_a_streamed_response_is_documented_event_by_event(self, call):
        body = {"model": "fusion/quality", "input": "Why is the sky blue?", "instructions": "Be brief.", "stream": True}
        kinds = [e["type"] for e in sse_data(sent(call, "POST /responses", body=body))]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.fusion_call.panel.completed" in kinds and "response.output_text.delta" in kinds

    def test_a_streamed_response_that_fails_ends_with_response_failed(self, call):
        tool = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["sim/broken"], "tools": []}}
        body = {"model": "sim/writer", "input": "Why?", "stream": True, "tools": [tool]}
        events = sse_data(sent(call, "POST /responses", body=body))
        assert events[-1]["type"] == "response.failed"

    def test_an_undocumented_event_fails_the_check(self):
        # The stream tests would pass vacuously if schemathesis did not read the events.
        case = SCHEMA["/chat/completions"]["POST"].Case(body={"model": "fusion", "messages": QUESTION})
        stream = b'data: {"object": "chat.completion.chunk", "surprise": true}\n\ndata: [DONE]\n\n'
        request = httpx.Request("POST", "http://127.0.0.1/api/v1/chat/completions")
        response = httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=stream, request=request)
        response.elapsed = datetime.timedelta(0)
        with pytest.raises(FailureGroup, match="SSE event"):
            case.validate_response(response, checks=[response_schema_conformance])


class TestTheServerToolInChatCompletions:
    def test_an_outer_model_that_calls_fusion_is_documented(self, call):
        body = {"model": "sim/outer", "messages": QUESTION, "tools": [FUSION_TOOL]}
        done = sent(call, "POST /chat/completions", body=body).json()
        assert done["fusion"]["invoked"] is True and done["choices"][0]["message"]["content"] == "From the panel."
        chunks = sse_data(sent(call, "POST /chat/completions", body={**body, "stream": True}))
        assert chunks[-1]["fusion"]["invoked"] is True

    def test_an_outer_model_that_answers_alone_is_documented(self, call):
        body = {"model": "sim/direct", "messages": QUESTION, "tools": [FUSION_TOOL]}
        done = sent(call, "POST /chat/completions", body=body).json()
        assert done["fusion"]["invoked"] is False

    def test_the_clients_tool_calls_are_documented(self, call):
        body = {"model": "sim/clienttool", "messages": QUESTION, "tools": [FUSION_TOOL, WEATHER]}
        choice = sent(call, "POST /chat/completions", body=body).json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        chunks = sse_data(sent(call, "POST /chat/completions", body={**body, "stream": True}))
        calls = [c for chunk in chunks for c in chunk["choices"][0]["delta"].get("tool_calls", [])]
        assert [c["function"]["name"] for c in calls] == ["get_weather"]


class TestErrors:
    """The error statuses the fuzzer cannot reach with a valid token and a healthy upstream."""

    def test_no_token_is_a_documented_401(self, call):
        response = sent({**call, "headers": {}}, "GET /models")
        assert response.status_code == 401

    def test_a_body_over_the_limit_is_a_documented_413(self, call):
        body = {"model": "fusion", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
        response = sent(call, "POST /chat/completions", body=body)
        assert response.status_code == 413

    def test_a_body_over_djangos_upload_limit_is_a_documented_413_too(self, call):
        # Over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB) Django refuses to read request.body: an HTML 400
        # unless chat.views.api.json_body turns RequestDataTooBig into the API's 413.
        body = {"model": "fusion", "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}
        response = sent(call, "POST /chat/completions", body=body)
        assert response.status_code == 413

    def test_another_method_is_a_documented_405(self, call):
        response = sent(call, "POST /chat/completions", method="PUT", body={})
        assert response.status_code == 405

    @pytest.mark.parametrize(
        ("operation", "body"),
        [
            ("POST /chat/completions", {"model": "fusion", "messages": [{"role": "user", "content": "\ud800"}]}),
            ("POST /responses", {"model": "fusion", "input": "Why? \udc00"}),
            (
                "POST /responses",
                {"model": "fusion", "input": "Why?", "plugins": [{"id": "fusion", "preset": "\ud800"}]},
            ),
            ("POST /chat/completions", {**SIMPLE, "plugins": [{"id": "fusion", "analysis_models": "sim/a"}]}),
        ],
    )
    def test_bodies_the_fuzzer_does_not_write_are_documented_400s(self, call, operation, body):
        # Lone surrogates (valid JSON escapes, not Unicode) and a plugin's wrong types were 500s.
        response = sent(call, operation, body=body)
        assert response.status_code == 400, response.text

    def test_a_null_plugin_field_counts_as_left_out(self, call):
        body = {**SIMPLE, "plugins": [{"id": "fusion", "analysis_models": None}]}  # was a 500
        assert sent(call, "POST /chat/completions", body=body).status_code == 200

    @pytest.mark.parametrize(
        ("model", "status", "reason"),
        [
            ("sim/broken", 502, "all_panels_failed"),
            ("sim/limited", 429, "rate_limited"),
            ("sim/no-credits", 402, "insufficient_credits"),
        ],
    )
    def test_a_failing_upstream_is_a_documented_error(self, call, model, status, reason):
        plugin = {"id": "fusion", "analysis_models": [model], "tools": []}
        for operation, body in (
            ("POST /chat/completions", {"model": "fusion", "messages": QUESTION, "plugins": [plugin]}),
            ("POST /responses", {"model": "fusion", "input": "Why?", "plugins": [plugin]}),
        ):
            response = sent(call, operation, checks=DOCUMENTED, body=body)
            assert response.status_code == status, response.text
            assert response.json()["error"]["metadata"]["failure_reason"] == reason

    def test_the_spend_limit_is_a_documented_402(self, app, call):
        token, user_id = new_token(app)
        app.orm(f"UserLimits.objects.create(user_id={user_id}, daily_spend_limit_usd='0.0001')")
        body = {"model": "fusion", "input": "Why is the sky blue?"}
        response = sent({**call, "headers": bearer(token)}, "POST /responses", body=body)
        assert response.status_code == 402
        assert response.json()["error"]["metadata"]["reason"] == "spend_limit"

    def test_too_many_runs_is_a_documented_429_with_retry_after(self, app, call):
        token, user_id = new_token(app)
        app.orm(
            "from django.utils import timezone\n"
            f"for i in range({MAX_RUNS}):\n"
            f"    c = Conversation.objects.create(user_id={user_id})\n"
            "    t = Turn.objects.create(conversation=c, index=0, prompt='busy')\n"
            f"    Run.objects.create(user_id={user_id}, conversation=c, turn=t, client_run_id=f'busy-{{i}}', "
            "status='running', heartbeat_at=timezone.now() + timezone.timedelta(hours=1))"
        )
        body = {"model": "fusion", "messages": QUESTION}
        response = sent({**call, "headers": bearer(token)}, "POST /chat/completions", body=body)
        assert response.status_code == 429
        assert int(response.headers["retry-after"][0]) >= 1


class TestTheModelsList:
    def test_a_server_without_the_fast_builtin_lists_a_documented_list(self, alice, settings):
        # openrouter/fusion-flash names the built-in "fast": without it the whole list was a 404.
        settings.FUSION_BUILTIN_PRESETS = {"quality": BUILTINS["quality"]}
        listed = api_models_for_user(user=alice)
        assert "openrouter/fusion-flash" not in [m["id"] for m in listed["data"]]
        document = openapi_document()
        schema = {"$ref": "#/components/schemas/ModelsListResponse", "components": document["components"]}
        jsonschema.Draft202012Validator(schema).validate(listed)
