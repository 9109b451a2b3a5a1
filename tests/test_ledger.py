"""The spend ledger: one row per call that reached a provider, kept apart from conversations;
one estimator for the preset page, the composer and the reservation; a turn's receipt."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.apps import apps
from django.urls import reverse

from chat import conversations, model_catalogue, spend, usage
from chat.models import Conversation, Preset, Run, RunStatus, SpendEntry, Turn
from chat.runs import RunError, manager, run_start
from chat.runs.services import _start_sync
from chat.testing.scripted import ScriptedUpstream
from tests.test_spend import PANEL, SCRIPTS, configure, logged_in
from tests.conftest import serve_from

backfill = __import__("chat.migrations.0007_spend_ledger", fromlist=["backfill_finished_runs"]).backfill_finished_runs


async def run_to_end(user: Any, conversation: Conversation, panel: dict[str, Any]) -> Run:
    frame, _ = await run_start(
        user=user, conversation_id=conversation.pk, client_run_id=str(uuid.uuid4()), prompt="hi", panel=panel
    )
    active = manager.get(uuid.UUID(frame["run"]))
    await active.done.wait()
    return await database_sync_to_async(Run.objects.get)(pk=frame["run"])


def usage_numbers(user: Any) -> tuple[Any, ...]:
    report = usage.usage_report(user=user)
    page = logged_in(user).get(reverse("usage")).content.decode()
    rows = [(d["runs"], d["cost"]) for d in report.days]
    models = [(m.model, m.calls, m.cost) for m in report.models]
    return report.spent_today, report.left_today, report.runs_today, rows, models, spend.usd(report.spent_today) in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestLedgerOutlivesConversations:
    @pytest.fixture
    async def up(self, settings):
        async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as up:
            configure(settings, up)
            settings.FUSION_DAILY_SPEND_LIMIT_USD = 100
            yield up
        await manager.shutdown()

    async def test_every_call_of_a_run_is_one_ledger_row_adding_up_to_its_cost(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        run = await run_to_end(alice, conversation, PANEL)
        rows = await database_sync_to_async(lambda: list(SpendEntry.objects.filter(run_id=run.pk)))()
        assert [(e.role, e.slot, e.model) for e in rows] == [
            ("panel", 0, "sim/a"),
            ("analyst", None, "sim/analyst"),
            ("writer", None, "sim/writer"),
        ]
        assert sum(e.cost_usd for e in rows) == run.cost_usd > 0
        assert all(e.completion_tokens > 0 and e.turn_id == run.turn_id for e in rows)
        assert rows[1].ttft_ms is not None and rows[2].ttft_ms is not None

    async def test_deleting_a_conversation_leaves_spent_today_the_usage_page_and_the_limit_unchanged(
        self, alice, up, settings
    ):
        kept = await database_sync_to_async(Conversation.objects.create)(user=alice)
        await run_to_end(alice, kept, PANEL)
        doomed = await database_sync_to_async(Conversation.objects.create)(user=alice)
        run = await run_to_end(alice, doomed, PANEL)
        before = await database_sync_to_async(usage_numbers)(alice)
        assert before[0] > run.cost_usd > 0 and before[2] == 2

        await database_sync_to_async(conversations.conversation_delete)(conversation=doomed)
        assert not await database_sync_to_async(Run.objects.filter(pk=run.pk).exists)()
        assert await database_sync_to_async(usage_numbers)(alice) == before

        # What the limit allows: exactly what was left before, not a cent more.
        settings.FUSION_DAILY_SPEND_LIMIT_USD = float(before[0] + Decimal("0.01"))

        def reserve(amount: Decimal) -> Decimal:
            from django.db import transaction

            with transaction.atomic():
                return spend.spend_reserve(user=alice, high_usd=amount)

        assert await database_sync_to_async(reserve)(Decimal("0.01")) == Decimal("0.01")
        with pytest.raises(spend.SpendLimitExceeded):
            await database_sync_to_async(reserve)(Decimal("0.010001"))

    async def test_the_final_write_gives_the_turn_its_receipt(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        frame, _ = await run_start(
            user=alice, conversation_id=conversation.pk, client_run_id=str(uuid.uuid4()), prompt="hi", panel=PANEL
        )
        active = manager.get(uuid.UUID(frame["run"]))
        await active.done.wait()
        receipt = active.state.terminal_frame()["receipt"]
        run = await database_sync_to_async(Run.objects.get)(pk=frame["run"])
        assert receipt["calls"] == 3 and receipt["cost_text"] == spend.usd(run.cost_usd)
        assert all(line["kept"] for line in receipt["lines"])
        assert receipt["writer"]["model"] == "sim/writer" and receipt["writer"]["ttft_ms"] is not None


@pytest.mark.django_db
class TestBackfill:
    def test_each_finished_run_gets_one_entry_with_its_cost(self, alice):
        conversation = Conversation.objects.create(user=alice)
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="p")
        common = {"user": alice, "conversation": conversation, "turn": turn, "config": PANEL}
        done = Run.objects.create(
            **common, client_run_id="a", status=RunStatus.COMPLETE, cost_usd=Decimal("0.3"), usage={"estimated": True}
        )
        Run.objects.create(**common, client_run_id="b", status=RunStatus.RUNNING, reserved_usd=Decimal("1"))
        SpendEntry.objects.all().delete()
        backfill(apps, None)
        [entry] = SpendEntry.objects.all()
        assert (entry.run_id, entry.role, entry.cost_usd, entry.estimated) == (done.pk, "run", Decimal("0.3"), True)
        assert spend.spent_today(user=alice) == Decimal("1.3")


# --------------------------------------------------------------------------- receipts


def ledger_row(run: Run, role: str, model: str, cost: str, *, slot: int | None = None, **kw: Any) -> SpendEntry:
    return SpendEntry.objects.create(
        user=run.user,
        run_id=run.pk,
        conversation_id=run.conversation_id,
        turn_id=run.turn_id,
        turn_index=0,
        role=role,
        slot=slot,
        model=model,
        status=kw.pop("status", "complete"),
        cost_usd=Decimal(cost),
        **kw,
    )


@pytest.mark.django_db
class TestReceipt:
    def make_turn(self, user: Any) -> tuple[Conversation, Run, Run]:
        conversation = Conversation.objects.create(user=user)
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="p")
        common = {"user": user, "conversation": conversation, "turn": turn, "config": PANEL}
        first = Run.objects.create(**common, client_run_id="first", status=RunStatus.COMPLETE)
        ledger_row(first, "panel", "sim/a", "0.01", slot=0, status="cancelled", estimated=True, completion_tokens=40)
        ledger_row(first, "panel", "sim/b", "0.02", slot=1, prompt_tokens=10, completion_tokens=200)
        ledger_row(first, "analyst", "sim/analyst", "0.03", ttft_ms=120)
        ledger_row(first, "writer", "sim/writer", "0.04")
        # Retry of member 0: it answers again, the analysis is carried over, the writer rewrites.
        retry = Run.objects.create(**common, client_run_id="retry", status=RunStatus.COMPLETE)
        ledger_row(retry, "panel", "sim/a", "0.05", slot=0)
        ledger_row(retry, "writer", "sim/writer", "0.06", ttft_ms=300, completion_tokens=500)
        return conversation, first, retry

    def test_it_lists_every_call_of_every_run_and_which_ones_the_shown_version_kept(self, alice):
        _, first, retry = self.make_turn(alice)
        receipt = usage.turn_receipt(turn_id=first.turn_id)
        assert receipt is not None
        lines = [(line["attempt"], line["role"], line["slot"], line["kept"]) for line in receipt["lines"]]
        assert lines == [
            (1, "panel", 0, False),
            (1, "panel", 1, True),  # carried over by the retry
            (1, "analyst", None, True),  # carried over by the retry
            (1, "writer", None, False),
            (2, "panel", 0, True),
            (2, "writer", None, True),
        ]
        assert (receipt["runs"], receipt["calls"], receipt["cost_text"], receipt["estimated"]) == (2, 6, "$0.21", True)
        assert receipt["kept_cost_text"] == "$0.16"
        assert receipt["lines"][0]["estimated"] and receipt["lines"][0]["cost_text"] == "$0.01"
        assert (receipt["analyst"]["ttft_ms"], receipt["writer"]["ttft_ms"]) == (120, 300)
        assert receipt["writer"]["completion_tokens"] == 500

    def test_the_shown_version_decides_what_is_kept(self, alice):
        _, first, _ = self.make_turn(alice)
        receipt = usage.turn_receipt(turn_id=first.turn_id, shown_run_id=first.pk)
        assert receipt is not None
        assert [line["kept"] for line in receipt["lines"]] == [False, True, True, True, False, False]

    def test_the_page_state_and_state_json_carry_the_receipt_of_all_runs_of_the_turn(self, alice):
        conversation, first, retry = self.make_turn(alice)
        [state] = conversations.conversation_turns_state(conversation=conversation)
        assert state["receipt"]["cost_text"] == "$0.21" and state["receipt"]["runs"] == 2
        response = logged_in(alice).get(reverse("conversation_state", args=[conversation.pk]))
        assert response.json()["turns"][0]["receipt"]["calls"] == 6

    def test_a_turn_without_calls_has_no_receipt(self, alice):
        conversation = Conversation.objects.create(user=alice)
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="p")
        assert usage.turn_receipt(turn_id=turn.pk) is None


# --------------------------------------------------------------------------- one estimator

BIG = {
    "members": [{"model": "sim/a", "max_tokens": 200000} for _ in range(8)],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
    "follow_up_mode": "fused",
}


@pytest.mark.django_db
class TestOneEstimator:
    @pytest.fixture
    def preset(self, alice, settings, scripted_thread):
        serve_from(settings, scripted_thread(SCRIPTS), checkpoint_s=0.05)
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 1000
        return Preset.objects.create(user=alice, name="Big", config=BIG)

    def test_the_preset_page_the_composer_and_the_reservation_show_the_same_numbers(self, alice, preset):
        prompt = "x" * 4000  # the preset page's prompt of 1000 tokens
        client = logged_in(alice)
        estimate = client.get(reverse("estimate"), {"chars": len(prompt), "preset": str(preset.pk)}).json()
        _, high = model_catalogue.estimate_panel_cost(BIG, prompt_tokens=1000)
        assert high > 1  # 8 answers of up to 200000 tokens
        assert estimate["text"].endswith(spend.usd(high))
        page = client.get(reverse("preset_detail", args=[preset.pk])).content.decode()
        assert estimate["text"] in page

        conversation = Conversation.objects.create(user=alice)
        run, _ = _start_sync(
            user=alice,
            conversation_id=conversation.pk,
            client_run_id="big",
            prompt=prompt,
            panel_data=None,
            follow_up_mode=None,
            preset_ref=str(preset.pk),
        )
        assert run.reserved_usd == spend.to_decimal(high)

    def test_the_composer_says_what_is_left_today_and_when_the_run_would_not_fit(self, alice, preset, settings):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 2
        client = logged_in(alice)
        estimate = client.get(reverse("estimate"), {"chars": 4000, "preset": str(preset.pk)}).json()
        assert (estimate["left_text"], estimate["fits"]) == ("$2.00", False)
        conversation = Conversation.objects.create(user=alice)
        with pytest.raises(RunError) as exc:
            _start_sync(
                user=alice,
                conversation_id=conversation.pk,
                client_run_id="big",
                prompt="x" * 4000,
                panel_data=None,
                follow_up_mode=None,
                preset_ref=str(preset.pk),
            )
        assert estimate["text"].split("–")[1] in exc.value.message

    def test_another_users_preset_is_not_estimated(self, bob, preset):
        response = logged_in(bob).get(reverse("estimate"), {"chars": 10, "preset": str(preset.pk)})
        assert response.status_code == 404
