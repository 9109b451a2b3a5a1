"""The fusion pipeline (chat/fusion/pipeline.py) against a fake client: no network, no database.

The fake client has the ChatClient interface (``stream`` / ``complete``) and plays one scripted
``Reply`` per call. End-to-end tests over real HTTP against the scripted upstream are at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import pytest

from chat.fusion.client import ChatClient
from chat.fusion.pipeline import FusionRun, run_fusion
from chat.fusion.prompts import ANALYSIS_MARKER
from chat.fusion.providers import ProviderRegistry
from chat.testing.scripted import ScriptedUpstream
from chat.fusion.types import (
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    Completion,
    ContentDelta,
    FinalDelta,
    FinalStarted,
    Finish,
    FusionRequest,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelReasoningDelta,
    Provider,
    ProviderError,
    ReasoningDelta,
    RunCompleted,
    RunFailed,
    StreamError,
    Usage,
    UsageReport,
)

# --------------------------------------------------------------------------- fake client


@dataclass
class Reply:
    """What the fake client streams for one call."""

    content: str = ""
    reasoning: str = ""
    delay: float = 0.0  # before the first event
    gap: float = 0.0  # between content chunks
    chunk: int = 8  # characters per ContentDelta
    error: ProviderError | None = None  # StreamError once `error_after` characters were sent
    error_after: int = 0
    finish: str = "stop"
    hang: bool = False  # after the content, wait until cancelled
    cost: float = 0.001


@dataclass
class Call:
    model: str
    spec: ModelSpec
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None
    closed_early: bool = False  # the stream was closed before it ended by itself


ReplySource = Reply | Callable[[list[dict[str, Any]]], Reply] | list[Any]


class FakeRegistry:
    def __init__(self, supports_response_format: bool) -> None:
        self.provider = Provider(name="fake", base_url="http://fake", supports_response_format=supports_response_format)

    def resolve(self, model: str) -> tuple[Provider, str]:
        return self.provider, model


class FakeClient:
    def __init__(self, replies: dict[str, ReplySource], *, supports_response_format: bool = True) -> None:
        self.replies = {model: list(r) if isinstance(r, list) else r for model, r in replies.items()}
        self.registry = FakeRegistry(supports_response_format)
        self.calls: list[Call] = []
        self.open_streams = 0

    def calls_to(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    def _next_reply(self, model: str, messages: list[dict[str, Any]]) -> Reply:
        source = self.replies[model]
        if isinstance(source, list):  # one per call; the last one repeats
            source = source.pop(0) if len(source) > 1 else source[0]
        return source(messages) if callable(source) else source

    async def stream(
        self,
        spec: ModelSpec,
        messages: list[dict[str, Any]],
        *,
        response_format: dict | None = None,
        tools: list[dict] | None = None,
        tool_choice: Any = None,
        limits: Any = None,
    ) -> AsyncIterator[Any]:
        call = Call(spec.model, spec, messages, response_format)
        self.calls.append(call)
        reply = self._next_reply(spec.model, messages)
        self.open_streams += 1
        ended = False
        try:
            await asyncio.sleep(reply.delay)
            if reply.reasoning:
                yield ReasoningDelta(reply.reasoning)
            sent = 0
            text = reply.content
            for start in range(0, len(text), reply.chunk):
                if reply.error and sent >= reply.error_after:
                    break
                piece = text[start : start + reply.chunk]
                yield ContentDelta(piece)
                sent += len(piece)
                await asyncio.sleep(reply.gap)
            if reply.error:
                ended = True
                yield StreamError(reply.error, partial_text=text[:sent])
                return
            if reply.hang:
                await asyncio.Event().wait()
            yield UsageReport(
                Usage(prompt_tokens=10, completion_tokens=len(text), total_tokens=10 + len(text), cost=reply.cost)
            )
            ended = True
            yield Finish(reply.finish)
        finally:
            self.open_streams -= 1
            call.closed_early = not ended

    async def complete(self, spec: ModelSpec, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        result = Completion()
        text: list[str] = []
        async for event in self.stream(spec, messages, **kwargs):
            if isinstance(event, ContentDelta):
                text.append(event.text)
            elif isinstance(event, UsageReport):
                result.usage = event.usage
            elif isinstance(event, Finish):
                result.finish_reason = event.reason
            elif isinstance(event, StreamError):
                result.error = event.error
        result.text = "".join(text)
        return result


# --------------------------------------------------------------------------- helpers

BLOCK_RE = re.compile(r'<response label="(Response [A-Z])">\n(.*?)\n</response>', re.DOTALL)


def labelled_blocks(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, text) pairs from the analyst's input, in the order the analyst saw them."""
    for message in messages:
        if message["role"] == "user" and "<response label=" in message["content"]:
            return BLOCK_RE.findall(message["content"])
    return []


