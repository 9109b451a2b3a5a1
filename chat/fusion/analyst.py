"""The analysis phase: the analyst's structured comparison, with one repair and a fallback.

Owns ``Analyst.analyse``: label the surviving answers in a fresh random order per analyst, call
the analyst at temperature 0 (JSON mode where its provider has it; with
``research.analyst_tools`` it may first check claims through the same ``ToolRunner`` members
use, within the same budget), parse and validate its JSON (``chat.fusion.analysis``), give
invalid JSON one repair attempt, then try the fallback analyst, then degrade: no analysis, with
a reason the writer and the user both see. Emits ``AnalysisStarted`` per analyst tried and one
``AnalysisCompleted`` or ``AnalysisDegraded``.

``chat.fusion.analysis`` is the pure part (labels, JSON parsing); this module makes the calls.
No Django, no httpx.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from chat.fusion import prompts
from chat.fusion.analysis import AnalysisError, ParsedAnalysis, assign_labels, label_map_of, parse_analysis
from chat.fusion.calls import CallResult, RunContext, clause
from chat.fusion.research import ResearchLog, ToolRunner
from chat.fusion.types import (
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    CallRecord,
    Message,
    ModelSpec,
    ProviderError,
)

Answers = list[tuple[str, str]]  # (model id, answer) of each member that answered


@dataclass
class AnalysisOutcome:
    """The analysis the writer works from, or why there is none."""

    event: AnalysisCompleted | None = None
    degraded_reason: str | None = None

    @property
    def analysis(self) -> dict[str, Any] | None:
        return self.event.analysis if self.event else None


class Analyst:
    """The analysis phase of one run. ``research`` logs what the analyst looked up."""

    def __init__(
        self,
        ctx: RunContext,
        rng: random.Random,
        research: ResearchLog,
        *,
        reuse: AnalysisCompleted | None = None,
    ) -> None:
        self.ctx, self.rng, self.research, self.reuse = ctx, rng, research, reuse

    async def analyse(self, answers: Answers) -> AnalysisOutcome:
        if self.reuse is not None:
            # Same analysis, but this run made no analyst call: no records to count again.
            event = replace(self.reuse, records=[])
            self.ctx.emit(event)
            return AnalysisOutcome(event=event)

        request = self.ctx.request
        records: list[CallRecord] = []
        problems: list[str] = []
        analysts = (
            [request.analyst] if request.fallback_analyst is None else [request.analyst, request.fallback_analyst]
        )
        for spec in analysts:
            self.ctx.emit(AnalysisStarted(analyst_model=spec.model))
            result = await self._try(spec, answers, records)
            if isinstance(result, str):
                problems.append(result)
                continue
            parsed, label_map = result
            event = AnalysisCompleted(
                analyst_model=spec.model,
                analysis=parsed.analysis,
                label_map=label_map,
                records=list(records),
                notes=parsed.notes,
            )
            self.ctx.emit(event)
            return AnalysisOutcome(event=event)

        reason = "No analysis is available: " + "; ".join(problems) + "."
        self.ctx.emit(AnalysisDegraded(reason=reason, records=list(records)))
        return AnalysisOutcome(degraded_reason=reason)

    async def _try(
        self, spec: ModelSpec, answers: Answers, records: list[CallRecord]
    ) -> tuple[ParsedAnalysis, dict[str, str]] | str:
        """The parsed analysis and its label map, or a sentence fragment saying why there is none."""
        # A fresh shuffle per analyst, so position bias does not repeat in the fallback.
        labelled = assign_labels(answers, self.rng)
        label_map = label_map_of(labelled)
        messages = prompts.analyst_messages(
            system_extra=spec.system_prompt,
            previous_turns=self.ctx.previous_turns(),
            answers=labelled,
            question=self.ctx.request.question,
        )
        call_spec = replace(spec, temperature=0.0, system_prompt=None)
        response_format = self._response_format(spec.model)

        first, messages = await self._first_call(call_spec, messages, records, response_format)
        if first.error is not None:
            return f"the analyst {spec.model} failed ({clause(first.error.message)})"
        parsed = _parse(first, label_map)
        if isinstance(parsed, ParsedAnalysis):
            return parsed, label_map

        # One repair attempt: show the model its output and what is wrong with it.
        repair_messages = prompts.repair_messages(messages, first.text, parsed)
        repair = await self.ctx.complete("analyst", call_spec, repair_messages, records, response_format)
        if repair.error is not None:
            return (
                f"the analyst {spec.model} returned invalid JSON ({parsed}) "
                f"and the repair attempt failed ({clause(repair.error.message)})"
            )
        repaired = _parse(repair, label_map)
        if isinstance(repaired, ParsedAnalysis):
            return repaired, label_map
        return f"the analyst {spec.model} returned invalid JSON twice (last problem: {repaired})"

    async def _first_call(
        self,
        spec: ModelSpec,
        messages: list[Message],
        records: list[CallRecord],
        response_format: dict[str, Any] | None,
    ) -> tuple[CallResult, list[Message]]:
        """The analyst's answer, after it checked claims with the web tools if research allows it.

        With ``research.analyst_tools`` the analyst may call the tools up to the members' budget;
        its final turn (tools refused with tool_choice "none" once the budget is spent) is the
        JSON. Returns the call and the messages it was made with (the repair prompt builds on them).
        """
        runner = self._tool_runner()
        if runner is None:
            return await self.ctx.complete("analyst", spec, messages, records, response_format), messages
        schemas = runner.schemas()
        messages = list(messages)
        while True:
            spent = runner.spent
            result = await self.ctx.complete(
                "analyst", spec, messages, records, None, tools=schemas, tool_choice="none" if spent else None
            )
            if result.error is not None or not result.tool_calls or spent:
                return result, messages
            messages += await runner.run(result.tool_calls, result.text)

    def _tool_runner(self) -> ToolRunner | None:
        research, tools = self.ctx.request.research, self.ctx.tools
        if (
            research is None
            or not research.web_tools
            or not research.analyst_tools
            or tools is None
            or not tools.available
        ):
            return None
        return ToolRunner(tools, research.budget, self.research, call_prefix="call_analyst_")

    def _response_format(self, model: str) -> dict[str, Any] | None:
        """JSON mode when the provider serving ``model`` accepts it."""
        provider = self.ctx.provider_of(model)
        return {"type": "json_object"} if provider is not None and provider.supports_response_format else None


def _parse(result: CallResult, label_map: dict[str, str]) -> ParsedAnalysis | str:
    """The analysis in a call's text, or what is wrong with it (and the call is marked invalid)."""
    try:
        return parse_analysis(result.text, label_map)
    except AnalysisError as exc:
        problem = clause(str(exc))
        result.record.status = "failed"
        result.record.error = ProviderError(kind="invalid_output", message=f"Invalid analysis JSON: {problem}")
        return problem
