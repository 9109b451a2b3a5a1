"""Calls cut short still count: a stopped run, a stopped, failed or timed-out member and an
interrupted run cost what their calls streamed (estimated when the provider reported nothing),
so stopping a run near its end never makes the next run fit under the daily limit."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any, AsyncIterator

import pytest
from channels.db import database_sync_to_async

from chat import model_catalogue, spend
from chat.fusion.pipeline import FusionRun
from chat.testing.scripted import ScriptedUpstream
from chat.fusion.types import (
    ContentDelta,
    FusionRequest,
    ModelSpec,
    PanelFailed,
    ProviderError,
    ReasoningDelta,
    StreamError,
    Usage,
    UsageReport,
)
from chat.models import Conversation, MemberResponse, MemberStatus, Run, RunStatus
from chat.runs import RunError, manager, mark_interrupted, run_retry_member, run_start, run_stop, run_stop_member
from chat.runs.services import _start_sync
from tests.test_consumers import collect_until, open_ws
from tests.conftest import serve_from

PRICING = {"prompt": "0.00001", "completion": "0.0001"}
LONG = "slow " * 400  # 2000 characters, streamed 4 at a time
SCRIPTS: dict[str, Any] = {
    "sim/a": {"pricing": PRICING, "tokens_per_s": 5000},
    "sim/slow": {"pricing": PRICING, "tokens_per_s": 20, "chunk_chars": 4, "content": LONG},
    "sim/cut": {
        "pricing": PRICING,
        "tokens_per_s": 2000,
        "chunk_chars": 4,
        "content": LONG,
        "faults": [{"type": "error_mid_stream", "after_chars": 1500, "times": -1}],
    },
    "sim/hang": {
        "pricing": PRICING,
        "tokens_per_s": 2000,
        "chunk_chars": 4,
        "content": LONG,
        "faults": [{"type": "hang", "after_chars": 1500, "times": -1}],
    },
    "sim/analyst": {"pricing": PRICING},
    "sim/writer": {"pricing": PRICING, "tokens_per_s": 5000},
    "sim/slowwriter": {"pricing": PRICING, "tokens_per_s": 20, "chunk_chars": 4, "content": LONG},
}


def panel(*members: str, writer: str = "sim/writer") -> dict[str, Any]:
    return {
        "members": [{"model": m} for m in members],
        "analyst": {"model": "sim/analyst"},
        "writer": {"model": writer},
    }


@pytest.fixture
async def up(settings, scripted):
    upstream = serve_from(settings, await scripted(SCRIPTS, time_scale=0.02), checkpoint_s=0.05)
    settings.FUSION_DAILY_SPEND_LIMIT_USD = 100
    await database_sync_to_async(model_catalogue.catalogue_refresh)("openrouter")
    return upstream


async def begin(user: Any, conversation: Conversation, config: dict[str, Any]) -> tuple[str, uuid.UUID]:
    client_run_id = str(uuid.uuid4())
    frame, _ = await run_start(
        user=user, conversation_id=conversation.pk, client_run_id=client_run_id, prompt="hi", panel=config
    )
    return client_run_id, uuid.UUID(frame["run"])


async def streamed(run_id: uuid.UUID, chars: int, *, slot: int | None = None) -> None:
    """Wait until a member (or, without *slot*, the writer) has streamed *chars* characters."""
    active = manager.get(run_id)
    for _ in range(2000):
        stream = active.final if slot is None else active.streams[slot]
        if len(stream.text) >= chars:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the stream never got that far")


async def finished(run_id: uuid.UUID) -> Run:
    active = manager.get(run_id)
    if active is not None:
        await active.done.wait()
    return await database_sync_to_async(Run.objects.get)(pk=run_id)


def estimated_part(run: Run) -> Decimal:
    """What the run's estimated calls cost: the estimate the limit must count."""
    usages = [m.usage for m in run.members.all()] + [c["usage"] for c in run.calls]
    return sum((Decimal(str(u["cost"])) for u in usages if u.get("estimated")), Decimal(0))


