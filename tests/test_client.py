"""ChatClient against the scripted upstream over real HTTP on 127.0.0.1 (no database)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest

from chat.fusion.client import ChatClient, parse_retry_after
from chat.fusion.providers import ProviderRegistry, UnknownProvider
from chat.testing.scripted import ScriptedUpstream
from chat.fusion.types import (
    ERROR_MESSAGES,
    ClientEvent,
    ContentDelta,
    Finish,
    Limits,
    ModelSpec,
    Provider,
    ReasoningDelta,
    StreamError,
    ToolCallDelta,
    UsageReport,
)

KEY = "test-secret-key-0123456789"
FAST = Limits(connect=1.0, first_token=1.0, idle=0.5, total=5.0, max_retries=2, backoff_base=0.01, max_retry_after=0.5)
QUESTION = [{"role": "user", "content": "How should a small team choose a database?"}]
TEXT = "The quick brown fox jumps over the lazy dog. " * 4  # 180 chars

Factory = Callable[..., Awaitable[ScriptedUpstream]]


@pytest.fixture
def upstream(scripted):
    """Start scripted upstreams on demand: ``await upstream(scripts)``; all stopped after the test."""
    return scripted


def client_for(up: ScriptedUpstream, *, key: str = KEY, limits: Limits = FAST, **provider: Any) -> ChatClient:
    registry = ProviderRegistry({"openrouter": Provider("openrouter", up.base_url, api_key=key, **provider)})
    return ChatClient(registry, limits=limits)


async def collect(client: ChatClient, model: str, **kwargs: Any) -> list[ClientEvent]:
    async with aclosing(client.stream(ModelSpec(model), QUESTION, **kwargs)) as stream:
        return [event async for event in stream]


def content_of(events: list[ClientEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def the_error(events: list[ClientEvent]) -> StreamError:
    assert isinstance(events[-1], StreamError), events[-1]
    assert sum(isinstance(e, (StreamError, Finish)) for e in events) == 1
    return events[-1]


class TestStreaming:
    async def test_it_streams_content_then_usage_then_finish(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "chunk_chars": 7}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert content_of(events) == TEXT
        assert sum(isinstance(e, ContentDelta) for e in events) == len(range(0, len(TEXT), 7))
        assert isinstance(events[-2], UsageReport)
        assert events[-1] == Finish("stop", malformed_chunks=0)
        assert up.disconnects == []  # reading to [DONE] is not a hang-up

    async def test_reasoning_arrives_once_although_sent_in_two_fields(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "Answer.", "reasoning": "Let me think about it carefully."}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
        assert reasoning == "Let me think about it carefully."
        first_reasoning = next(i for i, e in enumerate(events) if isinstance(e, ReasoningDelta))
        first_content = next(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
        assert first_reasoning < first_content

    async def test_tool_call_fragments_are_streamed_and_assembled(self, upstream: Factory) -> None:
        calls = [{"name": "web_search", "arguments": {"query": "sqlite vs postgres", "max_results": 5}}]
        up = await upstream({"m/a": {"tool_calls": calls, "chunk_chars": 8}})
        async with client_for(up) as client:
            events = await collect(client, "m/a", tools=[{"type": "function", "function": {"name": "web_search"}}])
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        fragments = [e for e in events if isinstance(e, ToolCallDelta)]
        assert len(fragments) > 2 and fragments[0].name == "web_search" and fragments[0].id
        assert json.loads("".join(f.arguments for f in fragments)) == calls[0]["arguments"]
        assert events[-1] == Finish("tool_calls")
        (call,) = completion.tool_calls
        assert (call.name, json.loads(call.arguments)) == ("web_search", calls[0]["arguments"])
        assert completion.finish_reason == "tool_calls" and completion.error is None

    async def test_usage_cost_and_reasoning_tokens_are_reported(self, upstream: Factory) -> None:
        usage = {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52, "cost": 0.00123,
                 "completion_tokens_details": {"reasoning_tokens": 9}}  # fmt: skip
        up = await upstream({"m/a": {"content": TEXT, "usage": usage}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        u = completion.usage
        assert (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.total_tokens) == (12, 40, 9, 52)
        assert u.cost == pytest.approx(0.00123)

    async def test_default_usage_has_a_cost_from_the_model_pricing(self, upstream: Factory) -> None:
        pricing = {"prompt": "0.000001", "completion": "0.000002"}
        up = await upstream({"m/a": {"content": "x" * 40, "pricing": pricing}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        u = completion.usage
        assert u.completion_tokens == 10
        assert u.cost == pytest.approx(u.prompt_tokens * 1e-6 + 10 * 2e-6)

    async def test_usage_arrives_in_a_chunk_with_empty_choices(self, upstream: Factory) -> None:
        # The scripted upstream, like OpenRouter, sends usage with "choices": [].
        up = await upstream({"m/a": {"content": "Hi.", "usage": {"cost": 0.5}}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        report = next(e for e in events if isinstance(e, UsageReport))
        assert report.usage.cost == 0.5
        assert events[-1] == Finish("stop")

    async def test_complete_reports_timing_and_text(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "reasoning": "Hmm.", "ttft_ms": 5000}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert (completion.text, completion.reasoning, completion.finish_reason) == (TEXT, "Hmm.", "stop")
        assert completion.ttft_ms is not None and completion.ttft_ms >= 40
        assert completion.duration_ms >= completion.ttft_ms

    async def test_calls_one_after_another_reuse_one_connection(self, upstream: Factory) -> None:
        # The body's end comes after [DONE]; a response closed before it would close its
        # connection, and every member of every run would pay a TCP connect.
        up = await upstream({"m/a": {"content": TEXT, "chunk_chars": 9}})
        async with client_for(up) as client:
            texts = []
            for _ in range(3):
                texts.append(content_of(await collect(client, "m/a")))
                await asyncio.sleep(0.02)  # the body's end is read after the call's Finish
            texts.append((await client.complete(ModelSpec("m/a"), QUESTION)).text)
        assert texts == [TEXT] * 4
        assert up.connections == 1

    async def test_a_stream_cut_at_the_output_cap_does_not_leave_its_connection_in_the_pool(
        self, upstream: Factory
    ) -> None:
        up = await upstream({"m/a": {"content": TEXT * 20, "chunk_chars": 9, "tokens_per_s": 2000}})
        capped = dataclasses.replace(FAST, max_output_chars=50)
        async with client_for(up, limits=capped) as client:
            first = content_of(await collect(client, "m/a"))
            second = content_of(await collect(client, "m/a"))
        assert len(first) < len(TEXT * 20) and second == first
        assert up.connections == 2  # the unread rest of the first answer went with its connection

    @pytest.mark.parametrize("option", ["sse_crlf", "sse_multiline", "sse_no_space"])
    async def test_unusual_sse_framing_reads_the_same(self, upstream: Factory, option: str) -> None:
        up = await upstream(
            {"m/a": {"content": TEXT, "reasoning": "r", option: True, "keepalive_ms": 500, "ttft_ms": 2000}}
        )
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert (completion.text, completion.reasoning, completion.error) == (TEXT, "r", None)

    async def test_a_server_that_ignores_stream_true_still_works(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "reasoning": "r", "ignore_stream": True}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert (completion.text, completion.reasoning, completion.finish_reason) == (TEXT, "r", "stop")
        assert completion.usage.completion_tokens > 0


class TestRequestBody:
    async def test_it_sends_the_contracted_body_and_headers(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "ok"}})
        spec = ModelSpec("m/a", temperature=0.2, max_tokens=300, reasoning_effort="low", system_prompt="Be brief.")
        async with client_for(up, extra_headers={"X-Title": "Fusion"}) as client:
            async with aclosing(client.stream(spec, QUESTION, response_format={"type": "json_object"})) as s:
                [e async for e in s]
        (request,) = up.requests
        assert request["messages"] == [{"role": "system", "content": "Be brief."}, *QUESTION]
        params = request["params"]
        assert params["stream"] is True and params["stream_options"] == {"include_usage": True}
        assert params["usage"] == {"include": True}
        assert (params["temperature"], params["max_tokens"]) == (0.2, 300)
        assert params["reasoning"] == {"effort": "low"}
        assert params["response_format"] == {"type": "json_object"}
        assert request["headers"]["authorization"] == "Bearer [redacted]"
        assert request["headers"]["x-title"] == "Fusion"

    async def test_no_authorization_header_without_a_key(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "ok"}})
        registry = ProviderRegistry({"local": Provider("local", up.base_url)}, default="local")
        async with ChatClient(registry, limits=FAST) as client:
            completion = await client.complete(ModelSpec("m/a", reasoning_effort="high"), QUESTION)
        assert completion.text == "ok"
        (request,) = up.requests
        assert "authorization" not in request["headers"]
        assert "usage" not in request["params"]  # OpenRouter-only parameters stay off other servers
        assert request["params"]["reasoning_effort"] == "high"

    async def test_response_format_is_dropped_for_providers_without_it(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "ok"}})
        async with client_for(up, supports_response_format=False) as client:
            await client.complete(ModelSpec("m/a"), QUESTION, response_format={"type": "json_object"})
        assert "response_format" not in up.requests[0]["params"]


class TestBrokenStreams:
    async def test_a_malformed_chunk_is_skipped_and_counted(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "malformed_chunk", "after_chars": 50}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert content_of(events) == TEXT
        assert events[-1] == Finish("stop", malformed_chunks=1)

    async def test_complete_reports_malformed_chunks(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "malformed_chunk"}]}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert (completion.text, completion.malformed_chunks, completion.error) == (TEXT, 1, None)

    async def test_error_mid_stream_keeps_the_partial_text(self, upstream: Factory) -> None:
        fault = {"type": "error_mid_stream", "after_chars": 60, "code": 502, "message": "Upstream overloaded"}
        up = await upstream({"m/a": {"content": TEXT, "faults": [fault]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert error.partial_text == TEXT[:60] == content_of(events)
        assert (error.error.kind, error.error.status_code) == ("upstream_error", 502)
        assert "Upstream overloaded" in error.error.message
        assert len(up.requests) == 1  # content had reached the caller: no retry
        assert up.disconnects == []

    async def test_error_chunk_before_any_content_is_retried(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "error_mid_stream", "after_chars": 0}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert content_of(events) == TEXT and events[-1] == Finish("stop")
        assert len(up.requests) == 2

    async def test_eof_without_done_or_finish_reason_is_incomplete(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "eof", "after_chars": 80}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert error.error.kind == "incomplete"
        assert error.partial_text == TEXT[:80]

    async def test_a_dropped_connection_mid_stream_is_incomplete(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "eof", "after_chars": 80, "abrupt": True}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert (error.error.kind, error.partial_text) == ("incomplete", TEXT[:80])

    async def test_finishing_without_content_is_empty(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "empty"}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert the_error(events).error.kind == "empty"


class TestTimeouts:
    async def test_keep_alive_comments_alone_hit_the_first_token_timeout(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"keepalive_ms": 2000, "faults": [{"type": "keepalive_only"}]}})
        limits = Limits(first_token=0.3, idle=5, total=5, max_retries=0)
        started = time.monotonic()
        async with client_for(up, limits=limits) as client:
            events = await collect(client, "m/a")
        error = the_error(events).error
        assert error.kind == "timeout" and "first token" in error.message
        assert 0.25 < time.monotonic() - started < 1.5

    async def test_slow_first_token_times_out(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "ttft_ms": 100_000}})
        async with client_for(up, limits=Limits(first_token=0.2, max_retries=0)) as client:
            events = await collect(client, "m/a")
        assert the_error(events).error.kind == "timeout"

    async def test_idle_timer_is_not_reset_by_keep_alive_comments(self, upstream: Factory) -> None:
        # Comments every 20 ms after the answer stalls: the 0.3 s idle limit must still fire.
        script = {"content": TEXT, "keepalive_ms": 2000, "faults": [{"type": "hang", "after_chars": 30}]}
        up = await upstream({"m/a": script})
        limits = Limits(first_token=5, idle=0.3, total=5)
        started = time.monotonic()
        async with client_for(up, limits=limits) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert error.error.kind == "timeout" and "No new output for 0.3 s" in error.error.message
        assert error.partial_text == TEXT[:30]
        assert 0.25 < time.monotonic() - started < 1.5

    async def test_a_hanging_stream_hits_the_idle_timeout(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "hang", "after_chars": 10}]}})
        async with client_for(up, limits=Limits(idle=0.2, total=5)) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert (error.error.kind, error.partial_text) == ("timeout", TEXT[:10])
        assert await up.wait_for_disconnect("m/a")  # and the connection was closed

    async def test_the_total_deadline_ends_a_stream_that_keeps_trickling(self, upstream: Factory) -> None:
        # One 4-char chunk every 20 ms: never idle for long, but 180 chars take ~0.9 s.
        up = await upstream({"m/a": {"content": TEXT, "chunk_chars": 4, "tokens_per_s": 0.5}})
        started = time.monotonic()
        async with client_for(up, limits=Limits(first_token=1, idle=0.5, total=0.4)) as client:
            events = await collect(client, "m/a")
        error = the_error(events)
        assert error.error.kind == "timeout" and "total limit" in error.error.message
        assert 0 < len(error.partial_text) < len(TEXT)
        assert time.monotonic() - started < 0.8


class TestRetries:
    async def test_429_waits_for_retry_after_then_succeeds(self, upstream: Factory) -> None:
        up = await upstream(
            {"m/a": {"content": "ok", "faults": [{"type": "http", "status": 429, "retry_after": 0.2}]}}, 1.0
        )
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert content_of(events) == "ok" and events[-1] == Finish("stop")
        first, second = up.requests
        assert second["time"] - first["time"] >= 0.18  # Retry-After, not the 10 ms back-off

    async def test_retry_after_beyond_the_cap_is_reported_not_slept(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"faults": [{"type": "http", "status": 429, "retry_after": 60}]}}, 1.0)
        started = time.monotonic()
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        error = the_error(events).error
        assert (error.kind, error.status_code, error.retry_after) == ("rate_limited", 429, 60)
        assert time.monotonic() - started < 0.5 and len(up.requests) == 1

    async def test_503_is_retried_with_backoff(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "ok", "faults": [{"type": "http", "status": 503, "times": 2}]}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert (completion.text, completion.error) == ("ok", None)
        assert len(up.requests) == 3

    async def test_retries_stop_at_max_retries(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"faults": [{"type": "http", "status": 502, "times": -1}]}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/a"), QUESTION)
        assert completion.error is not None and completion.error.kind == "upstream_error"
        assert len(up.requests) == 1 + FAST.max_retries

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (400, "bad_request"),
            (401, "invalid_key"),
            (402, "insufficient_credits"),
            (403, "moderation"),
            (404, "model_not_found"),
        ],
    )
    async def test_client_errors_are_mapped_and_never_retried(self, upstream: Factory, status: int, kind: str) -> None:
        up = await upstream({"m/a": {"faults": [{"type": "http", "status": status, "times": -1}]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        error = the_error(events).error
        assert (error.kind, error.status_code) == (kind, status)
        assert error.message.startswith(ERROR_MESSAGES[kind])
        assert len(up.requests) == 1

    async def test_unknown_model_id_is_model_not_found(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": "ok"}})
        async with client_for(up) as client:
            events = await collect(client, "m/typo")
        error = the_error(events).error
        assert error.kind == "model_not_found" and "m/typo is not a valid model ID" in error.message

    async def test_connection_refused_is_a_network_error(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        registry = ProviderRegistry({"openrouter": Provider("openrouter", f"http://127.0.0.1:{port}/v1", api_key=KEY)})
        async with ChatClient(registry, limits=FAST) as client:
            events = await collect(client, "m/a")
        assert the_error(events).error.kind == "network"

    def test_retry_after_accepts_seconds_and_http_dates(self) -> None:
        assert parse_retry_after("3") == 3.0
        assert parse_retry_after("0.5") == 0.5
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
        assert parse_retry_after("soon") is None and parse_retry_after(None) is None


class TestSecrets:
    async def test_the_key_never_appears_in_error_messages(self, upstream: Factory) -> None:
        fault = {"type": "http", "status": 401, "message": "Invalid key {api_key} (Authorization: Bearer {api_key})"}
        up = await upstream({"m/a": {"faults": [fault]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
            assert KEY not in repr(client)
        error = the_error(events).error
        assert error.kind == "invalid_key"
        assert KEY not in error.message and KEY not in repr(error) and KEY not in repr(events)
        assert "[redacted]" in error.message

    async def test_the_key_is_scrubbed_from_mid_stream_errors_too(self, upstream: Factory) -> None:
        fault = {"type": "error_mid_stream", "after_chars": 5, "message": f"bad token {KEY}"}
        up = await upstream({"m/a": {"content": TEXT, "faults": [fault]}})
        async with client_for(up) as client:
            events = await collect(client, "m/a")
        assert KEY not in the_error(events).error.message

    def test_provider_repr_hides_the_key(self) -> None:
        assert KEY not in repr(Provider("openrouter", "http://x/v1", api_key=KEY))


class TestCancellation:
    async def test_closing_the_stream_closes_the_connection(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT * 20, "tokens_per_s": 1}})  # ~1 chunk / 40 ms
        async with client_for(up) as client:
            stream = client.stream(ModelSpec("m/a"), QUESTION)
            async for event in stream:
                if isinstance(event, ContentDelta):
                    break
            await stream.aclose()
            assert await up.wait_for_disconnect("m/a", timeout=1.0)

    async def test_cancelling_the_task_closes_the_connection(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"content": TEXT, "faults": [{"type": "hang", "after_chars": 20}]}})
        async with client_for(up, limits=Limits(idle=30, total=60)) as client:
            task = asyncio.create_task(client.complete(ModelSpec("m/a"), QUESTION))
            while not up.requests:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await up.wait_for_disconnect("m/a", timeout=1.0)

    async def test_cancelling_during_the_first_token_wait_closes_the_connection(self, upstream: Factory) -> None:
        up = await upstream({"m/a": {"faults": [{"type": "keepalive_only"}], "keepalive_ms": 1000}})
        async with client_for(up, limits=Limits(first_token=30, total=60)) as client:
            task = asyncio.create_task(collect(client, "m/a"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await up.wait_for_disconnect("m/a", timeout=1.0)


class TestProviderRegistry:
    def registry(self, **kw: Any) -> ProviderRegistry:
        providers = {
            "openrouter": Provider("openrouter", "https://openrouter.ai/api/v1", api_key=KEY),
            "ollama": Provider("ollama", "http://127.0.0.1:11434/v1"),
        }
        return ProviderRegistry(providers, **kw)

    def test_a_provider_prefix_selects_that_provider(self) -> None:
        provider, model = self.registry().resolve("ollama:llama3.1:8b")
        assert (provider.name, model) == ("ollama", "llama3.1:8b")

    def test_plain_ids_go_whole_to_the_default(self) -> None:
        provider, model = self.registry().resolve("openai/gpt-4o:free")
        assert (provider.name, model) == ("openrouter", "openai/gpt-4o:free")

    def test_an_unconfigured_prefix_goes_whole_to_the_default(self) -> None:
        provider, model = self.registry().resolve("vllm:qwen")
        assert (provider.name, model) == ("openrouter", "vllm:qwen")

    def test_a_missing_default_raises_unknown_provider(self) -> None:
        with pytest.raises(UnknownProvider):
            self.registry(default="nowhere").resolve("openai/gpt-4o")
        assert self.registry(default="nowhere").resolve("ollama:x")[1] == "x"

    def test_a_prefix_without_a_model_is_rejected(self) -> None:
        with pytest.raises(UnknownProvider):
            self.registry().resolve("ollama:")

    def test_provider_names_with_separators_are_rejected(self) -> None:
        with pytest.raises(ValueError):
            ProviderRegistry({"a/b": Provider("a/b", "http://x")})

    def test_registry_repr_hides_keys(self) -> None:
        assert KEY not in repr(self.registry())

    async def test_the_client_reports_an_unresolvable_model_as_an_event(self) -> None:
        async with ChatClient(self.registry(default="nowhere"), limits=FAST) as client:
            events = await collect(client, "openai/gpt-4o")
        assert the_error(events).error.kind == "model_not_found"


class TestReasoningFields:
    def test_reasoning_details_alone_are_read_as_reasoning(self) -> None:
        from chat.fusion.client import _reasoning_text

        details = [
            {"type": "reasoning.text", "text": "step one, "},
            {"type": "reasoning.encrypted", "data": "opaque"},
            {"type": "reasoning.summary", "summary": "summary."},
        ]
        assert _reasoning_text({"reasoning_details": details}) == "step one, summary."
        assert (
            _reasoning_text({"reasoning": "same", "reasoning_details": [{"type": "reasoning.text", "text": "same"}]})
            == "same"
        )
        assert _reasoning_text({"reasoning_content": "vllm style"}) == "vllm style"
