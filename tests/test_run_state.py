"""RunState (chat.runs.state): engine events → the run's state, and its one serialiser.

No database and no channel layer: rows are plain objects shaped like ``Run`` and
``MemberResponse``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from chat.fusion.types import (
    LIVE_STATUSES,
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    CallRecord,
    FinalDelta,
    FinalStarted,
    MemberStatus,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PanelNote,
    PanelReasoningDelta,
    PanelToolFinished,
    PanelToolStarted,
    ProviderError,
    RunCompleted,
    RunFailed,
    RunPhase,
    Usage,
)
from chat.models import RunStatus
from chat.runs.state import RunState, vocabulary

STARTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SNAPSHOT_KEYS = {
    "run",
    "client_run_id",
    "status",
    "phase",
    "turn",
    "members",
    "analyst",
    "writer",
    "analysis",
    "label_map",
    "models",
    "analysis_error",
    "final",
    "usage",
    "timings",
    "failed_models",
    "error",
    "sources",
    "tool_usage",
    "research_notice",
    "started_at",
    "can_retry",
    "version",
    "feedback",
}
MEMBER_KEYS = {
    "slot",
    "model",
    "key",
    "label",
    "status",
    "error",
    "metrics",
    "attempt",
    "tool_calls",
    "sources",
    "notes",
    "reasoning",
    "content",
    "html",
    "blocks_html",
    "consumed",
}


def run_row(**over: Any) -> SimpleNamespace:
    fields: dict[str, Any] = {
        "pk": uuid.UUID(int=1),
        "client_run_id": "client-1",
        "turn_id": 7,
        "turn": SimpleNamespace(index=0, prompt="Why is the sky blue?"),
        "created_at": STARTED,
        "analyst_model": "sim/analyst",
        "writer_model": "sim/writer",
        "analysis": None,
        "label_map": {},
        "status": RunStatus.RUNNING,
        "answer": "",
        "analysis_error": "",
        "usage": {},
        "timings": {},
        "failed_models": [],
        "error_kind": "",
        "error_message": "",
        "sources": [],
        "tool_usage": {},
        "config": {},
        "finished_at": None,
        "calls": [],
    }
    fields.update(over)
    row = SimpleNamespace(**fields)
    row.wall_ms = lambda: row.timings.get("total")
    return row


def member_row(slot: int, model: str, **over: Any) -> SimpleNamespace:
    fields: dict[str, Any] = {
        "slot": slot,
        "model": model,
        "label": "",
        "status": MemberStatus.WAITING.value,
        "content": "",
        "reasoning": "",
        "error_kind": "",
        "error_message": "",
        "ttft_ms": None,
        "duration_ms": None,
        "usage": {},
        "attempt": 1,
        "tool_calls": [],
        "sources": [],
        "notes": [],
    }
    fields.update(over)
    return SimpleNamespace(**fields)


def record(slot: int | None = 0, role: str = "panel", model: str = "sim/a", **usage: Any) -> CallRecord:
    return CallRecord(role=role, model=model, slot=slot, ttft_ms=100, duration_ms=900, usage=Usage(**usage))


def live(*models: str, **kw: Any) -> RunState:
    return RunState.start(run_row(), [ModelSpec(model=m) for m in models or ("sim/a", "sim/b")], **kw)


class TestApplyingEvents:
    def test_a_member_added_waits_and_its_frame_goes_out_at_once(self) -> None:
        state = live()
        frame, now = state.apply(PanelAdded(slot=0, model="sim/a"))
        assert frame == {"type": "panel.added", "slot": 0, "model": "sim/a", "attempt": 1} and now
        assert state.members[0].status == MemberStatus.WAITING

    def test_a_retried_member_starts_over(self) -> None:
        state = live()
        state.apply(PanelDelta(slot=0, model="sim/a", delta="old text"))
        state.apply(PanelNote(slot=0, model="sim/a", message="note"))
        state.apply(PanelAdded(slot=0, model="sim/a", attempt=2))
        m = state.members[0]
        assert (m.stream.text, m.notes, m.attempt, m.status) == ("", [], 2, MemberStatus.WAITING)

    def test_content_makes_a_member_stream_and_only_its_first_delta_is_urgent(self) -> None:
        state = live()
        frame, now = state.apply(PanelDelta(slot=1, model="sim/b", delta="Hello"))
        assert frame == {"type": "panel.delta", "slot": 1, "offset": 0, "delta": "Hello", "blocks": [], "consumed": 0}
        assert now and state.members[1].status == MemberStatus.STREAMING
        frame, now = state.apply(PanelDelta(slot=1, model="sim/b", delta=" there"))
        assert frame["offset"] == 5 and not now

    def test_reasoning_first_makes_a_member_think(self) -> None:
        state = live()
        frame, now = state.apply(PanelReasoningDelta(slot=0, model="sim/a", delta="hmm"))
        assert frame == {"type": "panel.reasoning.delta", "slot": 0, "offset": 0, "delta": "hmm"} and not now
        assert state.members[0].status == MemberStatus.THINKING
        state.apply(PanelDelta(slot=0, model="sim/a", delta="A"))
        state.apply(PanelReasoningDelta(slot=0, model="sim/a", delta="more"))
        assert state.members[0].status == MemberStatus.STREAMING

    def test_a_tool_call_makes_a_member_search_until_it_finishes(self) -> None:
        state = live()
        frame, now = state.apply(
            PanelToolStarted(slot=0, model="sim/a", call_id="c1", name="web_search", arguments={"query": "sky"})
        )
        assert now and frame["type"] == "panel.tool.started"
        assert state.members[0].status == MemberStatus.SEARCHING
        source = {"url": "https://example.org/sky", "title": "Sky", "kind": "search"}
        frame, _ = state.apply(
            PanelToolFinished(
                slot=0, model="sim/a", call_id="c1", name="web_search", ok=True, summary="Searched", sources=[source]
            )
        )
        assert frame["status"] == "waiting"  # no text yet
        m = state.members[0]
        assert m.status == MemberStatus.WAITING and m.sources == [source]
        assert m.tool_calls == [
            {
                "id": "c1",
                "name": "web_search",
                "arguments": {"query": "sky"},
                "status": "done",
                "ok": True,
                "summary": "Searched",
                "sources": [source],
            }
        ]

    def test_a_member_that_has_text_streams_again_after_its_search(self) -> None:
        state = live()
        state.apply(PanelDelta(slot=0, model="sim/a", delta="Let me check."))
        state.apply(PanelToolStarted(slot=0, model="sim/a", call_id="c1", name="web_fetch", arguments={}))
        state.apply(
            PanelToolFinished(slot=0, model="sim/a", call_id="c1", name="web_fetch", ok=False, summary="blocked")
        )
        assert state.members[0].status == MemberStatus.STREAMING
        assert state.members[0].tool_calls[0]["status"] == "failed"

    def test_a_note_is_kept_once(self) -> None:
        state = live()
        for _ in range(2):
            frame, now = state.apply(PanelNote(slot=0, model="sim/a", message="No tools."))
        assert state.members[0].notes == ["No tools."] and now and frame["message"] == "No tools."

    def test_a_completed_member_has_its_whole_html_and_metrics(self) -> None:
        state = live()
        frame, now = state.apply(
            PanelCompleted(slot=0, model="sim/a", content="**Blue.**", record=record(prompt_tokens=3, cost=0.01))
        )
        m = state.members[0]
        assert m.status == MemberStatus.COMPLETE and m.stream.html == "<p><strong>Blue.</strong></p>"
        assert frame["html"] == m.stream.html and not now
        assert m.metrics == {
            "ttft_ms": 100,
            "duration_ms": 900,
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 0,
                "reasoning_tokens": 0,
                "total_tokens": 0,
                "cost": 0.01,
            },
        }

    def test_a_reused_answer_keeps_the_earlier_runs_metrics(self) -> None:
        earlier = {"ttft_ms": 1, "duration_ms": 2, "usage": {"cost": 0.5}}
        state = live(reused={0: earlier})
        state.apply(PanelCompleted(slot=0, model="sim/a", content="x", record=record()))
        assert state.members[0].metrics == earlier

    def test_a_stopped_member_keeps_its_partial_text_and_its_running_calls_fail(self) -> None:
        state = live()
        state.apply(PanelDelta(slot=0, model="sim/a", delta="Part"))
        state.apply(PanelToolStarted(slot=0, model="sim/a", call_id="c1", name="web_search", arguments={}))
        frame, now = state.apply(
            PanelFailed(
                slot=0, model="sim/a", error=ProviderError("cancelled", "Stopped."), partial_content="", record=record()
            )
        )
        m = state.members[0]
        assert (m.status, m.stream.text, frame["status"], now) == (MemberStatus.STOPPED, "Part", "stopped", True)
        assert m.error == {"kind": "cancelled", "message": "Stopped."}
        assert m.tool_calls[0]["status"] == "failed" and m.tool_calls[0]["summary"] == "stopped"

    def test_a_failed_member_is_failed(self) -> None:
        state = live()
        frame, _ = state.apply(
            PanelFailed(
                slot=1,
                model="sim/b",
                error=ProviderError("rate_limited", "Slow down."),
                partial_content="",
                record=record(slot=1),
            )
        )
        assert state.members[1].status == MemberStatus.FAILED and frame["html"] == ""

    def test_the_analysis_phases(self) -> None:
        state = live("sim/a", "sim/a")
        frame, _ = state.apply(AnalysisStarted(analyst_model="sim/analyst2"))
        assert state.phase == RunPhase.ANALYSIS and state.analyst == "sim/analyst2"
        frame, now = state.apply(
            AnalysisCompleted(
                analyst_model="sim/analyst2",
                analysis={"consensus": ["x"]},
                label_map={"Response A": "sim/a#2"},
                records=[record(None, "analyst")],
            )
        )
        assert frame["models"] == {"sim/a": 0, "sim/a#2": 1} and now
        assert state.analysis == {"consensus": ["x"]} and state.analysis_calls[0]["role"] == "analyst"
        frame, _ = state.apply(AnalysisDegraded(reason="Bad JSON.", records=[]))
        assert state.analysis is None and state.analysis_error == "Bad JSON." and frame["reason"] == "Bad JSON."

    def test_a_fallback_writer_starts_the_answer_over(self) -> None:
        state = live()
        state.apply(FinalStarted(writer_model="sim/writer"))
        frame, now = state.apply(FinalDelta(delta="draft"))
        assert frame == {"type": "final.delta", "offset": 0, "delta": "draft", "blocks": [], "consumed": 0} and now
        frame, now = state.apply(FinalStarted(writer_model="sim/fallback"))
        assert state.phase == RunPhase.FINAL and state.writer == "sim/fallback" and state.final.text == "" and now
        assert state.apply(FinalDelta(delta="again"))[0]["offset"] == 0

    def test_a_completed_run(self) -> None:
        state = live(search_price_usd=0.01, research_notice=None)
        sources = [{"url": "https://example.org/", "title": "E", "members": ["sim/a"]}]
        assert (
            state.apply(
                RunCompleted(
                    answer="Fused.",
                    analysis=None,
                    analysis_error=None,
                    failed_models=["sim/b"],
                    records=[],
                    usage=Usage(total_tokens=9),
                    timings={"total": 5},
                    sources=sources,
                    tool_usage={"searches": 2},
                )
            )
            is None
        )
        assert (state.status, state.phase) == (RunStatus.COMPLETE, RunPhase.DONE)
        assert state.final.html == "<p>Fused.</p>" and state.sources == sources
        assert state.tool_usage == {"searches": 2, "search_cost_usd": 0.02}
        frame = state.terminal_frame()
        assert frame["type"] == "completed" and frame["status"] == "complete" and frame["failed_models"] == ["sim/b"]
        assert frame["usage"]["total_tokens"] == 9 and frame["timings"] == {"total": 5}

    def test_a_cancelled_run_gathers_its_members_sources_and_tool_counts(self) -> None:
        state = live(research_notice="No search backend.")
        source = {"url": "https://example.org/a", "title": "A", "kind": "fetch"}
        state.apply(PanelToolStarted(slot=1, model="sim/b", call_id="c", name="web_fetch", arguments={}))
        state.apply(
            PanelToolFinished(
                slot=1, model="sim/b", call_id="c", name="web_fetch", ok=True, summary="", sources=[source]
            )
        )
        state.apply(RunFailed(kind="cancelled", message="Stopped.", failed_models=[], records=[], usage=Usage()))
        assert state.status == RunStatus.CANCELLED
        assert state.sources == [{"url": "https://example.org/a", "title": "A", "members": ["sim/b"]}]
        assert state.tool_usage == {"searches": 0, "fetches": 1, "notice": "No search backend."}
        frame = state.terminal_frame()
        assert (frame["type"], frame["status"], frame["kind"], frame["message"]) == (
            "failed",
            "cancelled",
            "cancelled",
            "Stopped.",
        )

    def test_every_event_type_has_a_handler(self) -> None:
        from chat.fusion import types
        from chat.runs.state import _HANDLERS

        events = set(types.PipelineEvent.__args__)  # type: ignore[attr-defined]  # a union's members
        assert events == set(_HANDLERS)


class TestTheEnd:
    def test_settling_stops_live_members_and_counts_every_call(self) -> None:
        state = live()
        state.apply(PanelDelta(slot=0, model="sim/a", delta="cut"))
        state.apply(RunFailed(kind="cancelled", message="Stopped.", failed_models=[], records=[], usage=Usage()))
        calls = [
            {"role": "panel", "slot": 0, "usage": {"cost": 0.1, "estimated": True}},
            {"role": "writer", "slot": None, "usage": {"cost": 0.2}},
        ]
        state.settle(calls)
        assert [m.status for m in state.members] == [MemberStatus.STOPPED, MemberStatus.STOPPED]
        assert state.members[0].metrics["usage"] == {"cost": 0.1, "estimated": True}
        assert state.usage["cost"] == pytest.approx(0.3) and state.usage["estimated"] is True

    def test_an_engine_crash_fails_the_run_loudly(self) -> None:
        state = live()
        state.crash(KeyError("x"))
        state.settle([])
        frame = state.terminal_frame()
        assert (frame["status"], frame["kind"]) == ("error", "internal") and "KeyError" in frame["message"]

    def test_an_engine_that_ends_without_a_word_is_an_error(self) -> None:
        state = live()
        state.settle([])
        assert state.status == RunStatus.ERROR and state.error["kind"] == "internal"


class TestSnapshot:
    def test_a_live_snapshot_has_the_protocols_shape(self) -> None:
        state = live(research_notice="No search.")
        state.apply(PanelDelta(slot=0, model="sim/a", delta="Para one.\n\nPara"))
        snap = state.snapshot()
        assert set(snap) == SNAPSHOT_KEYS and all(set(m) == MEMBER_KEYS for m in snap["members"])
        assert snap["status"] == "running" and snap["phase"] == "panel" and snap["can_retry"] is False
        assert snap["turn"] == {"id": 7, "index": 0, "prompt": "Why is the sky blue?"}
        assert snap["started_at"] == STARTED.isoformat() and snap["research_notice"] == "No search."
        member = snap["members"][0]
        assert member["status"] == "streaming" and member["html"] is None
        assert member["blocks_html"] == "<p>Para one.</p>" and member["content"][member["consumed"] :] == "Para"
        assert snap["final"] == {"content": "", "html": None, "blocks_html": "", "consumed": 0}

    def test_statuses_are_plain_strings(self) -> None:
        snap = live().snapshot()
        assert type(snap["status"]) is str and type(snap["phase"]) is str
        assert type(snap["members"][0]["status"]) is str


class TestFromRows:
    def test_a_running_run_of_another_process(self) -> None:
        run = run_row(answer="", analysis=None)
        members = [
            member_row(0, "sim/a", status="searching", content="Half.\n\nmore"),
            member_row(1, "sim/a", status="complete", content="*Done*", ttft_ms=5, usage={"cost": 1}),
        ]
        snap = RunState.from_rows(run, members).snapshot()
        assert set(snap) == SNAPSHOT_KEYS and snap["phase"] == "panel" and snap["status"] == "running"
        live_member, done = snap["members"]
        assert live_member["status"] == "searching" and live_member["html"] is None
        assert live_member["blocks_html"] == "<p>Half.</p>"
        assert done["key"] == "sim/a#2" and done["html"] == "<p><em>Done</em></p>"
        assert done["metrics"] == {"ttft_ms": 5, "duration_ms": None, "usage": {"cost": 1}}
        assert snap["models"] == {"sim/a": 0, "sim/a#2": 1}

    def test_a_running_run_with_an_analysis_is_writing(self) -> None:
        assert RunState.from_rows(run_row(analysis={"consensus": []}), []).snapshot()["phase"] == "final"
        assert RunState.from_rows(run_row(answer="Partly"), []).snapshot()["phase"] == "final"

    @pytest.mark.parametrize("status", sorted(s.value for s in LIVE_STATUSES))
    def test_a_finished_run_shows_a_live_member_as_stopped(self, status: str) -> None:
        run = run_row(status=RunStatus.INTERRUPTED, error_kind="interrupted", error_message="Restarted.")
        snap = RunState.from_rows(run, [member_row(0, "sim/a", status=status, content="cut")]).snapshot()
        assert snap["members"][0]["status"] == "stopped" and snap["members"][0]["html"] == "<p>cut</p>"
        assert snap["phase"] == "done" and snap["can_retry"] is True
        assert snap["error"] == {"kind": "interrupted", "message": "Restarted."}

    def test_the_research_notice_comes_from_the_stored_tool_usage(self) -> None:
        run = run_row(status=RunStatus.COMPLETE, tool_usage={"notice": "No search."})
        assert RunState.from_rows(run, []).snapshot()["research_notice"] == "No search."

    def test_the_export_shape(self) -> None:
        finished = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
        run = run_row(
            status=RunStatus.COMPLETE,
            answer="Blue.",
            finished_at=finished,
            timings={"total": 1600},
            calls=[{"role": "writer"}],
            config={"members": []},
        )
        members = [
            member_row(
                0,
                "sim/a",
                status="failed",
                error_kind="rate_limited",
                error_message="Slow.",
                ttft_ms=1,
                duration_ms=2,
                usage={"cost": 0.1},
            )
        ]
        exported = RunState.from_rows(run, members).export()
        assert exported["id"] == str(uuid.UUID(int=1)) and exported["answer"] == "Blue."
        assert exported["created_at"] == STARTED.isoformat() and exported["finished_at"] == finished.isoformat()
        assert exported["wall_ms"] == 1600 and exported["calls"] == [{"role": "writer"}]
        assert exported["members"] == [
            {
                "slot": 0,
                "model": "sim/a",
                "label": "",
                "status": "failed",
                "attempt": 1,
                "content": "",
                "reasoning": "",
                "error": {"kind": "rate_limited", "message": "Slow."},
                "metrics": {"ttft_ms": 1, "duration_ms": 2},
                "usage": {"cost": 0.1},
                "tool_calls": [],
                "sources": [],
                "notes": [],
            }
        ]


class TestVocabulary:
    def test_it_lists_every_status_and_phase_of_the_engine(self) -> None:
        words = vocabulary()
        assert set(words["member_status"].values()) == {s.value for s in MemberStatus}
        assert set(words["live_statuses"]) == {s.value for s in LIVE_STATUSES}
        assert set(words["phase"].values()) == {p.value for p in RunPhase}
        assert words["run_status"]["INTERRUPTED"] == "interrupted"


@pytest.mark.django_db
class TestThePageCarriesTheVocabulary:
    def test_the_conversation_page_embeds_it_for_the_scripts(self, client: Any, alice: Any) -> None:
        import json

        from django.urls import reverse

        from chat.models import Conversation

        conversation = Conversation.objects.create(user=alice)
        client.force_login(alice)
        html = client.get(reverse("conversation", args=[conversation.pk])).content.decode()
        start = html.index('<script id="run-vocabulary" type="application/json">') + len(
            '<script id="run-vocabulary" type="application/json">'
        )
        assert json.loads(html[start : html.index("</script>", start)]) == vocabulary()