def assert_next_run_refused(user: Any, settings: Any, estimate: Decimal) -> None:
    """With a limit that leaves room for one more run only if the cut calls were free, it is refused."""
    assert estimate > Decimal("0.01")
    _, high = model_catalogue.estimate_panel_cost(panel("sim/a"), prompt_tokens=model_catalogue.tokens_of_chars(2))
    settings.FUSION_DAILY_SPEND_LIMIT_USD = float(spend.spent_today(user=user) - estimate / 2 + spend.to_decimal(high))
    conversation = Conversation.objects.create(user=user)
    with pytest.raises(RunError) as exc:
        _start_sync(
            user=user,
            conversation_id=conversation.pk,
            client_run_id=str(uuid.uuid4()),
            prompt="hi",
            panel_data=panel("sim/a"),
            follow_up_mode=None,
        )
    assert exc.value.code == "spend_limit"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestCutCallsCountTowardTheLimit:
    async def test_a_run_stopped_near_its_end_counts_the_writers_partial_answer(self, alice, up, settings):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        client_run_id, run_id = await begin(alice, conversation, panel("sim/a", writer="sim/slowwriter"))
        await streamed(run_id, 1500)
        await run_stop(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id)
        run = await finished(run_id)
        assert run.status == RunStatus.CANCELLED
        writer = next(c for c in run.calls if c["role"] == "writer")
        assert writer["usage"]["estimated"] and writer["usage"]["completion_tokens"] >= 1500 // 4
        assert run.usage["estimated"] and run.cost_usd == spend.cost_of(run.usage)
        assert await database_sync_to_async(spend.spent_today)(user=alice) == run.cost_usd
        await database_sync_to_async(assert_next_run_refused)(alice, settings, Decimal(str(writer["usage"]["cost"])))

    async def test_a_stopped_member_counts_what_it_streamed(self, alice, up, settings):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        client_run_id, run_id = await begin(alice, conversation, panel("sim/slow", "sim/a"))
        await streamed(run_id, 1500, slot=0)
        await run_stop_member(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, slot=0)
        run = await finished(run_id)
        assert run.status == RunStatus.COMPLETE
        member = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=0)
        assert member.status == MemberStatus.STOPPED and member.usage["estimated"]
        assert member.usage["prompt_tokens"] >= 1 and member.usage["completion_tokens"] >= 1500 // 4
        assert run.usage["estimated"] and run.cost_usd > spend.to_decimal(member.usage["cost"]) > 0
        await database_sync_to_async(assert_next_run_refused)(
            alice, settings, await database_sync_to_async(estimated_part)(run)
        )

    @pytest.mark.parametrize("model", ["sim/cut", "sim/hang"])  # an error mid-stream; a stream that went quiet
    async def test_a_failed_or_timed_out_member_counts_what_it_streamed(self, alice, up, settings, model):
        settings.FUSION_IDLE_TIMEOUT = 0.3
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        _, run_id = await begin(alice, conversation, panel(model))
        run = await finished(run_id)
        member = await database_sync_to_async(MemberResponse.objects.get)(run=run, slot=0)
        assert member.status == MemberStatus.FAILED and len(member.content) >= 1500
        assert member.usage["estimated"] and run.cost_usd == spend.to_decimal(member.usage["cost"]) > 0
        await database_sync_to_async(assert_next_run_refused)(alice, settings, run.cost_usd)

    async def test_a_request_refused_with_an_http_error_costs_nothing(self, alice, up):
        up.set_scripts(
            {**SCRIPTS, "sim/a": {"pricing": PRICING, "faults": [{"type": "http", "status": 400, "times": -1}]}}
        )
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        _, run_id = await begin(alice, conversation, panel("sim/a"))
        run = await finished(run_id)
        assert run.status == RunStatus.ERROR and not run.cost_usd

    async def test_what_was_spent_stays_spent_when_the_run_is_retried(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        client_run_id, run_id = await begin(alice, conversation, panel("sim/slow", "sim/a"))
        await streamed(run_id, 1500, slot=0)
        await run_stop_member(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, slot=0)
        first = await finished(run_id)
        assert first.usage["estimated"]

        await run_retry_member(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, slot=0)
        retry = await database_sync_to_async(lambda: Run.objects.exclude(pk=run_id).get())()
        retry = await finished(retry.pk)
        assert retry.status == RunStatus.COMPLETE
        again = await database_sync_to_async(Run.objects.get)(pk=run_id)
        assert again.cost_usd == first.cost_usd and again.usage == first.usage
        spent = await database_sync_to_async(spend.spent_today)(user=alice)
        assert spent == first.cost_usd + retry.cost_usd
        # The retry paid for member 0 only: not again for member 1's copied answer, and no analyst or
        # writer (re-fusing after a member retry is the user's choice, issue 10 item 7).
        assert [c for c in retry.calls if c["role"] in ("analyst", "writer")] == []
        retried = await database_sync_to_async(MemberResponse.objects.get)(run=retry, slot=0)
        paid = retried.usage["cost"] + sum(c["usage"]["cost"] for c in retry.calls)
        assert retry.usage["cost"] == pytest.approx(paid) and retry.cost_usd == spend.cost_of(retry.usage)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestCardsAndTotalsShowTheEstimate:
    async def test_the_terminal_frame_and_the_snapshot_mark_the_estimate(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        comm = await open_ws(alice, conversation.pk)
        client_run_id = str(uuid.uuid4())
        await comm.send_json_to(
            {"type": "start", "run_id": client_run_id, "prompt": "hi", "panel": panel("sim/slow", "sim/a")}
        )
        started = next(e for e in await collect_until(comm, {"run.started"}) if e["type"] == "run.started")
        await streamed(uuid.UUID(started["run"]), 1500, slot=0)
        await comm.send_json_to({"type": "stop_member", "run_id": client_run_id, "slot": 0})
        events = await collect_until(comm, {"completed", "failed"})
        assert (
            events[-1]["type"] == "completed" and events[-1]["usage"]["estimated"] and events[-1]["usage"]["cost"] > 0
        )
        # The stopped member's card shows its estimated cost live, not only after a reload.
        stopped = next(e for e in events if e["type"] == "panel.failed" and e["slot"] == 0)
        assert stopped["metrics"]["usage"]["estimated"] and stopped["metrics"]["usage"]["cost"] > 0
        await comm.disconnect()

        comm = await open_ws(alice, conversation.pk)  # history: the card's metrics say it too
        await comm.disconnect()
        run = await database_sync_to_async(Run.objects.get)(client_run_id=client_run_id)
        from chat.runs import run_snapshot

        state = await run_snapshot(run_id=run.pk)
        assert state["members"][0]["metrics"]["usage"]["estimated"]
        assert "estimated" not in state["members"][1]["metrics"]["usage"]  # a reported cost is not an estimate
        assert state["usage"]["estimated"]


@pytest.fixture
def sync_up(settings):
    upstream = ScriptedUpstream(SCRIPTS, time_scale=0.02).start_in_thread()
    settings.OPENROUTER_BASE_URL = upstream.base_url
    settings.OPENROUTER_API_KEY = "server-key-for-tests"
    settings.FUSION_ALLOW_SERVER_KEY = True
    settings.FUSION_PROVIDERS = {}
    settings.FUSION_DAILY_SPEND_LIMIT_USD = 100
    model_catalogue.catalogue_refresh("openrouter")
    yield upstream
    upstream.stop()


def interrupted_run(user: Any, config: dict[str, Any]) -> Run:
    """A run written by the run service whose process then died (no task ever ran it here)."""
    conversation = Conversation.objects.create(user=user)
    run, _ = _start_sync(
        user=user,
        conversation_id=conversation.pk,
        client_run_id=str(uuid.uuid4()),
        prompt="hi",
        panel_data=config,
        follow_up_mode=None,
    )
    return run


@pytest.mark.django_db
class TestInterruptedRunsCount:
    def test_an_interrupted_run_counts_what_its_calls_streamed_before_the_process_died(self, alice, settings, sync_up):
        run = interrupted_run(alice, panel("sim/slow", "sim/a"))
        # The last checkpoint before the process died: one answer done, one half streamed.
        run.members.filter(slot=0).update(status=MemberStatus.STREAMING, content=LONG[:1500])
        run.members.filter(slot=1).update(status=MemberStatus.COMPLETE, content="A whole answer. " * 50)
        assert mark_interrupted(Run.objects.filter(pk=run.pk)) == 1
        run.refresh_from_db()
        assert (run.status, run.reserved_usd) == (RunStatus.INTERRUPTED, 0)
        usages = {m.slot: m.usage for m in run.members.all()}
        assert usages[0]["estimated"] and usages[0]["completion_tokens"] == 1500 // 4
        assert usages[1]["estimated"] and usages[1]["completion_tokens"] == len("A whole answer. " * 50) // 4
        assert run.calls == []  # the panel was still answering: no analyst or writer yet
        assert run.usage["estimated"] and run.cost_usd == spend.cost_of(run.usage) > 0
        assert spend.spent_today(user=alice) == run.cost_usd
        assert_next_run_refused(alice, settings, run.cost_usd)

    def test_once_the_writer_wrote_the_analyst_and_the_writer_count_too(self, alice, sync_up):
        run = interrupted_run(alice, panel("sim/a"))
        run.members.update(status=MemberStatus.COMPLETE, content="An answer.")
        Run.objects.filter(pk=run.pk).update(analysis={"consensus": []}, answer="The fused answer so far")
        mark_interrupted(Run.objects.filter(pk=run.pk))
        run.refresh_from_db()
        assert [(c["role"], c["model"], c["usage"]["estimated"]) for c in run.calls] == [
            ("analyst", "sim/analyst", True),
            ("writer", "sim/writer", True),
        ]
        writer = run.calls[1]["usage"]
        assert writer["completion_tokens"] == model_catalogue.tokens_of_chars(len("The fused answer so far"))
        assert writer["prompt_tokens"] > model_catalogue.PROMPT_OVERHEAD_TOKENS


# --------------------------------------------------------------------------- the engine's part


class _CutClient:
    """Streams part of an answer, then (optionally) the provider's usage, then an error."""

    registry = None

    def __init__(self, *, report: Usage | None, output: bool = True) -> None:
        self.report, self.output = report, output

    async def stream(self, spec: ModelSpec, messages: list[dict[str, Any]], **_: Any) -> AsyncIterator[Any]:
        if self.output:
            yield ReasoningDelta("think")
            yield ContentDelta("partial answer")
        if self.report is not None:
            yield UsageReport(self.report)
        yield StreamError(
            ProviderError(kind="upstream_error", message="cut", status_code=502), partial_text="partial answer"
        )


async def _failed_record(client: _CutClient) -> Any:
    request = FusionRequest(
        messages=[{"role": "user", "content": "12345678"}],
        panel=[ModelSpec("m", system_prompt="sys")],
        analyst=ModelSpec("an"),
        writer=ModelSpec("wr"),
    )
    async for event in FusionRun(request, client).events():
        if isinstance(event, PanelFailed):
            return event.record
    raise AssertionError("no PanelFailed")


@pytest.mark.asyncio
class TestTheEngineKeepsWhatAnEstimateNeeds:
    async def test_a_cut_stream_records_the_characters_sent_and_streamed(self):
        record = await _failed_record(_CutClient(report=None))
        assert (record.prompt_chars, record.streamed_chars) == (len("sys") + 8, len("think") + len("partial answer"))
        usage = spend.call_usage(
            record.to_dict(),
            lookup=lambda model: model_catalogue.CatalogueModel(
                id=model, name=model, prompt_price=0.001, completion_price=0.01
            ),
        )
        assert usage["estimated"] and (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 5)
        assert usage["cost"] == pytest.approx(3 * 0.001 + 5 * 0.01)

    async def test_usage_a_cut_stream_still_reported_is_taken_as_it_is(self):
        reported = Usage(prompt_tokens=4, completion_tokens=6, total_tokens=10, cost=0.5)
        record = await _failed_record(_CutClient(report=reported))
        assert (record.prompt_chars, record.streamed_chars) == (0, 0)
        assert spend.call_usage(record.to_dict(), lookup=None) == reported.to_dict()

    async def test_a_request_refused_with_an_http_error_leaves_nothing_to_estimate(self):
        record = await _failed_record(_CutClient(report=None, output=False))
        assert (record.prompt_chars, record.streamed_chars) == (0, 0)
