"""Spending: the daily limit refuses a run up front with the amount left, two runs at once cannot
overspend together, runs that end give back their reservation, and the usage page adds it up."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import model_catalogue, keys, spend, usage
from chat.testing.scripted import ScriptedUpstream
from chat.models import Conversation, Run, RunStatus, SpendEntry, Turn, UserLimits
from chat.runs import RunError, manager, mark_interrupted, run_start, run_stop
from chat.runs.services import _start_sync
from tests.conftest import serve_from

PRICING = {"prompt": "0.00001", "completion": "0.0001"}
SCRIPTS: dict[str, Any] = {
    "sim/a": {"pricing": PRICING, "ttft_ms": 5, "tokens_per_s": 5000},
    "sim/slow": {"pricing": PRICING, "ttft_ms": 5, "tokens_per_s": 20, "chunk_chars": 4, "content": "slow " * 400},
    "sim/broken": {"pricing": PRICING, "faults": [{"type": "http", "status": 500, "times": -1}]},
    "sim/analyst": {"pricing": PRICING},
    "sim/writer": {"pricing": PRICING, "tokens_per_s": 5000},
}
PANEL = {"members": [{"model": "sim/a"}], "analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}


def configure(settings: Any, up: ScriptedUpstream) -> None:
    serve_from(settings, up, checkpoint_s=0.05)


@pytest.fixture
def upstream(settings, scripted_thread):
    return serve_from(settings, scripted_thread(SCRIPTS), checkpoint_s=0.05)


def high_estimate(panel: dict[str, Any] = PANEL, prompt: str = "hi") -> Decimal:
    """What a run of *panel* reserves for *prompt* (the catalogue must be cached)."""
    _, high = model_catalogue.estimate_panel_cost(panel, prompt_tokens=model_catalogue.tokens_of_chars(len(prompt)))
    return spend.to_decimal(high)


def start(user: Any, conversation: Conversation, panel: dict[str, Any] = PANEL, prompt: str = "hi") -> Run:
    run, _ = _start_sync(
        user=user,
        conversation_id=conversation.pk,
        client_run_id=str(uuid.uuid4()),
        prompt=prompt,
        panel_data=panel,
        follow_up_mode=None,
    )
    return run


def finished_run(
    user: Any,
    *,
    cost: str | None,
    days_ago: int = 0,
    status: str = RunStatus.COMPLETE,
    reserved: str = "0",
    server_key: bool = False,
    model: str = "sim/a",
    role: str = "panel",
) -> Run:
    conversation = Conversation.objects.create(user=user)
    turn = Turn.objects.create(conversation=conversation, index=0, prompt="p")
    when = timezone.now() - timedelta(days=days_ago)
    run = Run.objects.create(
        user=user,
        conversation=conversation,
        turn=turn,
        client_run_id=str(uuid.uuid4()),
        config=PANEL,
        status=status,
        created_at=when,
        cost_usd=None if cost is None else Decimal(cost),
        reserved_usd=Decimal(reserved),
        uses_server_key=server_key,
    )
    if status != RunStatus.RUNNING and cost is not None:  # what its final write puts in the ledger
        entry(run, model=model, cost=cost, role=role, when=when)
    return run


def entry(run: Run, *, model: str, cost: str, role: str = "panel", when: Any = None, **kw: Any) -> SpendEntry:
    """One ledger row of *run*."""
    return SpendEntry.objects.create(
        user=run.user,
        run_id=run.pk,
        conversation_id=run.conversation_id,
        turn_id=run.turn_id,
        turn_index=0,
        role=role,
        model=model,
        status="complete",
        cost_usd=Decimal(cost),
        uses_server_key=run.uses_server_key,
        created_at=when or run.created_at,
        **kw,
    )


# --------------------------------------------------------------------------- the limit


@pytest.mark.django_db
class TestLimit:
    def test_the_limit_comes_from_settings_unless_the_admin_overrides_it(self, alice, settings):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 5.0
        assert spend.daily_limit(user=alice) == Decimal("5")
        UserLimits.objects.create(user=alice, daily_spend_limit_usd=Decimal("0.5"))
        assert spend.daily_limit(user=alice) == Decimal("0.5")

    def test_zero_means_no_limit(self, alice, bob, settings):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0
        assert spend.daily_limit(user=alice) is None
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 5.0
        UserLimits.objects.create(user=bob, daily_spend_limit_usd=Decimal("0"))
        assert spend.daily_limit(user=bob) is None

    def test_spent_today_is_todays_finished_costs_plus_what_running_runs_hold(self, alice, bob):
        finished_run(alice, cost="0.05")
        finished_run(alice, cost="0.01", status=RunStatus.CANCELLED)
        finished_run(alice, cost="10", days_ago=1)  # yesterday does not count today
        finished_run(alice, cost=None, status=RunStatus.RUNNING, reserved="0.02")
        finished_run(bob, cost="3")
        assert spend.spent_today(user=alice) == Decimal("0.08")

    def test_a_run_that_would_exceed_the_limit_is_refused_up_front_with_the_amount_left(
        self, alice, upstream, settings
    ):
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0.5
        finished_run(alice, cost="0.4")
        high = high_estimate()
        assert high > Decimal("0.1")
        conversation = Conversation.objects.create(user=alice)
        with pytest.raises(RunError) as exc:
            start(alice, conversation)
        assert exc.value.code == "spend_limit"
        assert exc.value.message == (
            f"This run could cost up to {spend.usd(high)}; you have $0.10 left today (daily limit $0.50)."
        )
        assert upstream.requests == [] and not conversation.turns.exists()

    def test_a_run_that_fits_reserves_its_high_estimate(self, alice, upstream, settings):
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 5
        run = start(alice, Conversation.objects.create(user=alice))
        assert run.reserved_usd == high_estimate() and Run.objects.get().reserved_usd == high_estimate()
        assert spend.spent_today(user=alice) == high_estimate()

    def test_without_a_limit_nothing_is_refused(self, alice, upstream, settings):
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0
        finished_run(alice, cost="1000")
        assert start(alice, Conversation.objects.create(user=alice)).reserved_usd > 0

    @pytest.mark.django_db(transaction=True)  # outside any transaction, as a caller that forgot one
    def test_reservations_are_made_only_inside_the_runs_transaction(self, alice):
        with pytest.raises(RuntimeError):
            spend.spend_reserve(user=alice, high_usd=1)


@pytest.mark.django_db
class TestServerCap:
    """FUSION_SERVER_DAILY_LIMIT_USD: what the server's keys may spend per day across all users."""

    def test_a_run_paid_with_the_server_key_is_marked_and_one_with_an_own_key_is_not(
        self, alice, bob, upstream, settings
    ):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0
        keys.key_set(user=bob, provider="openrouter", raw="bobs-own-key-1234")
        assert start(alice, Conversation.objects.create(user=alice)).uses_server_key
        assert not start(bob, Conversation.objects.create(user=bob)).uses_server_key
        assert list(Run.objects.order_by("created_at").values_list("uses_server_key", flat=True)) == [True, False]

    def test_a_server_key_run_that_does_not_fit_what_is_left_of_the_cap_is_refused(
        self, alice, bob, upstream, settings
    ):
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0  # no per-user limit: only the server's cap applies
        high = high_estimate()
        settings.FUSION_SERVER_DAILY_LIMIT_USD = float(high * Decimal("1.5"))
        finished_run(bob, cost=str(high * Decimal("0.8")), server_key=True)
        finished_run(bob, cost="1000", server_key=False)  # paid with his own key: not the server's
        assert spend.server_spent_today() == high * Decimal("0.8")
        with pytest.raises(RunError) as exc:
            start(alice, Conversation.objects.create(user=alice))
        assert exc.value.code == "spend_limit"
        assert exc.value.message.startswith("The server's shared key has reached today's limit")
        assert exc.value.message.endswith("Add your own key in Settings → Keys.")
        assert upstream.requests == []

        keys.key_set(user=alice, provider="openrouter", raw="alices-own-key-1234")
        assert not start(alice, Conversation.objects.create(user=alice)).uses_server_key

    def test_without_a_cap_the_server_key_is_limited_per_user_only(self, alice, bob, upstream, settings):
        model_catalogue.catalogue_refresh("openrouter")
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0
        settings.FUSION_SERVER_DAILY_LIMIT_USD = 0
        finished_run(bob, cost="1000", server_key=True)
        assert start(alice, Conversation.objects.create(user=alice)).uses_server_key