def analysis_reply(messages: list[dict[str, Any]]) -> Reply:
    """A valid analysis whose unique insights quote each answer under its label."""
    blocks = labelled_blocks(messages)
    analysis = {
        "consensus": ["They agree."],
        "contradictions": [
            {"topic": "Everything", "stances": [{"model": label, "stance": text} for label, text in blocks]}
        ],
        "partial_coverage": [{"models": [blocks[0][0]], "point": "Only the first."}],
        "unique_insights": [{"model": label, "insight": text} for label, text in blocks],
        "blind_spots": ["Nobody mentioned cost."],
    }
    return Reply(content=json.dumps(analysis))


INVALID = Reply(content="I think Response A is best.")
ANSWERS = {
    "m/alpha": "Alpha says water boils at 100 C.",
    "m/beta": "Beta says it depends on pressure.",
    "m/gamma": "Gamma cites [NIST](https://nist.gov).",
}


def make_request(panel: list[str | ModelSpec] | None = None, **kwargs: Any) -> FusionRequest:
    defaults: dict[str, Any] = dict(
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Earlier question?"},
            {"role": "assistant", "content": "Earlier answer."},
            {"role": "user", "content": "At what temperature does water boil?"},
        ],
        panel=[
            m if isinstance(m, ModelSpec) else ModelSpec(model=m) for m in (list(ANSWERS) if panel is None else panel)
        ],
        analyst=ModelSpec(model="m/analyst", temperature=0.7),
        writer=ModelSpec(model="m/writer"),
    )
    defaults.update(kwargs)
    return FusionRequest(**defaults)


def make_client(**overrides: ReplySource) -> FakeClient:
    replies: dict[str, ReplySource] = {model: Reply(content=text) for model, text in ANSWERS.items()}
    replies["m/analyst"] = analysis_reply
    replies["m/writer"] = Reply(content="Water boils at 100 °C at sea level; less at altitude.")
    replies.update(overrides)
    return FakeClient(replies)


async def collect(run: FusionRun) -> list[Any]:
    return [event async for event in run.events()]


