"""Accepting or rejecting fused answers (chat/feedback.py, POST /c/<pk>/runs/<run>/feedback): who
may judge what, what is stored, the page state that shows it again, and the usage page's
acceptance per preset, checked against the ledger by hand."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import conversations, feedback
from chat.errors import NotFound
from chat.models import AnswerFeedback, Conversation, Preset, Run, RunStatus, SpendEntry, Turn

pytestmark = pytest.mark.django_db

ANSWER = "The sky looks blue because air scatters short wavelengths more."


# --------------------------------------------------------------------------- helpers


def make_run(
    conversation: Conversation,
    *,
    status: str = RunStatus.COMPLETE,
    answer: str = ANSWER,
    created_at: Any = None,
    turn: Turn | None = None,
) -> Run:
    if turn is None:
        turn = Turn.objects.create(conversation=conversation, index=conversation.turns.count(), prompt="Why blue?")
    return Run.objects.create(
        user=conversation.user,
        conversation=conversation,
        turn=turn,
        client_run_id=str(uuid.uuid4()),
        status=status,
        answer=answer,
        created_at=created_at or timezone.now(),
        finished_at=None if status == RunStatus.RUNNING else timezone.now(),
    )


def charge(run: Run, *costs: str, estimated: bool = False) -> None:
    """Ledger rows of a run's calls, one per cost (the writer last)."""
    for i, cost in enumerate(costs):
        SpendEntry.objects.create(
            user=run.user,
            run_id=run.pk,
            conversation_id=run.conversation_id,
            turn_id=run.turn_id,
            role="writer" if i == len(costs) - 1 else "panel",
            slot=None if i == len(costs) - 1 else i,
            model="sim/writer" if i == len(costs) - 1 else f"sim/m{i}",
            status="complete",
            cost_usd=Decimal(cost),
            estimated=estimated,
        )


def url(run: Run, pk: int | None = None) -> str:
    return reverse("run_feedback", kwargs={"pk": pk or run.conversation_id, "run": run.pk})