@pytest.mark.django_db(transaction=True)
class TestConcurrentRuns:
    def test_two_runs_started_at_once_cannot_overspend_together(self, alice, settings, monkeypatch):
        up = ScriptedUpstream(SCRIPTS, time_scale=0.01).start_in_thread()
        try:
            configure(settings, up)
            model_catalogue.catalogue_refresh("openrouter")
            high = high_estimate()
            # Each run alone fits; both together do not.
            settings.FUSION_DAILY_SPEND_LIMIT_USD = float(high * Decimal("1.5"))
            conversations = [Conversation.objects.create(user=alice) for _ in range(2)]

            # Widen the window between reading what was spent and reserving: without the lock,
            # both runs would read "nothing spent" and both would be let through.
            real_spent_today = spend.spent_today

            def slow_spent_today(**kw: Any) -> Decimal:
                value = real_spent_today(**kw)
                time.sleep(0.3)
                return value

            monkeypatch.setattr(spend, "spent_today", slow_spent_today)
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def attempt(conversation: Conversation) -> None:
                try:
                    barrier.wait(5)
                    start(alice, conversation)
                    outcomes.append("started")
                except RunError as exc:
                    outcomes.append(exc.code)
                finally:
                    connections.close_all()

            threads = [threading.Thread(target=attempt, args=(c,)) for c in conversations]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(outcomes) == ["spend_limit", "started"]
            assert Run.objects.count() == 1
            assert spend.spent_today(user=alice) == high <= Decimal(str(settings.FUSION_DAILY_SPEND_LIMIT_USD))
            assert up.requests == []
        finally:
            up.stop()

    def test_two_users_on_the_server_key_cannot_overspend_its_cap_together(self, alice, bob, settings, monkeypatch):
        up = ScriptedUpstream(SCRIPTS, time_scale=0.01).start_in_thread()
        try:
            configure(settings, up)
            model_catalogue.catalogue_refresh("openrouter")
            high = high_estimate()
            settings.FUSION_DAILY_SPEND_LIMIT_USD = 0  # each user's own limit does not stop them
            settings.FUSION_SERVER_DAILY_LIMIT_USD = float(high * Decimal("1.5"))  # one run fits, two do not

            # Each user locks only their own limits row: without the server-wide lock, both would
            # read "the server spent nothing" in this window and both would be let through.
            real = spend.server_spent_today

            def slow_server_spent_today() -> Decimal:
                value = real()
                time.sleep(0.3)
                return value

            monkeypatch.setattr(spend, "server_spent_today", slow_server_spent_today)
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def attempt(user: Any) -> None:
                try:
                    conversation = Conversation.objects.create(user=user)
                    barrier.wait(5)
                    start(user, conversation)
                    outcomes.append("started")
                except RunError as exc:
                    outcomes.append(exc.code)
                finally:
                    connections.close_all()

            threads = [threading.Thread(target=attempt, args=(u,)) for u in (alice, bob)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(outcomes) == ["spend_limit", "started"]
            assert Run.objects.count() == 1 and spend.server_spent_today() == high
        finally:
            up.stop()


# --------------------------------------------------------------------------- releasing reservations


async def run_to_end(user: Any, conversation: Conversation, panel: dict[str, Any]) -> Run:
    frame, _ = await run_start(
        user=user, conversation_id=conversation.pk, client_run_id=str(uuid.uuid4()), prompt="hi", panel=panel
    )
    await manager.get(uuid.UUID(frame["run"])).done.wait()
    return await database_sync_to_async(Run.objects.get)(pk=frame["run"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestRelease:
    @pytest.fixture
    async def up(self, settings):
        async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as up:
            configure(settings, up)
            settings.FUSION_DAILY_SPEND_LIMIT_USD = 100
            yield up
        await manager.shutdown()

    async def test_a_finished_run_turns_its_reservation_into_the_reported_cost(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        run = await run_to_end(alice, conversation, PANEL)
        assert run.status == RunStatus.COMPLETE
        assert run.reserved_usd == 0 and run.cost_usd == spend.to_decimal(run.usage["cost"]) > 0
        assert await database_sync_to_async(spend.spent_today)(user=alice) == run.cost_usd

    async def test_a_cancelled_run_gives_back_what_it_reserved(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        client_run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/slow"}]}
        frame, _ = await run_start(
            user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, prompt="hi", panel=panel
        )
        running = await database_sync_to_async(Run.objects.get)(pk=frame["run"])
        assert running.reserved_usd > 0
        assert await database_sync_to_async(spend.spent_today)(user=alice) == running.reserved_usd
        await asyncio.sleep(0.1)
        await run_stop(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id)
        await manager.get(running.pk).done.wait()
        run = await database_sync_to_async(Run.objects.get)(pk=running.pk)
        assert run.status == RunStatus.CANCELLED and run.reserved_usd == 0
        assert await database_sync_to_async(spend.spent_today)(user=alice) == (run.cost_usd or 0) < running.reserved_usd

    async def test_a_failed_run_gives_back_what_it_reserved(self, alice, up):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        run = await run_to_end(alice, conversation, {**PANEL, "members": [{"model": "sim/broken"}]})
        assert run.status == RunStatus.ERROR and run.error_kind == "all_panels_failed"
        assert run.reserved_usd == 0 and (run.cost_usd or 0) == 0
        assert await database_sync_to_async(spend.spent_today)(user=alice) == 0


@pytest.mark.django_db
class TestInterrupted:
    def test_a_run_whose_process_died_gives_back_its_reservation(self, alice):
        run = finished_run(alice, cost=None, status=RunStatus.RUNNING, reserved="0.3")
        assert spend.spent_today(user=alice) == Decimal("0.3")
        assert mark_interrupted(Run.objects.filter(pk=run.pk)) == 1
        run.refresh_from_db()
        assert (run.status, run.reserved_usd) == (RunStatus.INTERRUPTED, 0)
        assert spend.spent_today(user=alice) == 0


# --------------------------------------------------------------------------- the usage page


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
class TestUsagePage:
    def make_history(self, user: Any) -> None:
        today = finished_run(user, cost=None)
        entry(today, model="sim/a", cost="0.1", prompt_tokens=100, completion_tokens=50)
        entry(today, model="sim/analyst", cost="0.05", role="analyst", prompt_tokens=300, completion_tokens=80)
        entry(today, model="sim/writer", cost="0.15", role="writer", prompt_tokens=400, completion_tokens=90)
        # A regenerated answer for the same turn reused member 0's answer: only the writer was called.
        again = Run.objects.create(
            user=user,
            conversation=today.conversation,
            turn=today.turn,
            client_run_id="again",
            config=PANEL,
            status=RunStatus.COMPLETE,
            cost_usd=Decimal("0.15"),
            created_at=today.created_at + timedelta(seconds=1),
        )
        entry(again, model="sim/writer", cost="0.15", role="writer", prompt_tokens=400, completion_tokens=90)
        finished_run(user, cost="1.25", days_ago=3, model="", role="run")  # backfilled: no model
        finished_run(user, cost="99", days_ago=40)  # outside the 30 days

    def test_it_needs_a_signed_in_user(self, client):
        response = client.get(reverse("usage"))
        assert response.status_code == 302 and reverse("login") in response["Location"]

    def test_it_adds_up_spend_per_day_and_per_model(self, alice, settings):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 2
        self.make_history(alice)
        report = usage.usage_report(user=alice)
        assert [(d["runs"], d["cost"]) for d in report.days] == [(2, Decimal("0.45")), (1, Decimal("1.25"))]
        assert (report.runs, report.cost, report.runs_today) == (3, Decimal("1.70"), 2)
        assert (report.spent_today, report.left_today, report.limit) == (Decimal("0.45"), Decimal("1.55"), Decimal("2"))
        by_model = {m.model: m for m in report.models}
        assert (by_model["sim/a"].calls, by_model["sim/a"].cost) == (1, Decimal("0.1"))  # the copy is not counted
        assert (by_model["sim/writer"].calls, by_model["sim/writer"].prompt_tokens) == (2, 800)
        assert [m.model for m in report.models] == ["earlier runs", "sim/writer", "sim/a", "sim/analyst"]

        page = logged_in(alice).get(reverse("usage")).content.decode()
        for text in ("$0.45", "$1.55", "$2.00 daily limit", "$1.25", "sim/writer", "sim/analyst"):
            assert text in page, text
        assert "$99" not in page

    def test_bob_sees_only_his_own_usage(self, alice, bob):
        self.make_history(alice)
        page = logged_in(bob).get(reverse("usage")).content.decode()
        assert "sim/writer" not in page and "$1.25" not in page and "No runs in the last 30 days." in page

    def test_estimated_costs_are_counted_and_marked(self, alice):
        run = finished_run(alice, cost=None, status=RunStatus.CANCELLED)
        entry(run, model="sim/slow", cost="0.04", prompt_tokens=10, completion_tokens=400, estimated=True)
        report = usage.usage_report(user=alice)
        assert (report.days[0]["cost"], report.days[0]["estimated"]) == (Decimal("0.04"), 1)
        assert [(m.model, m.cost, m.estimated) for m in report.models] == [("sim/slow", Decimal("0.04"), True)]
        page = logged_in(alice).get(reverse("usage")).content.decode()
        assert page.count("≈ </span>$0.04") == 2  # the day and the model

    def test_no_limit_is_said_plainly(self, alice, settings):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 0
        assert "No limit" in logged_in(alice).get(reverse("usage")).content.decode()