def of_type(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def assert_no_tasks_left() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- happy path


class TestHappyPath:
    async def test_it_streams_panel_analysis_and_final_answer(self) -> None:
        client = make_client()
        events = await collect(FusionRun(make_request(), client, rng=random.Random(1)))

        types = [type(e).__name__ for e in events]
        assert types[:3] == ["PanelAdded"] * 3
        assert types.index("AnalysisStarted") > max(i for i, t in enumerate(types) if t == "PanelCompleted")
        assert types.index("FinalStarted") > types.index("AnalysisCompleted")
        assert types[-1] == "RunCompleted"

        for slot, (model, text) in enumerate(ANSWERS.items()):
            deltas = "".join(e.delta for e in events if isinstance(e, PanelDelta) and e.slot == slot)
            assert deltas == text
            (completed,) = [e for e in of_type(events, PanelCompleted) if e.slot == slot]
            assert completed.content == text and completed.model == model

        done = events[-1]
        assert done.answer == "Water boils at 100 °C at sea level; less at altitude."
        assert done.answer == "".join(e.delta for e in of_type(events, FinalDelta))
        assert done.failed_models == [] and done.analysis_error is None
        assert [r.role for r in done.records] == ["panel"] * 3 + ["analyst", "writer"]
        assert all(r.status == "complete" and r.duration_ms is not None for r in done.records)
        assert [r.slot for r in done.records[:3]] == [0, 1, 2]
        assert done.usage.cost == pytest.approx(0.005)
        assert done.usage.prompt_tokens == 50
        assert set(done.timings) == {"panel", "analysis", "synthesis", "total", "final_ttft"}

    async def test_labels_map_back_to_the_right_models(self) -> None:
        client = make_client()
        events = await collect(FusionRun(make_request(), client, rng=random.Random(7)))
        (completed,) = of_type(events, AnalysisCompleted)

        # The fake analyst quotes each answer under the label it saw it under.
        insights = {i["model"]: i["insight"] for i in completed.analysis["unique_insights"]}
        assert insights == ANSWERS
        assert sorted(completed.label_map) == ["Response A", "Response B", "Response C"]
        for label, text in labelled_blocks(client.calls_to("m/analyst")[0].messages):
            assert ANSWERS[completed.label_map[label]] == text
        assert events[-1].analysis == completed.analysis

    async def test_answer_order_is_shuffled_per_seed(self) -> None:
        orders = set()
        for seed in range(8):
            client = make_client()
            await collect(FusionRun(make_request(), client, rng=random.Random(seed)))
            blocks = labelled_blocks(client.calls_to("m/analyst")[0].messages)
            assert [label for label, _ in blocks] == ["Response A", "Response B", "Response C"]
            orders.add(tuple(text for _, text in blocks))
        assert len(orders) > 1

    async def test_analyst_input_follows_the_contract(self) -> None:
        client = make_client(**{"m/alpha": Reply(content=ANSWERS["m/alpha"], reasoning="SECRET THOUGHTS")})
        await collect(FusionRun(make_request(), client))
        (call,) = client.calls_to("m/analyst")

        assert call.spec.temperature == 0
        assert call.response_format == {"type": "json_object"}
        system, *turns, user = call.messages
        assert system["role"] == "system" and ANALYSIS_MARKER in system["content"]
        assert turns == [
            {"role": "user", "content": "Earlier question?"},
            {"role": "assistant", "content": "Earlier answer."},
        ]
        assert user["content"].rstrip().endswith(f"Return the {ANALYSIS_MARKER} object comparing these answers.")
        assert "At what temperature does water boil?" in user["content"].split("</response>")[-1]
        assert "SECRET THOUGHTS" not in json.dumps(call.messages)

    async def test_no_response_format_when_the_provider_does_not_support_it(self) -> None:
        client = make_client()
        client.registry = FakeRegistry(supports_response_format=False)
        await collect(FusionRun(make_request(), client))
        assert client.calls_to("m/analyst")[0].response_format is None

    async def test_members_get_their_own_spec_and_thread(self) -> None:
        own_thread = [{"role": "user", "content": "Beta-only follow-up"}]
        request = make_request(member_messages={1: own_thread})
        request.panel[0].system_prompt = "Be terse."
        client = make_client()
        await collect(FusionRun(request, client))

        alpha, beta = client.calls_to("m/alpha")[0], client.calls_to("m/beta")[0]
        assert alpha.spec.system_prompt == "Be terse."  # the client puts it first
        assert alpha.messages == request.messages
        assert beta.messages == own_thread

    async def test_writer_gets_question_answers_and_analysis(self) -> None:
        client = make_client()
        await collect(FusionRun(make_request(), client))
        (call,) = client.calls_to("m/writer")
        system, *turns, user = call.messages
        assert "Do not mention" in system["content"] and "Markdown links" in system["content"]
        assert "Answer briefly." in system["content"]  # the conversation's own instructions
        assert len(turns) == 2
        for model, text in ANSWERS.items():
            assert f'<answer model="{model}">\n{text}\n</answer>' in user["content"]
        assert "<analysis>" in user["content"] and "Nobody mentioned cost." in user["content"]

    async def test_repeated_models_get_distinct_ids(self) -> None:
        client = make_client()
        request = make_request(panel=["m/alpha", "m/alpha"])
        events = await collect(FusionRun(request, client))
        (completed,) = of_type(events, AnalysisCompleted)
        assert sorted(completed.label_map.values()) == ["m/alpha", "m/alpha#2"]
        assert {i["model"] for i in completed.analysis["unique_insights"]} == {"m/alpha", "m/alpha#2"}

    async def test_a_single_answer_is_still_analysed(self) -> None:
        client = make_client()
        events = await collect(FusionRun(make_request(panel=["m/beta"]), client))
        (completed,) = of_type(events, AnalysisCompleted)
        assert completed.label_map == {"Response A": "m/beta"}
        assert isinstance(events[-1], RunCompleted)

    async def test_run_fusion_yields_the_same_events(self) -> None:
        events = [e async for e in run_fusion(make_request(), make_client(), rng=random.Random(1))]
        assert isinstance(events[-1], RunCompleted)

    async def test_events_can_be_iterated_only_once(self) -> None:
        run = FusionRun(make_request(), make_client())
        await collect(run)
        with pytest.raises(RuntimeError):
            await collect(run)


class TestStreaming:
    async def test_first_delta_arrives_before_slower_members_finish(self) -> None:
        client = make_client(
            **{
                "m/beta": Reply(content=ANSWERS["m/beta"], delay=0.5),
                "m/gamma": Reply(content=ANSWERS["m/gamma"], delay=0.5),
            }
        )
        started = time.monotonic()
        first_delta_at = None
        order = []
        async for event in FusionRun(make_request(), client).events():
            if isinstance(event, PanelDelta) and first_delta_at is None:
                first_delta_at = time.monotonic() - started
            if isinstance(event, (PanelDelta, PanelCompleted)):
                order.append((type(event).__name__, event.slot))
        assert first_delta_at is not None and first_delta_at < 0.3
        assert order[0] == ("PanelDelta", 0)
        assert order.index(("PanelCompleted", 0)) < order.index(("PanelDelta", 1))

    async def test_a_sink_takes_deltas_at_once_and_every_event_is_seen_once_in_order(self) -> None:
        client = make_client(**{m: Reply(content=text, chunk=3, gap=0.001) for m, text in ANSWERS.items()})
        run = FusionRun(make_request(), client, rng=random.Random(3))
        emitted: list[Any] = []  # in the order the phases emitted them
        emit = run._ctx.emit
        run._ctx.emit = lambda event: (emitted.append(event), emit(event))[1]
        seen: list[Any] = []
        offered = 0
        taken: list[Any] = []

        def sink(event: Any) -> bool:
            nonlocal offered
            if not isinstance(event, (PanelDelta, FinalDelta)):
                return False
            offered += 1
            if offered % 5 == 0:
                return False  # refuses some, as a consumer busy with an event does
            taken.append(event)
            seen.append(event)
            return True

        run.sink = sink
        async for event in run.events():
            seen.append(event)
            await asyncio.sleep(0)  # a consumer that takes its time: events queue meanwhile
        assert [id(e) for e in seen] == [id(e) for e in emitted]  # each once, in order
        deltas = [e for e in emitted if isinstance(e, (PanelDelta, FinalDelta))]
        assert taken and len(taken) < len(deltas)  # some at once, some queued

    async def test_reasoning_is_streamed_but_not_part_of_the_answer(self) -> None:
        client = make_client(**{"m/alpha": Reply(content="Answer.", reasoning="Let me think.")})
        events = await collect(FusionRun(make_request(), client))
        (reasoning,) = of_type(events, PanelReasoningDelta)
        assert (reasoning.slot, reasoning.delta) == (0, "Let me think.")
        assert [e.content for e in of_type(events, PanelCompleted) if e.slot == 0] == ["Answer."]


# --------------------------------------------------------------------------- panel failures


def http_error(kind: str, status: int) -> Reply:
    return Reply(error=ProviderError(kind=kind, message=f"{kind} from provider", status_code=status))


class TestPanelFailures:
    async def test_a_member_failing_mid_stream_is_reported_and_the_rest_go_on(self) -> None:
        broken = Reply(
            content=ANSWERS["m/beta"], error=ProviderError(kind="upstream_error", message="boom"), error_after=16
        )
        client = make_client(**{"m/beta": broken})
        events = await collect(FusionRun(make_request(), client))

        (failed,) = of_type(events, PanelFailed)
        assert failed.slot == 1 and failed.error.kind == "upstream_error"
        assert failed.partial_content == ANSWERS["m/beta"][:16]
        assert failed.record.status == "failed"
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert done.failed_models == ["m/beta"]
        (completed,) = of_type(events, AnalysisCompleted)
        assert sorted(completed.label_map.values()) == ["m/alpha", "m/gamma"]
        analyst_input = json.dumps(client.calls_to("m/analyst")[0].messages)
        assert ANSWERS["m/beta"][:16] not in analyst_input

    @pytest.mark.parametrize(
        ("reply", "kind"),
        [
            (Reply(content=""), "empty"),
            (Reply(content="  \n"), "empty"),
            (Reply(content="Nope", finish="content_filter"), "moderation"),
        ],
    )
    async def test_empty_or_filtered_answers_count_as_failures(self, reply: Reply, kind: str) -> None:
        events = await collect(FusionRun(make_request(), make_client(**{"m/gamma": reply})))
        (failed,) = of_type(events, PanelFailed)
        assert (failed.slot, failed.error.kind) == (2, kind)
        assert events[-1].failed_models == ["m/gamma"]

    @pytest.mark.parametrize(
        ("kind", "status", "run_kind"),
        [
            ("invalid_key", 401, "invalid_key"),
            ("insufficient_credits", 402, "insufficient_credits"),
            ("rate_limited", 429, "rate_limited"),
            ("model_not_found", 404, "invalid_model"),
        ],
    )
    async def test_all_members_failing_alike_gives_that_kind(self, kind: str, status: int, run_kind: str) -> None:
        client = make_client(**{m: http_error(kind, status) for m in ANSWERS})
        events = await collect(FusionRun(make_request(), client))
        done = events[-1]
        assert isinstance(done, RunFailed)
        assert done.kind == run_kind
        assert done.failed_models == list(ANSWERS)
        assert len(done.records) == 3
        assert not client.calls_to("m/analyst") and not client.calls_to("m/writer")

    async def test_mixed_failures_give_all_panels_failed(self) -> None:
        client = make_client(
            **{
                "m/alpha": http_error("invalid_key", 401),
                "m/beta": http_error("rate_limited", 429),
                "m/gamma": Reply(content=""),
            }
        )
        done = (await collect(FusionRun(make_request(), client)))[-1]
        assert done.kind == "all_panels_failed"
        assert "m/alpha: invalid_key from provider" in done.message
        assert "m/gamma" in done.message


# --------------------------------------------------------------------------- analysis paths


class TestAnalysis:
    async def test_invalid_json_is_repaired_once(self) -> None:
        client = make_client(**{"m/analyst": [INVALID, analysis_reply]})
        events = await collect(FusionRun(make_request(), client))

        (completed,) = of_type(events, AnalysisCompleted)
        assert completed.analyst_model == "m/analyst"
        first, repair = client.calls_to("m/analyst")
        assert repair.messages[: len(first.messages)] == first.messages
        assert repair.messages[-2] == {"role": "assistant", "content": INVALID.content}
        assert "no JSON object" in repair.messages[-1]["content"]
        assert [r.status for r in completed.records] == ["failed", "complete"]
        assert completed.records[0].error.kind == "invalid_output"
        assert isinstance(events[-1], RunCompleted)
        assert [r.role for r in events[-1].records].count("analyst") == 2

    async def test_the_fallback_analyst_takes_over_with_a_fresh_shuffle(self) -> None:
        client = make_client(**{"m/analyst": INVALID, "m/fallback": analysis_reply})
        request = make_request(fallback_analyst=ModelSpec(model="m/fallback"))
        events = await collect(FusionRun(request, client, rng=random.Random(2)))

        assert [e.analyst_model for e in of_type(events, AnalysisStarted)] == ["m/analyst", "m/fallback"]
        (completed,) = of_type(events, AnalysisCompleted)
        assert completed.analyst_model == "m/fallback"
        assert [r.model for r in completed.records] == ["m/analyst", "m/analyst", "m/fallback"]
        insights = {i["model"]: i["insight"] for i in completed.analysis["unique_insights"]}
        assert insights == ANSWERS

    async def test_a_failed_analyst_call_goes_straight_to_the_fallback(self) -> None:
        client = make_client(**{"m/analyst": http_error("timeout", 0), "m/fallback": analysis_reply})
        request = make_request(fallback_analyst=ModelSpec(model="m/fallback"))
        events = await collect(FusionRun(request, client))
        assert len(client.calls_to("m/analyst")) == 1  # no repair of a call that failed
        assert of_type(events, AnalysisCompleted)[0].analyst_model == "m/fallback"

    async def test_without_analysis_the_run_degrades_and_says_why(self) -> None:
        client = make_client(**{"m/analyst": INVALID})
        events = await collect(FusionRun(make_request(), client))

        (degraded,) = of_type(events, AnalysisDegraded)
        assert "m/analyst returned invalid JSON twice" in degraded.reason
        assert len(degraded.records) == 2
        assert not of_type(events, AnalysisCompleted)
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert done.analysis is None and done.analysis_error == degraded.reason
        writer_input = client.calls_to("m/writer")[0].messages[-1]["content"]
        assert "No structured analysis is available" in writer_input and "<analysis>" not in writer_input
        for text in ANSWERS.values():
            assert text in writer_input

    async def test_reused_analysis_skips_the_analyst(self) -> None:
        first = await collect(FusionRun(make_request(), make_client()))
        (analysis,) = of_type(first, AnalysisCompleted)

        client = make_client(**{"m/writer2": Reply(content="Rewritten.")})
        request = make_request(writer=ModelSpec(model="m/writer2"))
        events = await collect(
            FusionRun(request, client, reuse_answers=dict(enumerate(ANSWERS.values())), reuse_analysis=analysis)
        )
        assert [c.model for c in client.calls] == ["m/writer2"]
        (reused,) = of_type(events, AnalysisCompleted)
        assert (reused.analysis, reused.label_map, reused.records) == (analysis.analysis, analysis.label_map, [])
        assert [e.content for e in of_type(events, PanelCompleted)] == list(ANSWERS.values())
        done = events[-1]
        assert done.answer == "Rewritten." and done.analysis == analysis.analysis
        assert [r.role for r in done.records] == ["writer"]


# --------------------------------------------------------------------------- writer


class TestWriter:
    async def test_the_fallback_writer_takes_over_after_empty_output(self) -> None:
        client = make_client(**{"m/writer": Reply(content=""), "m/writer2": Reply(content="Fallback answer.")})
        request = make_request(fallback_writer=ModelSpec(model="m/writer2"))
        events = await collect(FusionRun(request, client))
        assert [e.writer_model for e in of_type(events, FinalStarted)] == ["m/writer", "m/writer2"]
        done = events[-1]
        assert done.answer == "Fallback answer."
        assert [(r.model, r.status) for r in done.records if r.role == "writer"] == [
            ("m/writer", "failed"),
            ("m/writer2", "complete"),
        ]

    async def test_without_a_fallback_the_run_fails_as_writer_failed(self) -> None:
        broken = Reply(content="Half an ans", error=ProviderError(kind="upstream_error", message="boom"), error_after=4)
        client = make_client(**{"m/writer": broken})
        events = await collect(FusionRun(make_request(), client))
        done = events[-1]
        assert isinstance(done, RunFailed) and done.kind == "writer_failed"
        assert "m/writer" in done.message and "boom" in done.message
        assert len(of_type(events, PanelCompleted)) == 3 and of_type(events, AnalysisCompleted)
        assert [r.role for r in done.records] == ["panel"] * 3 + ["analyst", "writer"]


# --------------------------------------------------------------------------- controls


class TestControls:
    async def test_stop_member_closes_that_member_only(self) -> None:
        client = make_client(**{"m/beta": Reply(content="Beta starts and then hangs", hang=True)})
        run = FusionRun(make_request(), client)
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, PanelDelta) and event.slot == 1 and not of_type(events, PanelFailed):
                assert run.stop_member(1)
        (failed,) = of_type(events, PanelFailed)
        assert failed.slot == 1 and failed.error.kind == "cancelled"
        assert failed.record.status == "cancelled"
        assert failed.partial_content.startswith("Beta sta")
        assert client.calls_to("m/beta")[0].closed_early
        assert not client.calls_to("m/alpha")[0].closed_early
        assert isinstance(events[-1], RunCompleted) and events[-1].failed_models == ["m/beta"]
        assert client.open_streams == 0

    async def test_stop_member_refuses_unknown_or_finished_slots(self) -> None:
        run = FusionRun(make_request(), make_client())
        assert not run.stop_member(0)  # not started
        events = await collect(run)
        assert not run.stop_member(0) and not run.stop_member(9)
        assert isinstance(events[-1], RunCompleted)

    async def test_retry_member_restarts_a_failed_member(self) -> None:
        client = make_client(
            **{
                "m/alpha": Reply(content=ANSWERS["m/alpha"], delay=0.3),
                "m/beta": [http_error("rate_limited", 429), Reply(content="Beta, second try.")],
            }
        )
        run = FusionRun(make_request(), client)
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, PanelFailed):
                assert run.retry_member(event.slot)

        assert [(e.slot, e.attempt) for e in of_type(events, PanelAdded)] == [(0, 1), (1, 1), (2, 1), (1, 2)]
        assert [e.content for e in of_type(events, PanelCompleted) if e.slot == 1] == ["Beta, second try."]
        done = events[-1]
        assert done.failed_models == []
        assert [(r.slot, r.status) for r in done.records if r.slot == 1] == [(1, "failed"), (1, "complete")]
        assert "Beta, second try." in json.dumps(client.calls_to("m/analyst")[0].messages)

    async def test_retry_member_is_refused_outside_the_panel_phase(self) -> None:
        run = FusionRun(make_request(), make_client(**{"m/beta": http_error("rate_limited", 429)}))
        events = await collect(run)
        assert not run.retry_member(1)
        assert events[-1].failed_models == ["m/beta"]

    async def test_fuse_now_skips_running_members(self) -> None:
        client = make_client(
            **{"m/beta": Reply(content="slow", hang=True), "m/gamma": Reply(content="slower", delay=30)}
        )
        run = FusionRun(make_request(), client)
        assert not run.fuse_now()  # nothing to fuse yet
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, PanelCompleted):
                assert run.fuse_now()

        failed = of_type(events, PanelFailed)
        assert sorted(e.slot for e in failed) == [1, 2]
        assert all(e.error.kind == "cancelled" and e.error.message == "Skipped by fuse now" for e in failed)
        (completed,) = of_type(events, AnalysisCompleted)
        assert completed.label_map == {"Response A": "m/alpha"}
        done = events[-1]
        assert isinstance(done, RunCompleted)
        assert done.failed_models == ["m/beta", "m/gamma"]
        assert client.open_streams == 0

    async def test_fuse_now_is_refused_before_any_member_completed(self) -> None:
        client = make_client(**{m: Reply(content="x", hang=True) for m in ANSWERS})
        run = FusionRun(make_request(), client)
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, PanelDelta):
                assert not run.fuse_now()
                run.cancel()
        assert events[-1].kind == "cancelled"

    async def test_cancel_during_panel_stops_everything(self) -> None:
        client = make_client(**{m: Reply(content="partial answer", hang=True) for m in ANSWERS})
        run = FusionRun(make_request(), client)

        async def cancel_soon() -> None:
            await wait_for(lambda: client.open_streams == 3 and len(client.calls) == 3)
            await asyncio.sleep(0.05)
            run.cancel()

        canceller = asyncio.create_task(cancel_soon())
        events = await collect(run)
        await canceller

        done = events[-1]
        assert isinstance(done, RunFailed) and done.kind == "cancelled"
        assert sorted(e.slot for e in of_type(events, PanelFailed)) == [0, 1, 2]
        assert all(e.partial_content == "partial answer" for e in of_type(events, PanelFailed))
        assert [r.status for r in done.records] == ["cancelled"] * 3
        assert client.open_streams == 0 and all(c.closed_early for c in client.calls)
        assert_no_tasks_left()

    async def test_cancel_during_synthesis_closes_the_writer(self) -> None:
        client = make_client(**{"m/writer": Reply(content="The fused ans", hang=True)})
        run = FusionRun(make_request(), client)
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, FinalDelta):
                run.cancel()
        done = events[-1]
        assert isinstance(done, RunFailed) and done.kind == "cancelled"
        assert done.failed_models == []
        assert done.records[-1].role == "writer" and done.records[-1].status == "cancelled"
        assert client.open_streams == 0
        assert_no_tasks_left()

    async def test_cancel_before_start(self) -> None:
        client = make_client()
        run = FusionRun(make_request(), client)
        run.cancel()
        events = await collect(run)
        assert [type(e) for e in events] == [RunFailed] and events[0].kind == "cancelled"
        assert client.calls == []

    async def test_a_consumer_that_stops_listening_leaves_no_task(self) -> None:
        client = make_client(**{m: Reply(content="partial", hang=True) for m in ANSWERS})
        events = FusionRun(make_request(), client).events()
        async for event in events:
            if isinstance(event, PanelDelta):
                break
        await events.aclose()
        assert client.open_streams == 0
        assert_no_tasks_left()


