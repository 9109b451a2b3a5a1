"""Output caps, bounded prompts, bounded Markdown rendering, and error text scrubbed of every key.

The engine parts run against the scripted upstream over real HTTP on 127.0.0.1; the run parts
go through chat.runs with the database, like a websocket-started run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat import keys
from chat.engine import build_limits, known_secrets
from chat.fusion import prompts
from chat.fusion.analysis import LabelledAnswer
from chat.fusion.client import ChatClient
from chat.fusion.pipeline import FusionRun
from chat.fusion.providers import ProviderRegistry
from chat.testing.scripted import ScriptedUpstream, pathological_markdown, repeat_to
from chat.fusion.types import (
    AnalysisDegraded,
    ContentDelta,
    Finish,
    FusionRequest,
    Limits,
    ModelSpec,
    PanelCompleted,
    PanelDelta,
    PanelNote,
    Provider,
    ReasoningDelta,
    RunCompleted,
    StreamError,
)
from chat.models import Conversation, MemberResponse, Run
from chat.render import IncrementalRenderer, render_markdown
from chat.runs import manager, run_start

CAP = 10_000
QUESTION = [{"role": "user", "content": "Write as much as you can."}]
# 5 MB at 1024 tokens/s: the whole answer would take about 12 s at time_scale 0.01.
HUGE = {"content_chars": 5_000_000, "chunk_chars": 4096, "tokens_per_s": 1024}


@pytest.fixture
def upstream(scripted):
    """Start scripted upstreams on demand: ``await upstream(scripts)``; all stopped after the test."""
    return scripted


def client_for(up: ScriptedUpstream, *, cap: int | None = CAP, key: str = "test-key", **kwargs: Any) -> ChatClient:
    registry = ProviderRegistry({"openrouter": Provider("openrouter", up.base_url, api_key=key)})
    limits = Limits(connect=1.0, first_token=2.0, idle=2.0, total=20.0, max_output_chars=cap)
    return ChatClient(registry, limits=limits, **kwargs)


async def stream_events(client: ChatClient, model: str) -> list[Any]:
    async with aclosing(client.stream(ModelSpec(model), QUESTION)) as events:
        return [event async for event in events]


def text_of(events: list[Any], kind: type = ContentDelta) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


class TestOutputCap:
    async def test_output_past_the_cap_is_cut_at_exactly_the_cap_and_the_stream_is_closed(self, upstream) -> None:
        up = await upstream({"m/huge": {**HUGE, "content": "Lorem ipsum dolor sit amet. "}})
        started = time.monotonic()
        async with client_for(up) as client:
            events = await stream_events(client, "m/huge")
        assert text_of(events) == repeat_to("Lorem ipsum dolor sit amet. ", 5_000_000)[:CAP]
        assert isinstance(events[-1], Finish)
        assert (events[-1].reason, events[-1].truncated_at) == ("truncated", CAP)
        # The HTTP stream was closed at once: the provider saw the hang-up long before the end.
        assert await up.wait_for_disconnect("m/huge")
        assert time.monotonic() - started < 3

    async def test_output_exactly_at_the_cap_is_not_truncated(self, upstream) -> None:
        up = await upstream({"m/exact": {"content_chars": CAP, "chunk_chars": 1000}})
        async with client_for(up) as client:
            events = await stream_events(client, "m/exact")
        assert len(text_of(events)) == CAP
        assert isinstance(events[-1], Finish) and (events[-1].reason, events[-1].truncated_at) == ("stop", None)

    async def test_reasoning_past_the_cap_is_dropped_and_the_answer_still_arrives(self, upstream) -> None:
        up = await upstream({"m/thinker": {"reasoning": "hmm " * 5000, "content": "The answer.", "chunk_chars": 500}})
        async with client_for(up, cap=1000) as client:
            events = await stream_events(client, "m/thinker")
        assert text_of(events, ReasoningDelta) == ("hmm " * 5000)[:1000]
        assert text_of(events) == "The answer." and isinstance(events[-1], Finish) and events[-1].reason == "stop"

    async def test_a_json_body_answer_is_capped_too(self, upstream) -> None:
        up = await upstream({"m/json": {"content_chars": 50_000, "ignore_stream": True}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/json"), QUESTION)
        assert len(completion.text) == CAP and completion.truncated_at == CAP

    def test_the_cap_comes_from_the_settings(self, settings) -> None:
        settings.FUSION_MAX_OUTPUT_CHARS = 1234
        assert build_limits().max_output_chars == 1234


def fusion_request(**kwargs: Any) -> FusionRequest:
    defaults: dict[str, Any] = dict(
        messages=[{"role": "user", "content": "Tell me everything."}],
        panel=[ModelSpec("m/huge"), ModelSpec("m/normal")],
        analyst=ModelSpec("m/analyst"),
        writer=ModelSpec("m/writer"),
    )
    defaults.update(kwargs)
    return FusionRequest(**defaults)


async def run_events(client: ChatClient, request: FusionRequest) -> list[Any]:
    return [event async for event in FusionRun(request, client).events()]


class TestTruncatedCalls:
    async def test_a_truncated_member_completes_with_its_text_up_to_the_cap_and_a_note(self, upstream) -> None:
        up = await upstream({"m/huge": HUGE, "*": {}})
        async with client_for(up) as client:
            events = await run_events(client, fusion_request())
        done = events[-1]
        assert isinstance(done, RunCompleted) and done.failed_models == []
        (huge,) = [e for e in events if isinstance(e, PanelCompleted) and e.model == "m/huge"]
        assert len(huge.content) == CAP
        assert sum(len(e.delta) for e in events if isinstance(e, PanelDelta) and e.slot == 0) == CAP
        notes = [e.message for e in events if isinstance(e, PanelNote) and e.slot == 0]
        assert notes == ["Output truncated at 10,000 characters."]
        assert "final_truncated_at" not in done.timings

    async def test_a_truncated_fused_answer_is_marked_in_the_run_timings(self, upstream) -> None:
        up = await upstream({"m/writer": HUGE, "*": {}})
        async with client_for(up) as client:
            events = await run_events(client, fusion_request(panel=[ModelSpec("m/normal")]))
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert len(done.answer) == CAP and done.timings["final_truncated_at"] == CAP
        assert await up.wait_for_disconnect("m/writer")

    async def test_a_truncated_analysis_goes_to_the_repair_then_degrades(self, upstream) -> None:
        # An object that never closes: only the cap ends it.
        up = await upstream({"m/analyst": {**HUGE, "content": '{"consensus": ["' + "a long point, " * 50}, "*": {}})
        async with client_for(up) as client:
            events = await run_events(client, fusion_request(panel=[ModelSpec("m/normal")]))
        assert len(up.requests_for("m/analyst")) == 2  # the call and its repair
        (degraded,) = [e for e in events if isinstance(e, AnalysisDegraded)]
        assert "invalid JSON" in degraded.reason
        assert isinstance(events[-1], RunCompleted)


class TestBoundedPrompts:
    def test_each_quoted_answer_is_cut_with_a_visible_marker(self) -> None:
        big = "x" * 100_000
        answers = [LabelledAnswer(label=f"Response {c}", model_id=f"m/{c}", content=big) for c in "ABCDEFGH"]
        analyst = prompts.analyst_messages(system_extra=None, previous_turns=[], answers=answers, question="q")
        writer = prompts.writer_messages(
            system_extra=None,
            previous_turns=[{"role": "assistant", "content": big}],
            question="q",
            answers=[(a.model_id, big) for a in answers],
            analysis=None,
            degraded_reason=None,
        )
        for messages in (analyst, writer):
            size = sum(len(m["content"]) for m in messages)
            assert size < 10 * prompts.MAX_QUOTED_CHARS
            assert messages[-1]["content"].count("[… cut here: the first 32,000 of 100,000 characters are shown]") == 8
        assert len(prompts.repair_messages(analyst, big, "bad")[-2]["content"]) < prompts.MAX_QUOTED_CHARS + 100

    def test_short_answers_are_quoted_whole(self) -> None:
        answers = [LabelledAnswer(label="Response A", model_id="m/a", content="Short answer.")]
        (_, user) = prompts.analyst_messages(system_extra=None, previous_turns=[], answers=answers, question="q")
        assert "Short answer.\n</response>" in user["content"] and "cut here" not in user["content"]

    async def test_the_analyst_and_writer_prompts_over_http_stay_bounded(self, upstream, monkeypatch) -> None:
        monkeypatch.setattr(prompts, "MAX_QUOTED_CHARS", 2000)
        up = await upstream({"m/huge": HUGE, "*": {}})
        async with client_for(up) as client:
            await run_events(client, fusion_request())
        for model in ("m/analyst", "m/writer"):
            sent = up.requests_for(model)[0]["messages"]
            assert sum(len(m["content"]) for m in sent) < 12_000
            assert "cut here: the first 2,000 of 10,000 characters" in sent[-1]["content"]


PATHOLOGICAL = {
    "800-line nested list": pathological_markdown("nested_list", 800),
    "9 MB nested list": repeat_to(pathological_markdown("nested_list", 200), 9_000_000),
    "10 KB of nested brackets": "[" * 10_000,
    "nested quotes": pathological_markdown("nested_quote", 2000),
    "markers on one line": pathological_markdown("nested_markers", 5000),
    "images in many paragraphs": ("![" * 15_000 + "\n\n") * 20,
    "unclosed fences": "```a\n" * 60_000,
    "setext headings": "a\n=\n" * 50_000,
    "126 KB code block": "```python\n" + "x = [1, 2, 3]  # comment\n" * 5000 + "```\n",
}


class TestBoundedRendering:
    @pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
    def test_pathological_markdown_renders_within_two_seconds(self, name: str) -> None:
        text = PATHOLOGICAL[name]
        started = time.monotonic()
        html = render_markdown(text)
        assert time.monotonic() - started < 2.0
        assert html and "<script" not in html

    def test_a_pathological_stream_renders_within_two_seconds_incrementally(self) -> None:
        text = pathological_markdown("nested_list", 800) + "\n\n" + "[" * 10_000 + "\n\n" + "para\n"
        renderer = IncrementalRenderer()
        started = time.monotonic()
        for i in range(0, len(text), 4096):
            renderer.feed(text[i : i + 4096])
        renderer.finish()
        assert time.monotonic() - started < 2.0

    def test_deep_nesting_is_capped_instead_of_failing(self) -> None:
        html = render_markdown(pathological_markdown("nested_list", 800)[:30_000])
        assert not html.startswith("<pre>")  # still a list, just not 800 levels deep
        assert 1 < html.count("<ul>") <= 13

    def test_unmatched_brackets_render_as_they_did(self) -> None:
        assert render_markdown("[" * 30 + "x") == "<p>" + "[" * 30 + "x</p>"
        assert render_markdown("see `f(((((((((((` and [a](https://e.example) " + "(" * 20) == (
            '<p>see <code>f(((((((((((</code> and <a href="https://e.example" rel="noopener noreferrer nofollow">a</a> '
            + "(" * 20
            + "</p>"
        )

    def test_a_long_ordinary_answer_is_still_rendered_as_markdown(self) -> None:
        text = "\n\n".join(f"## Part {i}\n\nSome *text* with a [link](https://e.example/{i})." for i in range(3000))
        html = render_markdown(text)
        assert "<pre>" not in html and html.count("<h2>") == 3000

    def test_text_past_the_overall_limit_is_shown_escaped(self) -> None:
        text = "*a* <b>\n\n" * 60_000  # 540,000 characters
        html = render_markdown(text)
        assert html.startswith("<p><em>a</em> &lt;b&gt;</p>") and html.endswith("</pre>")
        assert "<b>" not in html

    async def test_a_pathological_answer_from_the_upstream_renders_within_the_budget(self, upstream) -> None:
        up = await upstream({"m/bomb": {"pathological": {"kind": "brackets", "depth": 9000}, "chunk_chars": 4096}})
        async with client_for(up) as client:
            completion = await client.complete(ModelSpec("m/bomb"), QUESTION)
        assert completion.text.startswith("[" * 9000)
        started = time.monotonic()
        await asyncio.to_thread(render_markdown, completion.text)
        assert time.monotonic() - started < 2.0


SERVER_KEY = "sk-or-v1-server-key-0123456789abcdef"
SEARCH_KEY = "search-key-abcdef0123456789"
ALICE_KEY = "sk-or-v1-alice-own-key-9876543210"


class TestErrorTextScrubbing:
    async def test_the_client_scrubs_extra_secrets_from_provider_errors(self, upstream) -> None:
        echo = f"Invalid key; the server key {SERVER_KEY} and {SEARCH_KEY} are not yours"
        up = await upstream({"m/leaky": {"faults": [{"type": "http", "status": 401, "message": echo}]}})
        async with client_for(up, extra_secrets=[SERVER_KEY, SEARCH_KEY, ""]) as client:
            events = await stream_events(client, "m/leaky")
        error = events[-1]
        assert isinstance(error, StreamError)
        assert SERVER_KEY not in error.error.message and SEARCH_KEY not in error.error.message
        assert error.error.message.count("[redacted]") == 2

    def test_known_secrets_are_every_key_in_the_settings(self, settings) -> None:
        settings.OPENROUTER_API_KEY = SERVER_KEY
        settings.FUSION_SEARCH_API_KEY = SEARCH_KEY
        settings.FUSION_PROVIDERS = {
            "a": {"base_url": "http://127.0.0.1:1/v1", "api_key": "key-a"},
            "b": {"base_url": "http://127.0.0.1:2/v1", "api_key": ""},
        }
        assert sorted(known_secrets()) == sorted([SERVER_KEY, SEARCH_KEY, "key-a"])

    @pytest.mark.django_db(transaction=True)
    async def test_a_users_run_never_shows_the_server_key_a_provider_echoed(self, alice, settings) -> None:
        echo = f"Key rejected. Did you mean {SERVER_KEY}? Search: {SEARCH_KEY}"
        scripts = {
            "sim/a": {"faults": [{"type": "http", "status": 401, "message": echo}]},
            "sim/analyst": {},
            "sim/writer": {},
        }
        async with ScriptedUpstream(scripts, time_scale=0.01) as up:
            settings.OPENROUTER_BASE_URL = up.base_url
            settings.OPENROUTER_API_KEY = SERVER_KEY
            settings.FUSION_SEARCH_API_KEY = SEARCH_KEY
            settings.FUSION_PROVIDERS = {}
            settings.FUSION_ALLOW_SERVER_KEY = False
            settings.FUSION_CHECKPOINT_INTERVAL_S = 0.05
            await database_sync_to_async(keys.key_set)(user=alice, provider="openrouter", raw=ALICE_KEY)
            conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
            panel = {
                "members": [{"model": "sim/a"}],
                "analyst": {"model": "sim/analyst"},
                "writer": {"model": "sim/writer"},
            }
            frame, _ = await run_start(
                user=alice, conversation_id=conversation.pk, client_run_id=str(uuid.uuid4()), prompt="hi", panel=panel
            )
            active = manager.get(uuid.UUID(frame["run"]))
            await active.done.wait()
        member = await database_sync_to_async(MemberResponse.objects.get)(run_id=frame["run"], slot=0)
        run = await database_sync_to_async(Run.objects.get)(pk=frame["run"])
        shown = member.error_message + run.error_message + str(active.snapshot())
        assert SERVER_KEY not in shown and SEARCH_KEY not in shown and ALICE_KEY not in shown
        assert "[redacted]" in member.error_message
        await manager.shutdown()


class TestTruncationIsStored:
    @pytest.mark.django_db(transaction=True)
    async def test_a_runs_truncated_member_and_answer_keep_their_notes(self, alice, settings) -> None:
        scripts = {"sim/huge": HUGE, "sim/writer": HUGE, "sim/analyst": {}}
        async with ScriptedUpstream(scripts, time_scale=0.01) as up:
            settings.OPENROUTER_BASE_URL = up.base_url
            settings.OPENROUTER_API_KEY = SERVER_KEY
            settings.FUSION_ALLOW_SERVER_KEY = True
            settings.FUSION_MAX_OUTPUT_CHARS = 5000
            settings.FUSION_CHECKPOINT_INTERVAL_S = 0.05
            conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
            panel = {
                "members": [{"model": "sim/huge"}],
                "analyst": {"model": "sim/analyst"},
                "writer": {"model": "sim/writer"},
            }
            frame, _ = await run_start(
                user=alice,
                conversation_id=conversation.pk,
                client_run_id=str(uuid.uuid4()),
                prompt="Everything, please.",
                panel=panel,
            )
            await manager.get(uuid.UUID(frame["run"])).done.wait()
        member = await database_sync_to_async(MemberResponse.objects.get)(run_id=frame["run"], slot=0)
        run = await database_sync_to_async(Run.objects.get)(pk=frame["run"])
        assert member.status == "complete" and len(member.content) == 5000
        assert member.notes == ["Output truncated at 5,000 characters."]
        assert run.status == "complete" and len(run.answer) == 5000
        assert run.timings["final_truncated_at"] == 5000
        await manager.shutdown()


class TestHugeCodeBlocks:
    def test_a_code_block_over_the_block_limit_keeps_its_code_box_without_the_fences(self):
        from chat.render import MAX_BLOCK_LINES, render_markdown

        code = "".join(f"def f{i}(a):\n    return a < {i}  # <script>\n" for i in range(MAX_BLOCK_LINES))
        html = render_markdown(f"Intro.\n\n```python\n{code}```\n\nAfter.\n")
        assert html.startswith("<p>Intro.</p>") and html.endswith("<p>After.</p>")
        assert '<div class="highlight"><pre><code>def f0(a):' in html
        assert "```" not in html and "<script>" not in html and "&lt;script&gt;" in html