def post_json(client: Client, target: str, body: Any) -> Any:
    return client.post(target, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def alice_client(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob: Any) -> Client:
    c = Client()
    c.force_login(bob)
    return c


@pytest.fixture
def run(alice: Any) -> Run:
    return make_run(Conversation.objects.create(user=alice))


# --------------------------------------------------------------------------- the service


class TestFeedbackService:
    def test_it_accepts_a_finished_answer_with_its_note_trimmed(self, alice: Any, run: Run) -> None:
        saved = feedback.feedback_set(
            user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=True, note="  Clear and right.\n"
        )
        row = AnswerFeedback.objects.get(run=run)
        assert (row.pk, row.user, row.accepted, row.note) == (saved.pk, alice, True, "Clear and right.")

    def test_a_second_verdict_replaces_the_first(self, alice: Any, run: Run) -> None:
        first = feedback.feedback_set(
            user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=True, note="good"
        )
        second = feedback.feedback_set(
            user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=False, note="wrong on sunsets"
        )
        row = AnswerFeedback.objects.get(run=run)
        assert AnswerFeedback.objects.count() == 1 and row.pk == first.pk == second.pk
        assert (row.accepted, row.note) == (False, "wrong on sunsets")
        assert row.created_at == first.created_at and row.updated_at >= first.updated_at

    def test_clearing_takes_the_verdict_back_and_clearing_nothing_is_fine(self, alice: Any, run: Run) -> None:
        feedback.feedback_set(user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=True)
        feedback.feedback_clear(user=alice, conversation_pk=run.conversation_id, run_id=run.pk)
        assert not AnswerFeedback.objects.exists()
        feedback.feedback_clear(user=alice, conversation_pk=run.conversation_id, run_id=run.pk)

    def test_a_note_over_the_limit_is_refused_naming_the_note_field(self, alice: Any, run: Run) -> None:
        at_limit = "x" * feedback.NOTE_MAX
        feedback.feedback_set(
            user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=True, note=f"  {at_limit}  "
        )
        with pytest.raises(feedback.FeedbackError) as exc:
            feedback.feedback_set(
                user=alice, conversation_pk=run.conversation_id, run_id=run.pk, accepted=False, note=at_limit + "y"
            )
        assert exc.value.field == "note" and "2,001 characters; the limit is 2,000" in str(exc.value)
        row = AnswerFeedback.objects.get(run=run)
        assert (row.accepted, row.note) == (True, at_limit)  # the refused one changed nothing

    @pytest.mark.parametrize(
        ("status", "answer", "says"),
        [
            (RunStatus.RUNNING, "", "still being written"),
            (RunStatus.RUNNING, "Half an ans", "still being written"),
            (RunStatus.ERROR, "", "Only a finished fused answer"),
            (RunStatus.CANCELLED, "Stopped half", "Only a finished fused answer"),
            (RunStatus.COMPLETE, "  \n", "Only a finished fused answer"),
        ],
    )
    def test_only_a_finished_run_with_a_fused_answer_can_be_judged(
        self, alice: Any, status: str, answer: str, says: str
    ) -> None:
        unfinished = make_run(Conversation.objects.create(user=alice), status=status, answer=answer)
        with pytest.raises(feedback.FeedbackError, match=says) as exc:
            feedback.feedback_set(
                user=alice, conversation_pk=unfinished.conversation_id, run_id=unfinished.pk, accepted=True
            )
        assert exc.value.field is None
        assert not AnswerFeedback.objects.exists()

    def test_another_users_conversation_and_run_are_not_found_like_missing_ones(
        self, alice: Any, bob: Any, run: Run
    ) -> None:
        bobs = Conversation.objects.create(user=bob)
        attempts = [
            (run.conversation_id, run.pk),  # alice's conversation and run
            (bobs.pk, run.pk),  # his own conversation, her run
            (run.conversation_id, uuid.uuid4()),  # a run that does not exist
            (999_999, run.pk),
        ]
        for conversation_pk, run_id in attempts:
            with pytest.raises(NotFound):
                feedback.feedback_set(user=bob, conversation_pk=conversation_pk, run_id=run_id, accepted=False)
            with pytest.raises(NotFound):
                feedback.feedback_clear(user=bob, conversation_pk=conversation_pk, run_id=run_id)
        assert not AnswerFeedback.objects.exists()

    def test_a_run_is_found_only_through_its_own_conversation(self, alice: Any, run: Run) -> None:
        other = Conversation.objects.create(user=alice)
        with pytest.raises(NotFound):
            feedback.feedback_set(user=alice, conversation_pk=other.pk, run_id=run.pk, accepted=True)


# --------------------------------------------------------------------------- the endpoint


class TestFeedbackView:
    def test_it_saves_json_and_answers_with_the_verdict(self, alice_client: Client, run: Run) -> None:
        response = post_json(alice_client, url(run), {"accepted": True, "note": " Spot on. "})
        assert response.status_code == 200
        assert response.json() == {"accepted": True, "note": "Spot on."}
        assert AnswerFeedback.objects.get(run=run).accepted is True

    def test_it_saves_a_form_post(self, alice_client: Client, run: Run) -> None:
        response = alice_client.post(url(run), {"accepted": "false", "note": "Missed the point."})
        assert response.status_code == 200 and response.json() == {"accepted": False, "note": "Missed the point."}

    def test_a_change_replaces_and_null_clears(self, alice_client: Client, run: Run) -> None:
        post_json(alice_client, url(run), {"accepted": True, "note": "ok"})
        changed = post_json(alice_client, url(run), {"accepted": False, "note": ""})
        assert changed.json() == {"accepted": False, "note": ""}
        assert AnswerFeedback.objects.get(run=run).accepted is False
        cleared = post_json(alice_client, url(run), {"accepted": None})
        assert cleared.status_code == 200 and cleared.json() == {"accepted": None, "note": ""}
        assert not AnswerFeedback.objects.exists()
        # A form says null with an empty value.
        post_json(alice_client, url(run), {"accepted": True})
        assert alice_client.post(url(run), {"accepted": ""}).json()["accepted"] is None
        assert not AnswerFeedback.objects.exists()

    def test_a_note_too_long_is_a_400_naming_the_note(self, alice_client: Client, run: Run) -> None:
        response = post_json(alice_client, url(run), {"accepted": True, "note": "n" * 2001})
        assert response.status_code == 400
        body = response.json()
        assert body["field"] == "note" and "limit is 2,000" in body["error"]
        assert not AnswerFeedback.objects.exists()

    @pytest.mark.parametrize("body", [{}, {"accepted": "maybe"}, {"accepted": 1}, {"accepted": [True]}])
    def test_anything_but_true_false_or_null_is_a_400_naming_accepted(
        self, alice_client: Client, run: Run, body: dict[str, Any]
    ) -> None:
        response = post_json(alice_client, url(run), body)
        assert response.status_code == 400 and response.json()["field"] == "accepted"

    def test_a_note_that_is_not_text_or_a_body_that_is_not_json_is_a_400(self, alice_client: Client, run: Run) -> None:
        assert post_json(alice_client, url(run), {"accepted": True, "note": 5}).json()["field"] == "note"
        broken = alice_client.post(url(run), data="{not json", content_type="application/json")
        assert broken.status_code == 400 and broken.json() == {"error": "The body is not valid JSON.", "field": None}

    def test_a_run_not_finished_is_a_400_that_says_so(self, alice: Any, alice_client: Client) -> None:
        running = make_run(Conversation.objects.create(user=alice), status=RunStatus.RUNNING, answer="")
        response = post_json(alice_client, url(running), {"accepted": True, "note": ""})
        assert response.status_code == 400
        assert response.json() == {
            "error": "This answer is still being written: accept or reject it once it is done.",
            "field": None,
        }

    def test_a_second_user_gets_404_for_the_first_users_conversation_and_run(
        self, bob: Any, bob_client: Client, run: Run
    ) -> None:
        bobs = Conversation.objects.create(user=bob)
        missing = post_json(bob_client, url(run, pk=999_999), {"accepted": True})
        for target in (url(run), url(run, pk=bobs.pk)):
            response = post_json(bob_client, target, {"accepted": True})
            assert response.status_code == 404
            assert response.json()["field"] is None
            # Nothing tells a missing conversation from someone else's, except the words for which one.
            assert set(response.json()) == set(missing.json())
        # Even a body that would be a 400 is a 404 first: ids reveal nothing.
        assert post_json(bob_client, url(run), {"accepted": "maybe"}).status_code == 404
        assert not AnswerFeedback.objects.exists()

    def test_it_needs_a_csrf_token_like_every_post(self, alice: Any, run: Run) -> None:
        client = Client(enforce_csrf_checks=True)
        client.force_login(alice)
        refused = post_json(client, url(run), {"accepted": True})
        assert refused.status_code == 403 and not AnswerFeedback.objects.exists()
        page = client.get(reverse("conversation", args=[run.conversation_id]))
        token = page.cookies["csrftoken"].value
        ok = client.post(
            url(run), data=json.dumps({"accepted": True}), content_type="application/json", HTTP_X_CSRFTOKEN=token
        )
        assert ok.status_code == 200 and AnswerFeedback.objects.filter(run=run, accepted=True).exists()

    def test_it_needs_a_signed_in_user_and_a_post(self, client: Client, alice: Any, run: Run) -> None:
        anonymous = post_json(client, url(run), {"accepted": True})
        assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
        client.force_login(alice)
        assert client.get(url(run)).status_code == 405
        assert not AnswerFeedback.objects.exists()


# --------------------------------------------------------------------------- shown again on reload


class TestFeedbackInThePageState:
    def test_each_version_of_a_turn_carries_its_own_verdict(self, alice: Any, alice_client: Client) -> None:
        conversation = Conversation.objects.create(user=alice)
        first = make_run(conversation, created_at=timezone.now() - timedelta(minutes=2))
        rewrite = make_run(conversation, turn=first.turn)
        post_json(alice_client, url(first), {"accepted": False, "note": "Too long."})
        [state] = conversations.conversation_turns_state(conversation=conversation)
        assert state["run"] == str(rewrite.pk) and state["feedback"] is None
        assert [v["feedback"] for v in state["versions"]] == [{"accepted": False, "note": "Too long."}, None]

    def test_the_page_and_state_json_show_the_saved_verdict(self, alice_client: Client, run: Run) -> None:
        post_json(alice_client, url(run), {"accepted": True, "note": "Kept <b>this</b>."})
        turns = alice_client.get(reverse("conversation_state", args=[run.conversation_id])).json()["turns"]
        assert turns[0]["feedback"] == {"accepted": True, "note": "Kept <b>this</b>."}
        page = alice_client.get(reverse("conversation", args=[run.conversation_id])).content.decode()
        # In the page's JSON (json_script escapes markup), never as markup.
        assert "Kept \\u003Cb\\u003Ethis\\u003C/b\\u003E." in page and "Kept <b>this</b>" not in page


# --------------------------------------------------------------------------- the usage page


class TestAcceptancePerPreset:
    @pytest.fixture
    def judged(self, alice: Any, bob: Any) -> dict[str, Any]:
        """Alice's judged runs under three kinds of panel, with ledger rows; noise that must not count."""
        careful = Preset.objects.create(user=alice, name="Careful", slug="careful", config={})
        with_preset = Conversation.objects.create(user=alice, preset=careful)
        with_builtin = Conversation.objects.create(user=alice, builtin_preset="quality")
        custom = Conversation.objects.create(user=alice, panel={"members": [{"model": "sim/a"}]})

        def judge(conversation: Conversation, accepted: bool, *costs: str, **kw: Any) -> Run:
            run = make_run(conversation, created_at=kw.pop("created_at", None))
            charge(run, *costs, **kw)
            AnswerFeedback.objects.create(user=conversation.user, run=run, accepted=accepted)
            return run

        judge(with_preset, True, "0.10", "0.05")  # 0.15
        judge(with_preset, False, "0.30")  # 0.30
        judge(with_preset, True, "0.02", "0.01", "0.02")  # 0.05
        judge(with_builtin, False, "0.02")
        judge(custom, True, "0.012", estimated=True)
        # Not counted: an unjudged run, a run judged but older than the period, bob's verdicts.
        charge(make_run(with_preset), "5.00")
        judge(with_preset, True, "7.00", created_at=timezone.now() - timedelta(days=45))
        judge(Conversation.objects.create(user=bob, builtin_preset="quality"), True, "9.00")
        return {"careful": careful}

    def test_it_counts_verdicts_and_ledger_costs_per_preset(self, alice: Any, judged: dict[str, Any]) -> None:
        lines = {line.name: line for line in feedback.feedback_by_preset(user=alice, days=30)}
        assert list(lines) == ["Careful", "Custom panel", "Quality"]  # most judged first, then by name
        careful = lines["Careful"]
        # By hand: 3 judged (2 accepted); 0.15 + 0.30 + 0.05 = 0.50 spent; 0.50 / 2 per accepted answer.
        assert (careful.judged, careful.accepted, careful.rejected) == (3, 2, 1)
        assert careful.acceptance_rate == pytest.approx(2 / 3)
        assert (careful.cost, careful.cost_per_accepted, careful.estimated) == (Decimal("0.50"), Decimal("0.25"), False)
        quality = lines["Quality"]
        assert (quality.judged, quality.accepted, quality.rejected, quality.acceptance_rate) == (1, 0, 1, 0.0)
        assert (quality.cost, quality.cost_per_accepted) == (Decimal("0.02"), None)
        custom = lines["Custom panel"]
        assert (custom.accepted, custom.cost, custom.cost_per_accepted, custom.estimated) == (
            1,
            Decimal("0.012"),
            Decimal("0.012"),
            True,
        )

    def test_the_costs_are_the_ledgers_rows_of_exactly_those_runs(self, alice: Any, judged: dict[str, Any]) -> None:
        runs = AnswerFeedback.objects.filter(
            user=alice, run__created_at__gte=timezone.now() - timedelta(days=29)
        ).values("run_id")
        ledger = sum(e.cost_usd for e in SpendEntry.objects.filter(run_id__in=runs))
        assert sum(line.cost for line in feedback.feedback_by_preset(user=alice)) == ledger == Decimal("0.532")

    def test_a_deleted_preset_counts_as_a_custom_panel(self, alice: Any, judged: dict[str, Any]) -> None:
        judged["careful"].delete()
        lines = {line.name: line for line in feedback.feedback_by_preset(user=alice)}
        assert (lines["Custom panel"].judged, lines["Custom panel"].accepted) == (4, 3)
        assert "Careful" not in lines

    def test_the_usage_page_shows_the_table(self, alice_client: Client, judged: dict[str, Any]) -> None:
        page = alice_client.get(reverse("usage")).content.decode()
        assert "Answers you accepted, per preset" in page
        table = page[page.index("data-acceptance") : page.index("</table>", page.index("data-acceptance"))]
        careful = table[table.index("Careful") : table.index("</tr>", table.index("Careful"))]
        cells = [c.split("</td>")[0].split(">")[-1] for c in careful.split('<td class="num">')[1:]]
        assert cells == ["3", "2", "1", "67%", "$0.50", "$0.25"]
        quality = table[table.index("Quality") : table.index("</tr>", table.index("Quality"))]
        assert "0%" in quality and "No answer accepted yet" in quality
        assert "Custom panel" in table and "≈" in table

    def test_the_usage_page_says_when_there_is_nothing_yet(self, alice_client: Client, run: Run) -> None:
        page = alice_client.get(reverse("usage")).content.decode()
        assert "Answers you accepted, per preset" in page and "data-acceptance" not in page
        assert "You have not accepted or rejected a fused answer in the last 30 days." in page