# --------------------------------------------------------------------------- requests


class TestRequestValidation:
    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"panel": []}, "between 1 and 8 models (got 0)"),
            ({"panel": [ModelSpec(model=f"m/{i}") for i in range(9)]}, "between 1 and 8 models (got 9)"),
            (
                {"panel": [ModelSpec(model="m/a", temperature=2.5)]},
                "Panel model 1: temperature must be between 0 and 2",
            ),
            ({"panel": [ModelSpec(model="m/a", temperature=-0.1)]}, "temperature must be between 0 and 2"),
            ({"writer": ModelSpec(model="m/w", max_tokens=0)}, "The writer: max tokens must be between 1 and 200000"),
            ({"analyst": ModelSpec(model="m/w", max_tokens=200_001)}, "The analyst: max tokens"),
            ({"messages": [{"role": "user", "content": "   "}]}, "The question is empty."),
            ({"messages": []}, "The question is empty."),
            ({"panel": [ModelSpec(model="")]}, "Panel model 1 has no model id."),
            ({"member_messages": {5: []}}, "panel slot 5, which does not exist"),
        ],
    )
    async def test_invalid_requests_fail_before_any_call(self, changes: dict, message: str) -> None:
        client = make_client()
        events = await collect(FusionRun(make_request(**changes), client))
        assert len(events) == 1
        (failed,) = events
        assert isinstance(failed, RunFailed) and failed.kind == "invalid_request"
        assert message in failed.message
        assert client.calls == []

    async def test_edge_values_are_accepted(self) -> None:
        request = make_request(
            panel=[
                ModelSpec(model="m/alpha", temperature=0, max_tokens=200_000),
                ModelSpec(model="m/beta", temperature=2, max_tokens=1),
            ]
        )
        events = await collect(FusionRun(request, make_client()))
        assert isinstance(events[-1], RunCompleted)

    def test_reuse_answers_for_a_missing_slot_is_a_bug(self) -> None:
        with pytest.raises(ValueError):
            FusionRun(make_request(), make_client(), reuse_answers={7: "x"})


