"""Versions of a turn and the controls that make them (issue 10, items 5–8).

A turn may have several runs: the original, a member retried alone, a rewrite with another
writer, "Retry all stopped", "Resend prompt", "Fuse what we have". Each is kept and shown as a
version; a follow-up builds on the version the user was looking at.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from chat import conversations as svc
from chat.fusion.pipeline import SKIPPED_MESSAGE
from chat.fusion.types import CallRecord, PanelFailed, ProviderError
from chat.models import Conversation, MemberResponse, Run, RunStatus, Turn
from chat.runs import RunState, history_messages
from tests.test_consumers import PANEL, SCRIPTS, collect_until, open_ws
from tests.test_run_state import live
from tests.conftest import serve_from

ANALYST, WRITER = "sim/analyst", "sim/writer"


@pytest.fixture
async def upstream(settings, scripted):
    return serve_from(settings, await scripted(SCRIPTS, time_scale=0.2), key="test-key", checkpoint_s=0.2)


@pytest.fixture
async def conv(alice):
    return await database_sync_to_async(Conversation.objects.create)(user=alice, panel=PANEL)


async def finished_run(comm: Any, prompt: str = "go") -> str:
    run_id = str(uuid.uuid4())
    await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": prompt})
    events = await collect_until(comm, {"completed", "failed"})
    assert events[-1]["type"] == "completed"
    return run_id


def _stopped_all(run_id: str, *, answered: tuple[int, ...] = (), status: str = RunStatus.CANCELLED) -> None:
    """What Stop all leaves (or, with status interrupted, a server restart): members without answers."""
    Run.objects.filter(client_run_id=run_id).update(status=status, answer="", analysis=None)
    stopped = MemberResponse.objects.filter(run__client_run_id=run_id).exclude(slot__in=answered)
    stopped.update(status="stopped", error_kind="cancelled", error_message="Stopped by the user.", content="partial")


def models_since(upstream: Any, start: int) -> list[str]:
    return sorted(r["model"] for r in upstream.requests[start:])


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestRetryAfterStopAll:
    async def test_retry_on_one_member_reruns_that_member_only(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id)
        before = len(upstream.requests)
        await comm.send_json_to({"type": "retry_member", "run_id": run_id, "slot": 1})
        events = await collect_until(comm, {"completed", "failed"})
        # Only sim/b was asked again: no other member, no analyst, no writer (re-fusing is a choice).
        assert models_since(upstream, before) == ["sim/b"]
        carried = {e["slot"]: e["status"] for e in events if e["type"] == "panel.failed"}
        assert carried == {0: "stopped", 2: "stopped"}
        assert [e["slot"] for e in events if e["type"] == "panel.completed"] == [1]
        assert events[-1]["type"] == "completed" and events[-1]["html"] == ""
        started = next(e for e in events if e["type"] == "run.started")
        new = await database_sync_to_async(Run.objects.get)(pk=started["run"])
        assert new.config["version"] == {"kind": "retry_member", "of": started["replaces"], "slot": 1}
        assert new.answer == "" and new.analysis is None
        await comm.disconnect()

    async def test_retry_after_an_interruption_reruns_that_member_only(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id, status=RunStatus.INTERRUPTED)
        before = len(upstream.requests)
        await comm.send_json_to({"type": "retry_member", "run_id": run_id, "slot": 2})
        await collect_until(comm, {"completed", "failed"})
        assert models_since(upstream, before) == ["sim/c"]
        await comm.disconnect()

    async def test_re_fuse_after_a_member_retry_is_the_users_choice(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id, answered=(0, 2))
        await comm.send_json_to({"type": "retry_member", "run_id": run_id, "slot": 1})
        events = await collect_until(comm, {"completed", "failed"})
        retried = next(e for e in events if e["type"] == "run.started")["client_run_id"]
        before = len(upstream.requests)
        await comm.send_json_to({"type": "rerun", "run_id": retried, "mode": "fuse"})
        events = await collect_until(comm, {"completed", "failed"})
        assert models_since(upstream, before) == [ANALYST, WRITER]
        assert events[-1]["type"] == "completed" and events[-1]["html"]
        await comm.disconnect()

    async def test_retry_all_stopped_reruns_the_stopped_members_and_fuses(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id, answered=(0,))
        before = len(upstream.requests)
        await comm.send_json_to({"type": "rerun", "run_id": run_id, "mode": "retry_stopped"})
        events = await collect_until(comm, {"completed", "failed"})
        assert models_since(upstream, before) == sorted([ANALYST, "sim/b", "sim/c", WRITER])
        assert events[-1]["type"] == "completed"
        await comm.disconnect()

    async def test_fuse_what_we_have_asks_no_member_again(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id, answered=(0,))
        before = len(upstream.requests)
        await comm.send_json_to({"type": "rerun", "run_id": run_id, "mode": "fuse"})
        events = await collect_until(comm, {"completed", "failed"})
        assert models_since(upstream, before) == [ANALYST, WRITER]
        assert {e["slot"]: e["status"] for e in events if e["type"] == "panel.failed"} == {1: "stopped", 2: "stopped"}
        assert events[-1]["type"] == "completed"
        await comm.disconnect()

    async def test_resend_prompt_asks_everyone_again(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id, answered=(0,))
        before = len(upstream.requests)
        await comm.send_json_to({"type": "rerun", "run_id": run_id, "mode": "resend"})
        events = await collect_until(comm, {"completed", "failed"})
        assert models_since(upstream, before) == sorted([ANALYST, "sim/a", "sim/b", "sim/c", WRITER])
        started = next(e for e in events if e["type"] == "run.started")
        assert started["turn"]["index"] == 0, "a new version of the same turn, not a new turn"
        await comm.disconnect()

    async def test_fuse_what_we_have_needs_an_answer(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = await finished_run(comm)
        await database_sync_to_async(_stopped_all)(run_id)
        await comm.send_json_to({"type": "rerun", "run_id": run_id, "mode": "fuse"})
        reply = await collect_until(comm, {"error"})
        assert reply[-1]["code"] == "invalid" and "nothing to fuse" in reply[-1]["message"]
        await comm.send_json_to({"type": "rerun", "run_id": run_id, "mode": "everything"})
        reply = await collect_until(comm, {"error"})
        assert reply[-1]["code"] == "invalid"
        await comm.disconnect()


def _label_two_versions(conv: Conversation) -> str:
    """Give the first turn's two versions answers a history can be told apart by; version one's id."""
    runs = list(Run.objects.filter(conversation=conv).order_by("created_at"))
    Run.objects.filter(pk=runs[0].pk).update(answer="ANSWER OF VERSION ONE")
    Run.objects.filter(pk=runs[1].pk).update(answer="ANSWER OF VERSION TWO")
    return str(runs[0].pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestFollowUpOnTheShownVersion:
    async def test_a_follow_up_builds_on_the_version_the_user_was_looking_at(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        first = await finished_run(comm, "first question")
        await comm.send_json_to({"type": "regenerate", "run_id": first, "writer": WRITER})
        await collect_until(comm, {"completed", "failed"})
        version_one = await database_sync_to_async(_label_two_versions)(conv)
        before = len(upstream.requests)
        await comm.send_json_to(
            {"type": "start", "run_id": str(uuid.uuid4()), "prompt": "and then?", "shown_runs": [version_one]}
        )
        await collect_until(comm, {"completed", "failed"})
        member_request = next(r for r in upstream.requests[before:] if r["model"] == "sim/a")
        history = " ".join(str(m.get("content")) for m in member_request["messages"])
        assert "ANSWER OF VERSION ONE" in history and "ANSWER OF VERSION TWO" not in history
        await comm.disconnect()

    async def test_a_retry_in_a_later_turn_builds_on_the_version_shown_too(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        first = await finished_run(comm, "first question")
        await comm.send_json_to({"type": "regenerate", "run_id": first, "writer": WRITER})
        await collect_until(comm, {"completed", "failed"})
        version_one = await database_sync_to_async(_label_two_versions)(conv)
        second = await finished_run(comm, "second question")
        before = len(upstream.requests)
        await comm.send_json_to({"type": "retry_member", "run_id": second, "slot": 0, "shown_runs": [version_one]})
        await collect_until(comm, {"completed", "failed"})
        member_request = next(r for r in upstream.requests[before:] if r["model"] == "sim/a")
        history = " ".join(str(m.get("content")) for m in member_request["messages"])
        assert "ANSWER OF VERSION ONE" in history and "ANSWER OF VERSION TWO" not in history
        await comm.disconnect()

    async def test_shown_runs_must_be_run_ids(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "x", "shown_runs": ["nope"]})
        reply = await collect_until(comm, {"error"})
        assert reply[-1]["code"] == "invalid" and "shown_runs" in reply[-1]["message"]
        await comm.disconnect()


def _turn_with_versions(user: Any, answers: list[str]) -> tuple[Conversation, list[Run]]:
    conversation = Conversation.objects.create(user=user, panel=PANEL, title="Versions")
    turn = Turn.objects.create(conversation=conversation, index=0, prompt="Which?")
    runs = []
    for i, answer in enumerate(answers):
        run = Run.objects.create(
            user=user,
            turn=turn,
            conversation=conversation,
            client_run_id=f"v{i}-{uuid.uuid4().hex[:8]}",
            status=RunStatus.COMPLETE,
            config={**PANEL, **({"version": {"kind": "rewrite", "of": "x", "writer": "sim/other"}} if i else {})},
            writer_model="sim/writer" if i == 0 else "sim/other",
            answer=answer,
        )
        MemberResponse.objects.create(run=run, slot=0, model="sim/a", status="complete", content=f"member {i}")
        runs.append(run)
    return conversation, runs


@pytest.mark.django_db
class TestVersionsKept:
    def test_history_defaults_to_the_newest_complete_version(self, alice):
        conversation, _ = _turn_with_versions(alice, ["old answer", "new answer"])
        fused, _ = history_messages(conversation, 1, panel_size=1)
        assert fused[-1]["content"] == "new answer"

    def test_history_uses_the_shown_version(self, alice):
        conversation, runs = _turn_with_versions(alice, ["old answer", "new answer"])
        fused, threads = history_messages(conversation, 1, panel_size=1, shown_runs=[str(runs[0].pk)])
        assert fused[-1]["content"] == "old answer"
        assert threads[0][-1]["content"] == "member 0"

    def test_the_page_state_carries_every_version_newest_last(self, alice):
        conversation, runs = _turn_with_versions(alice, ["old answer", "new answer"])
        [state] = svc.conversation_turns_state(conversation=conversation)
        assert state["run"] == str(runs[1].pk), "the newest is shown by default"
        assert [v["run"] for v in state["versions"]] == [str(r.pk) for r in runs]
        assert state["versions"][1]["version"]["kind"] == "rewrite"

    def test_the_markdown_export_lists_every_version(self, alice):
        conversation, _ = _turn_with_versions(alice, ["old answer", "new answer"])
        text = svc.conversation_export_markdown(conversation=conversation)
        assert "old answer" in text and "new answer" in text
        assert "Version 1 of 2" in text and "Version 2 of 2" in text
        assert text.index("old answer") < text.index("new answer")


@pytest.mark.django_db
class TestHomeIsAFreshComposer:
    def test_home_never_continues_the_newest_conversation(self, client, alice):
        Conversation.objects.create(user=alice, title="Something unrelated")
        client.force_login(alice)
        response = client.get(reverse("home"))
        assert response.status_code == 200
        assert b'action="' + reverse("conversation_new").encode() + b'"' in response.content
        assert b"Something unrelated" in response.content  # still one click away, in the sidebar


class TestStopsAreNotFailures:
    def _state(self) -> RunState:
        return live("sim/a", "sim/b")

    def _failed(self, slot: int, kind: str, message: str) -> PanelFailed:
        record = CallRecord(role="panel", model="sim/a", slot=slot)
        return PanelFailed(
            slot=slot, model="sim/a", error=ProviderError(kind=kind, message=message), partial_content="", record=record
        )

    def test_a_member_skipped_by_fuse_now_is_stopped_as_skipped(self):
        state = self._state()
        frame, _ = state.apply(self._failed(0, "cancelled", SKIPPED_MESSAGE))
        assert frame["status"] == "stopped" and frame["error"]["kind"] == "skipped"

    def test_a_user_stop_is_stopped_and_an_error_is_failed(self):
        state = self._state()
        assert state.apply(self._failed(0, "cancelled", "Stopped by the user."))[0]["status"] == "stopped"
        assert state.apply(self._failed(1, "invalid_key", "The provider rejected the key."))[0]["status"] == "failed"
