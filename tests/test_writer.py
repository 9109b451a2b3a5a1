"""The final phase (chat/fusion/writer.py) on its own: the fused answer and the fallback writer.

``Writer.write`` runs against the scripted upstream over real HTTP with the engine's own
ChatClient; no panel, no analyst, no database.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.fusion.analyst import AnalysisOutcome
from chat.fusion.calls import RunContext
from chat.fusion.client import ChatClient
from chat.fusion.providers import ProviderRegistry
from chat.fusion.types import FinalDelta, FinalStarted, FusionRequest, Limits, ModelSpec, Provider
from chat.fusion.writer import WrittenAnswer, Writer
from chat.testing.scripted import ScriptedUpstream

SCRIPTS: dict[str, Any] = {
    "sim/writer": {"chunk_chars": 12},
    "sim/backup": {"content": "The backup's fused answer.", "chunk_chars": 50},
    "sim/blank": {"faults": [{"type": "empty", "times": -1}]},
    "sim/cut": {"faults": [{"type": "error_mid_stream", "after_chars": 20, "times": -1}]},
}
ANSWERS = [("sim/a", "Water boils at 100 °C at sea level."), ("sim/b", "It depends on the air pressure.")]
DEGRADED = AnalysisOutcome(degraded_reason="No analysis is available: the analyst sim/x failed (HTTP 500).")


@pytest.fixture
async def up():
    async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as upstream:
        yield upstream


async def write(
    up: ScriptedUpstream, writer: str, fallback: str | None = None, analysis: AnalysisOutcome = DEGRADED
) -> tuple[WrittenAnswer, list[Any], RunContext, Writer]:
    request = FusionRequest(
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "When does water boil?"},
        ],
        panel=[ModelSpec(model=m) for m, _ in ANSWERS],
        analyst=ModelSpec(model="sim/analyst"),
        writer=ModelSpec(model=writer),
        fallback_writer=ModelSpec(model=fallback) if fallback else None,
    )
    registry = ProviderRegistry({"openrouter": Provider(name="openrouter", base_url=up.base_url, api_key="k")})
    events: list[Any] = []
    async with ChatClient(registry, limits=Limits(first_token=10, idle=10, total=30, max_retries=0)) as client:
        ctx = RunContext(request=request, client=client, tools=None, emit=events.append)
        phase = Writer(ctx)
        written = await phase.write(ANSWERS, analysis)
    return written, events, ctx, phase


def final_text(events: list[Any]) -> str:
    """The answer as a consumer sees it: a FinalStarted resets the text."""
    text = ""
    for event in events:
        if isinstance(event, FinalStarted):
            text = ""
        elif isinstance(event, FinalDelta):
            text += event.delta
    return text


class TestTheWriter:
    async def test_it_streams_the_fused_answer_as_final_deltas(self, up) -> None:
        written, events, ctx, phase = await write(up, "sim/writer")
        assert written.text and written.problems == []
        assert isinstance(events[0], FinalStarted) and final_text(events) == written.text
        assert len([e for e in events if isinstance(e, FinalDelta)]) > 1
        assert phase.first_delta_at is not None and phase.truncated_at is None
        assert [(r.role, r.status) for r in ctx.records] == [("writer", "complete")]

    async def test_the_writer_sees_why_there_is_no_analysis(self, up) -> None:
        await write(up, "sim/writer")
        [call] = up.requests_for("sim/writer")
        prompt = call["messages"][-1]["content"]
        assert "No structured analysis is available" in prompt and "sim/x failed (HTTP 500)" in prompt
        assert "Answer briefly." in call["messages"][0]["content"]  # the conversation's instructions


class TestTheFallbackWriter:
    async def test_empty_output_hands_over_to_the_fallback_writer(self, up) -> None:
        written, events, ctx, _ = await write(up, "sim/blank", "sim/backup")
        assert written.text == "The backup's fused answer." and written.problems == []
        assert [e.writer_model for e in events if isinstance(e, FinalStarted)] == ["sim/blank", "sim/backup"]
        assert final_text(events) == written.text
        first, second = ctx.records
        assert first.status == "failed" and first.error is not None and first.error.kind == "empty"
        assert second.status == "complete"

    async def test_a_writer_cut_mid_stream_hands_over_and_its_text_is_reset(self, up) -> None:
        written, events, ctx, _ = await write(up, "sim/cut", "sim/backup")
        second = [i for i, e in enumerate(events) if isinstance(e, FinalStarted)][1]
        assert any(isinstance(e, FinalDelta) for e in events[:second])  # the cut writer had shown some text
        assert written.text == "The backup's fused answer." == final_text(events)
        assert ctx.records[0].error is not None and ctx.records[0].error.kind == "upstream_error"

    async def test_without_a_fallback_empty_output_is_a_failure_that_says_why(self, up) -> None:
        written, events, ctx, _ = await write(up, "sim/blank")
        assert written.text is None
        assert written.problems == ["The writer sim/blank failed: The model finished without writing an answer."]

    async def test_when_both_writers_fail_each_one_says_why(self, up) -> None:
        written, _, ctx, _ = await write(up, "sim/blank", "sim/cut")
        assert written.text is None and len(written.problems) == 2
        assert written.problems[1].startswith("The writer sim/cut failed: ")
        assert [r.status for r in ctx.records] == ["failed", "failed"]