# --------------------------------------------------------------------------- over real HTTP
# The real ChatClient against the scripted upstream: real sockets, real SSE, real disconnects.

PANEL = ["sim/atlas", "sim/borealis", "sim/cirrus"]
SCRIPTS: dict[str, dict[str, Any]] = {
    "sim/atlas": {"ttft_ms": 100, "tokens_per_s": 400, "style": "structured"},
    "sim/borealis": {"ttft_ms": 200, "tokens_per_s": 400, "style": "narrative", "reasoning": "Thinking it over."},
    "sim/cirrus": {"ttft_ms": 300, "tokens_per_s": 400, "style": "concise"},
    "sim/analyst": {"ttft_ms": 100, "tokens_per_s": 2000},
    "sim/writer": {"ttft_ms": 100, "tokens_per_s": 800},
}


def scripts_with(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {model: {**script, **changes.get(model, {})} for model, script in SCRIPTS.items()}


def http_request(**kwargs: Any) -> FusionRequest:
    defaults: dict[str, Any] = dict(
        messages=[{"role": "user", "content": "Should a small team adopt microservices?"}],
        panel=[ModelSpec(model=m) for m in PANEL],
        analyst=ModelSpec(model="sim/analyst"),
        writer=ModelSpec(model="sim/writer"),
    )
    defaults.update(kwargs)
    return FusionRequest(**defaults)


@asynccontextmanager
async def scripted(scripts: dict[str, dict[str, Any]]) -> AsyncIterator[tuple[ScriptedUpstream, ChatClient]]:
    async with ScriptedUpstream(scripts, time_scale=0.05) as up:
        provider = Provider(name="scripted", base_url=up.base_url, api_key="test-key")
        async with ChatClient(ProviderRegistry({"scripted": provider}, default="scripted")) as client:
            yield up, client


def fusion_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("fusion-")]


