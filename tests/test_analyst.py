"""The analysis phase (chat/fusion/analyst.py) on its own: repair, then fallback, then degraded.

``Analyst.analyse`` runs against the scripted upstream over real HTTP with the engine's own
ChatClient; no panel, no writer, no database.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from chat.fusion.analyst import AnalysisOutcome, Analyst
from chat.fusion.calls import RunContext
from chat.fusion.client import ChatClient
from chat.fusion.providers import ProviderRegistry
from chat.fusion.research import ResearchLog
from chat.fusion.types import (
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    FusionRequest,
    Limits,
    ModelSpec,
    Provider,
)
from chat.testing.scripted import ScriptedUpstream

SCRIPTS: dict[str, Any] = {
    "sim/analyst": {},
    "sim/backup": {},
    "sim/sloppy": {"faults": [{"type": "invalid_json", "times": 1}]},
    "sim/hopeless": {"faults": [{"type": "invalid_json", "times": -1}]},
    "sim/down": {"faults": [{"type": "http", "status": 500, "times": -1}]},
}
ANSWERS = [("sim/a", "Water boils at 100 °C at sea level."), ("sim/b", "It depends on the air pressure.")]


@pytest.fixture
async def up(scripted):
    return await scripted(SCRIPTS, time_scale=0.01)


async def analyse(
    up: ScriptedUpstream, analyst: str, fallback: str | None = None, **kwargs: Any
) -> tuple[AnalysisOutcome, list[Any], RunContext]:
    request = FusionRequest(
        messages=[{"role": "user", "content": "At what temperature does water boil?"}],
        panel=[ModelSpec(model=m) for m, _ in ANSWERS],
        analyst=ModelSpec(model=analyst),
        writer=ModelSpec(model="sim/writer"),
        fallback_analyst=ModelSpec(model=fallback) if fallback else None,
    )
    registry = ProviderRegistry({"openrouter": Provider(name="openrouter", base_url=up.base_url, api_key="k")})
    events: list[Any] = []
    async with ChatClient(registry, limits=Limits(first_token=10, idle=10, total=30, max_retries=0)) as client:
        ctx = RunContext(request=request, client=client, tools=None, emit=events.append)
        outcome = await Analyst(ctx, random.Random(3), ResearchLog(), **kwargs).analyse(ANSWERS)
    return outcome, events, ctx


class TestTheAnalysis:
    async def test_valid_json_is_the_analysis_with_model_ids_in_place_of_labels(self, up) -> None:
        outcome, events, ctx = await analyse(up, "sim/analyst")
        assert [type(e) for e in events] == [AnalysisStarted, AnalysisCompleted]
        event = outcome.event
        assert event is not None and outcome.degraded_reason is None
        assert sorted(event.label_map.values()) == ["sim/a", "sim/b"]
        assert {item["model"] for item in event.analysis["unique_insights"]} <= {"sim/a", "sim/b"}
        [call] = up.requests_for("sim/analyst")
        assert call["params"]["temperature"] == 0.0 and call["params"]["response_format"] == {"type": "json_object"}
        assert [r.status for r in ctx.records] == ["complete"]


class TestRepairThenFallbackThenDegraded:
    async def test_invalid_json_gets_one_repair_attempt_that_sees_its_output(self, up) -> None:
        outcome, events, ctx = await analyse(up, "sim/sloppy")
        assert outcome.event is not None and outcome.event.analyst_model == "sim/sloppy"
        first, repair = ctx.records
        assert first.status == "failed" and first.error is not None and first.error.kind == "invalid_output"
        assert repair.status == "complete"
        bad, repair_request = up.requests_for("sim/sloppy")
        assert repair_request["messages"][-2]["role"] == "assistant"  # its own invalid output, shown back
        assert repair_request["messages"][-1]["role"] == "user"
        assert outcome.event.records == ctx.records

    async def test_when_the_repair_fails_too_the_fallback_analyst_takes_over(self, up) -> None:
        outcome, events, ctx = await analyse(up, "sim/hopeless", "sim/backup")
        assert [type(e) for e in events] == [AnalysisStarted, AnalysisStarted, AnalysisCompleted]
        assert [e.analyst_model for e in events[:2]] == ["sim/hopeless", "sim/backup"]
        assert outcome.event is not None and outcome.event.analyst_model == "sim/backup"
        assert [(r.model, r.status) for r in ctx.records] == [
            ("sim/hopeless", "failed"),
            ("sim/hopeless", "failed"),
            ("sim/backup", "complete"),
        ]

    async def test_an_analyst_whose_call_fails_gets_no_repair(self, up) -> None:
        outcome, events, ctx = await analyse(up, "sim/down", "sim/backup")
        assert len(up.requests_for("sim/down")) == 1
        assert outcome.event is not None and outcome.event.analyst_model == "sim/backup"

    async def test_without_a_usable_analyst_the_phase_degrades_with_a_reason(self, up) -> None:
        outcome, events, ctx = await analyse(up, "sim/hopeless", "sim/down")
        assert outcome.event is None and outcome.analysis is None
        degraded = events[-1]
        assert isinstance(degraded, AnalysisDegraded) and degraded.reason == outcome.degraded_reason
        reason = outcome.degraded_reason or ""
        assert reason.startswith("No analysis is available: the analyst sim/hopeless returned invalid JSON twice")
        assert "; the analyst sim/down failed (" in reason and reason.endswith(").")
        assert degraded.records == ctx.records and len(ctx.records) == 3

    async def test_a_reused_analysis_makes_no_call(self, up) -> None:
        earlier, _, _ = await analyse(up, "sim/analyst")
        assert earlier.event is not None
        outcome, events, ctx = await analyse(up, "sim/hopeless", reuse=earlier.event)
        assert up.requests_for("sim/hopeless") == [] and ctx.records == []
        assert outcome.analysis == earlier.event.analysis and events[0].records == []
