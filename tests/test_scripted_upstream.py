"""The scripted OpenAI-compatible upstream itself: endpoints, generated content, control API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.testing.scripted import ANALYSIS_MARKER, DEMO_SCRIPTS, ScriptedUpstream, fault_for, validate_scripts
from chat.fusion.sse import SSEDecoder, SSEEvent

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-secret-key-0123456789"
ANSWERS = {
    "Response A": "Use PostgreSQL for anything multi-user. Its transactions and constraints prevent subtle corruption. "
    "Backups with point-in-time recovery are mature.",
    "Response B": "SQLite is enough for a small team with one server. Its transactions are reliable and it needs "
    "no administration whatsoever.",
    "Response C": "Pick whatever your team already operates confidently. Operational familiarity matters more than "
    "benchmarks, and transactions exist everywhere.",
}
QUESTION = "Which database should a small team pick?"


@pytest.fixture
async def up() -> AsyncIterator[ScriptedUpstream]:
    scripts = {**DEMO_SCRIPTS, "m/plain": {"content": "Hello there."}}
    async with ScriptedUpstream(scripts, time_scale=0.001) as server:
        yield server


@pytest.fixture
async def http(up: ScriptedUpstream) -> AsyncIterator[httpx.AsyncClient]:
    root = up.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def analyst_messages(answers: dict[str, str]) -> list[dict[str, str]]:
    blocks = "\n\n".join(f'<response label="{label}">\n{text}\n</response>' for label, text in answers.items())
    return [
        {"role": "system", "content": f"Compare the answers. Return {ANALYSIS_MARKER} only."},
        {"role": "user", "content": f"{blocks}\n\n<question>\n{QUESTION}\n</question>"},
    ]


async def chat(http: httpx.AsyncClient, model: str, messages: list[dict[str, Any]], **params: Any) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={"model": model, "messages": messages, **params})


async def sse_events(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[bytes, list[SSEEvent]]:
    raw = b""
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        async for part in response.aiter_bytes():
            raw += part
    decoder = SSEDecoder()
    items = decoder.feed(raw) + decoder.close()
    return raw, [i for i in items if isinstance(i, SSEEvent)]


def text_of(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


class TestModelsEndpoint:
    async def test_it_lists_scripted_models_in_openrouter_shape(self, http: httpx.AsyncClient) -> None:
        models = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
        assert {
            "sim/atlas",
            "sim/borealis",
            "sim/cirrus",
            "sim/analyst",
            "sim/writer",
            "sim/agent",
            "sim/judge",
            "m/plain",
        } == set(models)
        atlas = models["sim/atlas"]
        assert atlas["name"] and atlas["context_length"] > 0
        assert set(atlas["pricing"]) >= {"prompt", "completion"}
        assert float(models["m/plain"]["pricing"]["prompt"]) > 0  # default pricing for unpriced scripts


class TestChatCompletions:
    async def test_non_streaming_returns_one_completion(self, http: httpx.AsyncClient) -> None:
        response = await chat(http, "m/plain", [{"role": "user", "content": "hi"}])
        body = response.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
        assert text_of(response) == "Hello there."
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]

    async def test_streaming_sends_chunks_usage_and_done(self, http: httpx.AsyncClient) -> None:
        _, events = await sse_events(http, {"model": "m/plain", "messages": [{"role": "user", "content": "hi"}]})
        chunks = [json.loads(e.data) for e in events[:-1]]
        assert events[-1].done
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Hello there."
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost"] > 0
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    async def test_unknown_model_gets_openrouter_404(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        up.set_scripts({"m/plain": {"content": "x"}})
        response = await chat(http, "nope/model", [{"role": "user", "content": "hi"}])
        assert response.status_code == 404
        assert response.json()["error"] == {
            "code": 404,
            "message": "nope/model is not a valid model ID",
            "metadata": {},
        }

    async def test_the_star_script_serves_any_model(self, http: httpx.AsyncClient) -> None:
        response = await chat(http, "anything/else", [{"role": "user", "content": "Why is the sky blue?"}])
        assert response.status_code == 200 and "Why is the sky blue" in text_of(response)

    async def test_generated_answers_are_deterministic_and_differ_per_model(self, http: httpx.AsyncClient) -> None:
        messages = [{"role": "user", "content": QUESTION}]
        atlas = [text_of(await chat(http, "sim/atlas", messages)) for _ in range(2)]
        cirrus = text_of(await chat(http, "sim/cirrus", messages))
        assert atlas[0] == atlas[1] != cirrus
        assert atlas[0].count("\n\n") >= 2  # several Markdown paragraphs

    async def test_max_tokens_cuts_the_answer_with_finish_length(self, http: httpx.AsyncClient) -> None:
        response = await chat(http, "sim/atlas", [{"role": "user", "content": QUESTION}], max_tokens=5)
        assert len(text_of(response)) == 20 and response.json()["choices"][0]["finish_reason"] == "length"

    async def test_faults_apply_in_order_by_request_count(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        faults = [{"type": "http", "status": 429, "retry_after": 2}, {"type": "http", "status": 503, "times": 2}]
        up.set_scripts({"m/f": {"content": "ok", "faults": faults}})
        statuses = [(await chat(http, "m/f", [])).status_code for _ in range(5)]
        assert statuses == [429, 503, 503, 200, 200]

    async def test_http_faults_carry_error_json_and_scaled_retry_after(
        self, http: httpx.AsyncClient, up: ScriptedUpstream
    ) -> None:
        up.set_scripts({"m/f": {"faults": [{"type": "http", "status": 429, "retry_after": 2}]}})
        response = await chat(http, "m/f", [])
        assert response.json()["error"]["code"] == 429
        assert response.headers["retry-after"] == "0.002"  # 2 s at time_scale 0.001

    async def test_crlf_and_multiline_options_change_the_framing(
        self, http: httpx.AsyncClient, up: ScriptedUpstream
    ) -> None:
        up.set_scripts({"m/x": {"content": "abc", "sse_crlf": True, "sse_multiline": True}})
        raw, events = await sse_events(http, {"model": "m/x", "messages": []})
        assert b"\r\n\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
        assert "\n" in events[1].data and json.loads(events[1].data)["choices"][0]["delta"]["content"] == "abc"

    async def test_keepalive_comments_are_sent_while_waiting(
        self, http: httpx.AsyncClient, up: ScriptedUpstream
    ) -> None:
        up.set_scripts({"m/k": {"content": "late", "ttft_ms": 30_000, "keepalive_ms": 2000}})  # 30 ms, every 2 ms
        raw, events = await sse_events(http, {"model": "m/k", "messages": []})
        assert raw.count(b": OPENROUTER PROCESSING\n\n") >= 5
        assert json.loads(events[1].data)["choices"][0]["delta"]["content"] == "late"

    async def test_tool_calls_stream_as_fragments(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        up.set_scripts(
            {
                "m/t": {
                    "tool_calls": [{"name": "web_fetch", "arguments": {"url": "https://example.com/a/long/path"}}],
                    "chunk_chars": 5,
                }
            }
        )
        _, events = await sse_events(http, {"model": "m/t", "messages": []})
        chunks = [json.loads(e.data) for e in events if not e.done]
        fragments = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
        assert fragments[0]["function"]["name"] == "web_fetch" and len(fragments) > 3
        assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {
            "url": "https://example.com/a/long/path"
        }
        assert any(c["choices"] and c["choices"][0]["finish_reason"] == "tool_calls" for c in chunks)


class TestAnalystAndWriter:
    async def test_analyst_returns_fusion_analysis_json_built_from_labels(self, http: httpx.AsyncClient) -> None:
        analysis = json.loads(text_of(await chat(http, "sim/analyst", analyst_messages(ANSWERS))))
        assert set(analysis) == {"consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots"}
        labels = set(ANSWERS)
        stances = analysis["contradictions"][0]["stances"]
        assert {s["model"] for s in stances} == labels
        for stance in stances:
            assert stance["stance"] in ANSWERS[stance["model"]]  # quoted from that very answer
        assert "transactions" in " ".join(analysis["consensus"])  # the word all three share
        assert {i["model"] for i in analysis["unique_insights"]} <= labels and analysis["unique_insights"]
        for item in analysis["partial_coverage"]:
            assert set(item["models"]) < labels
        assert all(isinstance(s, str) for s in analysis["blind_spots"])

    async def test_analyst_json_streams_like_any_answer(self, http: httpx.AsyncClient) -> None:
        _, events = await sse_events(http, {"model": "sim/analyst", "messages": analyst_messages(ANSWERS)})
        chunks = [json.loads(e.data) for e in events if not e.done]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert json.loads(text)["contradictions"]

    async def test_response_format_with_labelled_blocks_also_gets_analysis(self, http: httpx.AsyncClient) -> None:
        messages = [{"role": "user", "content": analyst_messages(ANSWERS)[1]["content"]}]  # no marker
        response = await chat(http, "sim/analyst", messages, response_format={"type": "json_object"})
        assert "consensus" in json.loads(text_of(response))

    async def test_invalid_json_fault_then_valid_json(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        up.set_scripts({"m/analyst": {"faults": [{"type": "invalid_json", "times": 1}]}})
        first = text_of(await chat(http, "m/analyst", analyst_messages(ANSWERS)))
        second = text_of(await chat(http, "m/analyst", analyst_messages(ANSWERS)))
        with pytest.raises(json.JSONDecodeError):
            json.loads(first)
        assert "consensus" in json.loads(second)

    async def test_fenced_json_option(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        up.set_scripts({"m/analyst": {"fence_json": True}})
        text = text_of(await chat(http, "m/analyst", analyst_messages(ANSWERS)))
        assert text.startswith("```json\n") and text.endswith("\n```")

    async def test_writer_fuses_one_sentence_from_each_answer(self, http: httpx.AsyncClient) -> None:
        blocks = "\n\n".join(f'<answer model="m/{i}">\n{t}\n</answer>' for i, t in enumerate(ANSWERS.values()))
        messages = [
            {"role": "user", "content": f"<question>\n{QUESTION}\n</question>\n\n{blocks}\n\nWrite the final answer."}
        ]
        fused = text_of(await chat(http, "sim/writer", messages))
        assert ANALYSIS_MARKER not in fused and fused.startswith("## ")
        bullets = [line[2:] for line in fused.splitlines() if line.startswith("- ")]
        assert len(bullets) == 3
        for bullet, answer in zip(bullets, ANSWERS.values()):
            assert bullet in answer


class TestControlEndpoints:
    async def test_requests_are_recorded_with_the_key_redacted(self, http: httpx.AsyncClient) -> None:
        await chat(http, "m/plain", [{"role": "user", "content": "hi"}], temperature=0.3)
        response = await http.get("/_scripted/requests")
        assert KEY not in response.text
        (record,) = response.json()["requests"]
        assert record["model"] == "m/plain" and record["messages"] == [{"role": "user", "content": "hi"}]
        assert record["params"] == {"temperature": 0.3}
        assert record["headers"]["authorization"] == "Bearer [redacted]" and record["time"] > 0

    async def test_disconnects_list_clients_that_hung_up(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        up.set_scripts({"m/h": {"content": "x" * 100, "faults": [{"type": "hang", "after_chars": 10}]}})
        async with http.stream(
            "POST", "/v1/chat/completions", json={"model": "m/h", "messages": [], "stream": True}
        ) as r:
            async for _ in r.aiter_bytes():
                break
        assert await up.wait_for_disconnect("m/h")
        assert (await http.get("/_scripted/disconnects")).json() == {"disconnects": ["m/h"]}

    async def test_a_finished_stream_is_not_a_disconnect(self, http: httpx.AsyncClient, up: ScriptedUpstream) -> None:
        await sse_events(http, {"model": "m/plain", "messages": []})
        assert up.disconnects == []

    async def test_scripts_can_be_replaced_at_run_time(self, http: httpx.AsyncClient) -> None:
        response = await http.post("/_scripted/scripts", json={"new/model": {"content": "Fresh."}})
        assert response.json() == {"ok": True, "models": ["new/model"]}
        assert text_of(await chat(http, "new/model", [])) == "Fresh."
        assert (await chat(http, "sim/atlas", [])).status_code == 404
        assert (await http.get("/_scripted/scripts")).json() == {"new/model": {"content": "Fresh."}}

    async def test_invalid_scripts_are_rejected_with_the_reason(self, http: httpx.AsyncClient) -> None:
        response = await http.post("/_scripted/scripts", json={"m/a": {"tokens_per_sec": 5}})
        assert response.status_code == 400 and "tokens_per_sec" in response.json()["error"]["message"]
        assert (await http.get("/v1/models")).json()["data"]  # old scripts kept

    async def test_reset_forgets_requests_and_fault_counters(
        self, http: httpx.AsyncClient, up: ScriptedUpstream
    ) -> None:
        up.set_scripts({"m/f": {"content": "ok", "faults": [{"type": "http", "status": 500}]}})
        assert (await chat(http, "m/f", [])).status_code == 500
        assert (await http.post("/_scripted/reset")).json() == {"ok": True}
        assert up.requests == []
        assert (await chat(http, "m/f", [])).status_code == 500  # the fault applies again

    async def test_unknown_routes_get_404(self, http: httpx.AsyncClient) -> None:
        assert (await http.get("/v1/nothing")).status_code == 404


class TestScriptFormat:
    def test_fault_for_counts_times_and_forever(self) -> None:
        script = {"faults": [{"type": "eof", "times": 2}, {"type": "hang", "times": -1}]}
        assert [fault_for(script, n)["type"] for n in (1, 2, 3, 50)] == ["eof", "eof", "hang", "hang"]
        assert fault_for({"faults": [{"type": "eof"}]}, 2) is None

    @pytest.mark.parametrize(
        "scripts",
        [
            [],
            {"m": "text"},
            {"m": {"style": "poetic"}},
            {"m": {"faults": [{"type": "boom"}]}},
            {"m": {"faults": [{"type": "http"}]}},
        ],
    )
    def test_bad_scripts_are_refused(self, scripts: Any) -> None:
        with pytest.raises(ValueError):
            validate_scripts(scripts)

    def test_demo_scripts_are_valid_and_varied(self) -> None:
        validate_scripts(DEMO_SCRIPTS)
        panel = [DEMO_SCRIPTS[m] for m in ("sim/atlas", "sim/borealis", "sim/cirrus")]
        assert len({s["style"] for s in panel}) == 3 and any(s.get("reasoning") for s in panel)
        assert all(300 <= s["ttft_ms"] <= 900 and 30 <= s["tokens_per_s"] <= 80 for s in panel)


class TestRunningIt:
    def test_start_in_thread_serves_synchronous_callers(self) -> None:
        up = ScriptedUpstream({"m/a": {"content": "sync"}}, time_scale=0).start_in_thread()
        try:
            response = httpx.post(f"{up.base_url}/chat/completions", json={"model": "m/a", "messages": []})
            assert text_of(response) == "sync"
            assert up.requests[0]["model"] == "m/a"
        finally:
            up.stop()

    def test_the_cli_prints_its_base_url_and_serves(self) -> None:
        command = [sys.executable, "-m", "chat.testing.scripted", "--port", "0", "--time-scale", "0"]
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                base_url = process.stdout.readline().strip()
                assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
                models = httpx.get(f"{base_url}/models", timeout=5).json()["data"]
                assert "sim/atlas" in {m["id"] for m in models}
            finally:
                process.terminate()
