"""Running evaluations in process against the scripted upstream: answers are runs, the judge's
protocol, scores by the formula, the ledger, resumption, limits and the contamination guard."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.evals.evaluations import evaluation_create
from chat.evals.report import evaluation_report
from chat.evals.runner import evaluation_run
from chat.evals.tasks import load_tasks
from chat.models import (
    Conversation,
    EvalItem,
    EvalItemStatus,
    EvalJudgement,
    Evaluation,
    EvaluationStatus,
    SpendEntry,
)
from chat.runs import manager
from chat.testing.scripted import ScriptedUpstream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

FAST = {"ttft_ms": 5, "tokens_per_s": 0, "chunk_chars": 400}
SCRIPTS: dict[str, Any] = {
    "sim/atlas": {**FAST, "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
    "sim/borealis": FAST,
    "sim/analyst": FAST,
    "sim/writer": FAST,
    "sim/judge": {**FAST, "verdicts": {"a1": True, "a2": False, "pen": True, "b1": True, "*": False}},
    "sim/repaired": {**FAST, "judge_first_reply": "Sure! Here are my verdicts: a1 met.", "verdicts": {"*": True}},
    "sim/forgetful": {**FAST, "verdicts": {"a2": "omit", "*": True}},
    "sim/broken": {**FAST, "faults": [{"type": "http", "status": 400, "times": -1}]},
    "sim/slow": {"ttft_ms": 300000, "tokens_per_s": 0},  # 3 s at the test's time scale
    "sim/prude": {**FAST, "content": "I'm sorry, but I can't help with that request."},
    "sim/leaky": {
        **FAST,
        "steps": [
            {"tool_calls": [{"name": "web_fetch", "arguments": {"url": "https://huggingface.co/datasets/x/draco"}}]},
            {"content": "Answered without the benchmark."},
        ],
    },
}
TASKS = b"""\
{"id": "t-a", "problem": "Why is the sky blue?", "domain": "Physics", "criteria": [\
{"id": "a1", "requirement": "Mentions Rayleigh scattering", "weight": 3}, \
{"id": "a2", "requirement": "Gives the wavelength dependence", "weight": 1}, \
{"id": "pen", "requirement": "Claims the sky reflects the ocean", "weight": -2}]}
{"id": "t-b", "problem": "What is a prime number?", "domain": "Maths", "criteria": [\
{"id": "b1", "requirement": "Defines a prime", "weight": 2}, {"id": "b2", "requirement": "Gives an example", "weight": 2}]}
"""
# With sim/judge's fixed verdicts: t-a = (3·1 + 1·0 − 2·1) / 4 = 0.25; t-b = 2 / 4 = 0.5.
HAND = {"t-a": 0.25, "t-b": 0.5}
PANEL = "panel:sim/atlas,sim/borealis;analyst=sim/analyst;writer=sim/writer"


@pytest.fixture
async def upstream(settings):
    async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as up:
        settings.OPENROUTER_BASE_URL = up.base_url
        settings.OPENROUTER_API_KEY = "test-key"
        settings.FUSION_ALLOW_SERVER_KEY = True
        settings.FUSION_PROVIDERS = {}
        yield up
    await manager.shutdown()


async def create(user: Any, **kwargs: Any) -> Evaluation:
    options: dict[str, Any] = {
        "tasks": load_tasks(TASKS),
        "config_refs": ["solo:sim/atlas", PANEL],
        "judge_model": "sim/judge",
        "passes": 2,
        **kwargs,
    }
    return await database_sync_to_async(evaluation_create)(user=user, **options)


def chat_requests(up: ScriptedUpstream, model: str | None = None) -> list[dict[str, Any]]:
    return [r for r in up.requests if model is None or r["model"] == model]


def judge_requests(up: ScriptedUpstream, model: str = "sim/judge") -> list[dict[str, Any]]:
    return [r for r in up.requests if r["model"] == model]


@database_sync_to_async
def rows(evaluation: Evaluation) -> tuple[list[EvalItem], list[EvalJudgement]]:
    items = list(EvalItem.objects.filter(evaluation=evaluation).order_by("config_key", "task_id"))
    judgements = list(EvalJudgement.objects.filter(item__evaluation=evaluation).order_by("item_id", "pass_index"))
    return items, judgements


async def test_every_configuration_answers_every_task_and_the_scores_are_the_formulas(alice, upstream):
    evaluation = await create(alice)
    done = await evaluation_run(evaluation.pk)
    assert done.status == EvaluationStatus.COMPLETE, done.stopped_reason
    items, judgements = await rows(evaluation)
    assert len(items) == 4 and {i.status for i in items} == {EvalItemStatus.ANSWERED}
    assert len(judgements) == 8
    by_item = {i.pk: i for i in items}
    for j in judgements:
        assert j.score == pytest.approx(HAND[by_item[j.item_id].task_id])
        assert j.failures == []
    # Solo answers are the member alone: no analyst, no writer.
    assert len(chat_requests(upstream, "sim/writer")) == 2 and len(chat_requests(upstream, "sim/analyst")) == 2
    assert len(chat_requests(upstream, "sim/atlas")) == 4 and len(chat_requests(upstream, "sim/borealis")) == 2
    # The judge protocol: temperature 0, a strict schema, every criterion verbatim with its id.
    calls = judge_requests(upstream)
    assert len(calls) == 8
    first = calls[0]
    assert first["params"]["temperature"] == 0
    assert first["params"]["response_format"]["type"] == "json_schema"
    text = "\n".join(str(m["content"]) for m in first["messages"])
    assert "FUSION_RUBRIC_VERDICTS" in text
    assert '<criterion id="a1">Mentions Rayleigh scattering</criterion>' in text or "b1" in text

    report = await database_sync_to_async(evaluation_report)(evaluation)
    scores = {c["kind"]: c["score"] for c in report["configurations"]}
    assert scores == {"solo": pytest.approx(37.5), "panel": pytest.approx(37.5)}
    # The ledger: every judge call is a row of role judge; the answers are the runs' rows.
    judged = await database_sync_to_async(lambda: list(SpendEntry.objects.filter(role="judge")))()
    assert len(judged) == 8
    assert all(e.uses_server_key for e in judged)  # the server's key paid: its daily cap counts them
    total_judging = sum((j.cost_usd for j in judgements), Decimal(0))
    assert total_judging == sum((e.cost_usd for e in judged), Decimal(0))
    answer_rows = await database_sync_to_async(
        lambda: sum((e.cost_usd for e in SpendEntry.objects.exclude(role="judge")), Decimal(0))
    )()
    assert sum((i.cost_usd for i in items), Decimal(0)) == answer_rows > 0
    # Each answer is a run the user can open: a conversation marked Eval.
    sources = await database_sync_to_async(lambda: set(Conversation.objects.values_list("source", flat=True)))()
    assert sources == {"eval"}


async def test_running_it_again_pays_for_nothing_it_already_has(alice, upstream):
    evaluation = await create(alice)
    await evaluation_run(evaluation.pk)
    before = len(upstream.requests)
    again = await evaluation_run(evaluation.pk)
    assert again.status == EvaluationStatus.COMPLETE
    assert len(upstream.requests) == before


async def test_an_answer_whose_run_finished_while_the_process_died_is_harvested_not_asked_again(alice, upstream):
    evaluation = await create(alice, config_refs=["solo:sim/atlas"], passes=1)
    await evaluation_run(evaluation.pk)

    @database_sync_to_async
    def crash() -> None:  # as if the process died after the run ended, before the item was written
        EvalJudgement.objects.filter(item__evaluation=evaluation).delete()
        EvalItem.objects.filter(evaluation=evaluation).update(status=EvalItemStatus.RUNNING, answer="", cost_usd=0)
        Evaluation.objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.RUNNING)

    await crash()
    answers = len(chat_requests(upstream, "sim/atlas"))
    done = await evaluation_run(evaluation.pk)
    assert done.status == EvaluationStatus.COMPLETE
    assert len(chat_requests(upstream, "sim/atlas")) == answers  # harvested from the stored runs
    items, judgements = await rows(evaluation)
    assert all(i.status == EvalItemStatus.ANSWERED and i.answer and i.cost_usd > 0 for i in items)
    assert len(judgements) == 2


async def test_the_cost_limit_stops_cleanly_and_a_higher_one_resumes(alice, upstream):
    evaluation = await create(alice, max_cost_usd="0.000001", concurrency=1)
    stopped = await evaluation_run(evaluation.pk)
    assert stopped.status == EvaluationStatus.STOPPED
    assert "cost limit" in stopped.stopped_reason
    assert len(upstream.requests) == 0  # the estimate of the first answer was already over it
    evaluation.max_cost_usd = Decimal("50")
    await database_sync_to_async(evaluation.save)()
    done = await evaluation_run(evaluation.pk)
    assert done.status == EvaluationStatus.COMPLETE


async def test_the_daily_spend_limit_stops_the_evaluation(alice, upstream):
    from chat.models import UserLimits

    await database_sync_to_async(UserLimits.objects.update_or_create)(
        user=alice, defaults={"daily_spend_limit_usd": Decimal("0.0001")}
    )
    evaluation = await create(alice, config_refs=["solo:sim/atlas"], passes=1)
    stopped = await evaluation_run(evaluation.pk)
    assert stopped.status == EvaluationStatus.STOPPED
    assert "daily limit" in stopped.stopped_reason
    assert await database_sync_to_async(EvalItem.objects.filter(status=EvalItemStatus.PENDING).count)() == 2


async def test_a_bad_reply_is_repaired_once_with_the_same_call(alice, upstream):
    evaluation = await create(alice, config_refs=["solo:sim/atlas"], judge_model="sim/repaired", passes=1)
    await evaluation_run(evaluation.pk)
    calls = judge_requests(upstream, "sim/repaired")
    assert len(calls) == 4  # two answers, each a first reply and its repair
    repairs = [c["messages"] for c in calls if c["messages"][-2]["role"] == "assistant"]
    assert len(repairs) == 2
    firsts = [c["messages"] for c in calls if c["messages"][-2]["role"] != "assistant"]
    assert all("not valid JSON" in r[-1]["content"] and r[:2] in [f[:2] for f in firsts] for r in repairs)
    _, judgements = await rows(evaluation)
    assert all(j.failures == [] and j.score is not None for j in judgements)
    # Each call is on the ledger, the repairs too.
    assert await database_sync_to_async(SpendEntry.objects.filter(role="judge").count)() == 4


async def test_a_verdict_still_missing_after_the_repair_is_a_judge_failure_not_unmet(alice, upstream):
    evaluation = await create(alice, config_refs=["solo:sim/atlas"], judge_model="sim/forgetful", passes=1)
    await evaluation_run(evaluation.pk)
    items, judgements = await rows(evaluation)
    task_of = {i.pk: i.task_id for i in items}
    (a,) = [j for j in judgements if task_of[j.item_id] == "t-a"]
    (b,) = [j for j in judgements if task_of[j.item_id] == "t-b"]
    assert a.verdicts["a2"]["met"] is None and a.score is None and a.failures
    assert "'a2'" in a.failures[0]
    assert b.score == 1.0 and b.failures == []
    assert len(judge_requests(upstream, "sim/forgetful")) == 3  # t-a was repaired once, in vain


async def test_the_guard_blocks_a_member_fetching_the_benchmark_and_flags_the_task(alice, upstream):
    evaluation = await create(
        alice,
        config_refs=["solo:sim/leaky"],
        passes=1,
        research={"web_tools": True, "max_tool_calls": 2},
        guard_hosts=["huggingface.co"],
    )
    config = evaluation.configs[0]["config"]
    assert "huggingface.co" in config["research"]["excluded_domains"]
    assert "huggingface.co" in config["research"]["blocked_domains"]
    await evaluation_run(evaluation.pk)
    items, _ = await rows(evaluation)
    for item in items:
        assert item.status == EvalItemStatus.ANSWERED
        (flag,) = item.guard_flags
        assert flag["host"] == "huggingface.co" and "blocked" in flag["where"]
    member = await database_sync_to_async(
        lambda: items[0] and __import__("chat.models").models.MemberResponse.objects.get(run_id=items[0].run_id)
    )()
    assert member.tool_calls[0]["ok"] is False  # refused before any connection
    report = await database_sync_to_async(evaluation_report)(evaluation)
    assert report["configurations"][0]["guard_flagged"] == 2


async def test_an_unknown_model_is_refused_before_anything_is_stored(alice, upstream):
    from chat.evals.configs import EvalConfigError

    with pytest.raises(EvalConfigError) as exc:
        await create(alice, config_refs=["solo:sim/nonexistent"])
    assert exc.value.field == "configs" and "sim/nonexistent" in str(exc.value)
    assert await database_sync_to_async(Evaluation.objects.count)() == 0


async def test_a_failed_answer_is_reported_and_not_judged(alice, upstream):
    evaluation = await create(alice, config_refs=["solo:sim/broken"], passes=1)
    done = await evaluation_run(evaluation.pk)
    items, judgements = await rows(evaluation)
    assert {i.status for i in items} == {EvalItemStatus.FAILED} and judgements == []
    assert all(i.error for i in items)
    assert done.status == EvaluationStatus.COMPLETE


async def test_a_refusal_is_reported_as_refused_and_not_judged(alice, upstream):
    evaluation = await create(alice, config_refs=["solo:sim/prude"], passes=1)
    await evaluation_run(evaluation.pk)
    items, judgements = await rows(evaluation)
    assert {i.status for i in items} == {EvalItemStatus.REFUSED} and judgements == []
    report = await database_sync_to_async(evaluation_report)(evaluation)
    assert report["configurations"][0]["refused"] == 2 and report["configurations"][0]["score"] is None


async def test_stopping_cancels_the_runs_in_flight_and_leaves_their_items_to_resume(alice, upstream):
    import asyncio

    from chat.evals.runner import evaluation_is_running_here, evaluation_stop
    from chat.models import Run, RunStatus

    evaluation = await create(alice, config_refs=["solo:sim/slow"], passes=1)
    running = asyncio.ensure_future(evaluation_run(evaluation.pk))
    for _ in range(200):
        await asyncio.sleep(0.02)
        if len(chat_requests(upstream, "sim/slow")) == 2:
            break
    assert evaluation_is_running_here(evaluation.pk)
    assert evaluation_stop(evaluation=evaluation)
    stopped = await asyncio.wait_for(running, 10)
    assert stopped.status == EvaluationStatus.STOPPED and "Stopped by you" in stopped.stopped_reason
    items, _ = await rows(evaluation)
    assert {i.status for i in items} == {EvalItemStatus.PENDING} and all(i.run_id is None for i in items)
    statuses = await database_sync_to_async(lambda: set(Run.objects.values_list("status", flat=True)))()
    assert statuses == {RunStatus.CANCELLED}
    assert not evaluation_is_running_here(evaluation.pk)


async def test_an_evaluation_whose_runs_go_on_in_another_process_is_left_alone(alice, upstream):
    from chat.evals.runner import EvaluationBusy
    from chat.models import Run, RunStatus

    evaluation = await create(alice, config_refs=["solo:sim/atlas"], passes=1)
    await evaluation_run(evaluation.pk)

    @database_sync_to_async
    def elsewhere() -> None:  # a live process (this one's pid, a fresh heartbeat) still runs it
        item = EvalItem.objects.filter(evaluation=evaluation).first()
        EvalItem.objects.filter(pk=item.pk).update(status=EvalItemStatus.RUNNING)
        Run.objects.filter(pk=item.run_id).update(status=RunStatus.RUNNING)

    await elsewhere()
    with pytest.raises(EvaluationBusy, match="another process"):
        await evaluation_run(evaluation.pk)
    fresh = await database_sync_to_async(Evaluation.objects.get)(pk=evaluation.pk)
    assert fresh.stopped_reason == ""
