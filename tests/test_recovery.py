"""Recovery of runs whose process died (chat.runs.recovery): every live member status ends.

A member checkpointed as "searching" or "thinking" used to stay so after recovery; the live
statuses are the engine's ``LIVE_STATUSES``, one list for the run layer, the models and the page.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from chat.fusion.types import LIVE_STATUSES, MemberStatus
from chat.models import Conversation, MemberResponse, Run, RunStatus, Turn
from chat.runs import PROCESS_ID, mark_interrupted, recover_interrupted_runs, stale_after
from chat.runs.state import RunState

LIVE = sorted(s.value for s in LIVE_STATUSES)
ENDED = [MemberStatus.COMPLETE.value, MemberStatus.FAILED.value, MemberStatus.STOPPED.value]
PANEL = {
    "members": [{"model": "sim/a"}, {"model": "sim/b"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}


class TestTheVocabulary:
    def test_the_live_statuses_are_every_status_that_has_not_ended(self) -> None:
        assert set(LIVE) == {s.value for s in MemberStatus} - set(ENDED)
        assert set(LIVE) == {"waiting", "thinking", "streaming", "searching"}

    def test_every_status_is_a_valid_stored_value(self) -> None:
        choices = {value for value, _ in MemberResponse._meta.get_field("status").choices}
        assert choices == {s.value for s in MemberStatus}

    def test_a_dead_process_is_one_silent_for_ten_checkpoints_and_at_least_30_seconds(self, settings: Any) -> None:
        settings.FUSION_CHECKPOINT_INTERVAL_S = 1
        assert stale_after() == timedelta(seconds=30)
        settings.FUSION_CHECKPOINT_INTERVAL_S = 5
        assert stale_after() == timedelta(seconds=50)


def running_run(user: Any, statuses: list[str], *, process_id: str = "dead-host:1:abc") -> Run:
    conversation = Conversation.objects.create(user=user)
    turn = Turn.objects.create(conversation=conversation, index=0, prompt="Why?")
    run = Run.objects.create(
        user=user,
        conversation=conversation,
        turn=turn,
        client_run_id=f"c-{conversation.pk}",
        config=PANEL,
        analyst_model="sim/analyst",
        writer_model="sim/writer",
        process_id=process_id,
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    for slot, status in enumerate(statuses):
        MemberResponse.objects.create(
            run=run,
            slot=slot,
            model=f"sim/{'ab'[slot % 2]}",
            status=status,
            content="partial" if status != MemberStatus.WAITING else "",
        )
    return run


@pytest.mark.django_db
class TestMarkingInterrupted:
    @pytest.mark.parametrize("status", LIVE)
    def test_a_member_in_each_live_status_is_stopped(self, alice: Any, status: str) -> None:
        run = running_run(alice, [status, MemberStatus.COMPLETE.value])
        assert mark_interrupted(Run.objects.filter(pk=run.pk)) == 1
        run.refresh_from_db()
        assert run.status == RunStatus.INTERRUPTED and run.error_kind == "interrupted"
        live, done = run.members.order_by("slot")
        assert (live.status, live.error_kind) == (MemberStatus.STOPPED, "interrupted")
        assert live.content == ("" if status == MemberStatus.WAITING else "partial")  # the partial text stays
        assert (done.status, done.error_kind) == (MemberStatus.COMPLETE, "")

    def test_every_live_status_at_once(self, alice: Any) -> None:
        run = running_run(alice, LIVE)
        mark_interrupted(Run.objects.filter(pk=run.pk))
        assert set(run.members.values_list("status", flat=True)) == {MemberStatus.STOPPED}
        state = RunState.from_rows(Run.objects.get(pk=run.pk)).snapshot()
        assert [m["status"] for m in state["members"]] == ["stopped"] * len(LIVE)

    @pytest.mark.parametrize("status", ENDED)
    def test_a_member_that_had_ended_keeps_its_status(self, alice: Any, status: str) -> None:
        run = running_run(alice, [status])
        mark_interrupted(Run.objects.filter(pk=run.pk))
        assert run.members.get().status == status

    def test_a_finished_run_is_left_alone(self, alice: Any) -> None:
        run = running_run(alice, [MemberStatus.COMPLETE.value])
        Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETE)
        assert mark_interrupted(Run.objects.filter(pk=run.pk)) == 0
        assert Run.objects.get(pk=run.pk).status == RunStatus.COMPLETE

    def test_start_up_recovery_spares_this_processs_runs(self, alice: Any) -> None:
        dead = running_run(alice, [MemberStatus.SEARCHING.value])
        ours = running_run(alice, [MemberStatus.THINKING.value], process_id=PROCESS_ID)
        assert recover_interrupted_runs(all_processes=True) == 1
        assert Run.objects.get(pk=dead.pk).status == RunStatus.INTERRUPTED
        assert Run.objects.get(pk=ours.pk).status == RunStatus.RUNNING
        assert ours.members.get().status == MemberStatus.THINKING