class TestOverHttp:
    async def test_happy_path(self) -> None:
        request = http_request()
        request.panel[0].system_prompt = "You are terse."
        async with scripted(SCRIPTS) as (up, client):
            events = await collect(FusionRun(request, client, rng=random.Random(5)))

        done = events[-1]
        assert isinstance(done, RunCompleted), done
        assert done.answer.startswith("## Answer") and done.failed_models == []
        assert of_type(events, PanelReasoningDelta)
        (completed,) = of_type(events, AnalysisCompleted)
        assert set(completed.label_map.values()) == set(PANEL)
        models_named = {i["model"] for i in done.analysis["unique_insights"]}
        models_named |= {s["model"] for c in done.analysis["contradictions"] for s in c["stances"]}
        assert models_named and models_named <= set(PANEL)  # labels were mapped back
        assert [r.role for r in done.records] == ["panel"] * 3 + ["analyst", "writer"]
        assert all(r.usage.cost and r.ttft_ms is not None for r in done.records)
        assert done.usage.cost == pytest.approx(sum(r.usage.cost for r in done.records))

        (analyst,) = up.requests_for("sim/analyst")
        assert analyst["params"]["temperature"] == 0
        assert analyst["params"]["response_format"] == {"type": "json_object"}
        assert up.requests_for("sim/atlas")[0]["messages"][0] == {"role": "system", "content": "You are terse."}
        assert "Thinking it over." not in json.dumps(analyst["messages"])

    async def test_a_member_failing_mid_stream(self) -> None:
        scripts = scripts_with(**{"sim/borealis": {"faults": [{"type": "error_mid_stream", "after_chars": 40}]}})
        async with scripted(scripts) as (up, client):
            events = await collect(FusionRun(http_request(), client))

        (failed,) = of_type(events, PanelFailed)
        assert failed.model == "sim/borealis" and failed.error.kind == "upstream_error"
        assert len(failed.partial_content) == 40
        done = events[-1]
        assert isinstance(done, RunCompleted) and done.failed_models == ["sim/borealis"]
        assert set(of_type(events, AnalysisCompleted)[0].label_map.values()) == {"sim/atlas", "sim/cirrus"}
        assert failed.partial_content not in json.dumps(up.requests_for("sim/analyst")[0]["messages"])

    async def test_analyst_invalid_json_is_repaired(self) -> None:
        scripts = scripts_with(**{"sim/analyst": {"faults": [{"type": "invalid_json", "times": 1}]}})
        async with scripted(scripts) as (up, client):
            events = await collect(FusionRun(http_request(), client))

        (completed,) = of_type(events, AnalysisCompleted)
        assert [r.status for r in completed.records] == ["failed", "complete"]
        first, repair = up.requests_for("sim/analyst")
        assert repair["messages"][-2]["role"] == "assistant"
        assert "could not be used" in repair["messages"][-1]["content"]
        assert isinstance(events[-1], RunCompleted) and events[-1].analysis == completed.analysis

    async def test_all_members_unauthorised_is_invalid_key(self) -> None:
        scripts = scripts_with(**{m: {"faults": [{"type": "http", "status": 401}]} for m in PANEL})
        async with scripted(scripts) as (up, client):
            events = await collect(FusionRun(http_request(), client))
        done = events[-1]
        assert isinstance(done, RunFailed) and done.kind == "invalid_key"
        assert not up.requests_for("sim/analyst")

    async def test_stop_member_closes_only_its_connection(self) -> None:
        scripts = scripts_with(**{"sim/cirrus": {"faults": [{"type": "hang", "after_chars": 20}]}})
        async with scripted(scripts) as (up, client):
            run = FusionRun(http_request(), client)
            events = []
            async for event in run.events():
                events.append(event)
                if isinstance(event, PanelDelta) and event.slot == 2:
                    run.stop_member(2)
            assert await up.wait_for_disconnect("sim/cirrus")
        assert up.disconnects == ["sim/cirrus"]
        assert isinstance(events[-1], RunCompleted) and events[-1].failed_models == ["sim/cirrus"]

    async def test_cancel_closes_every_connection(self) -> None:
        scripts = scripts_with(
            **{m: {"faults": [{"type": "hang", "after_chars": 30}], "keepalive_ms": 100} for m in PANEL}
        )
        async with scripted(scripts) as (up, client):
            run = FusionRun(http_request(), client)
            events = []
            async for event in run.events():
                events.append(event)
                if len({e.slot for e in of_type(events, PanelDelta)}) == 3:
                    run.cancel()
            for model in PANEL:
                assert await up.wait_for_disconnect(model)
            assert fusion_tasks() == []
        done = events[-1]
        assert isinstance(done, RunFailed) and done.kind == "cancelled"
        assert sorted(up.disconnects) == sorted(PANEL)
        assert all(e.error.kind == "cancelled" for e in of_type(events, PanelFailed))
