"""The conversation websocket over Channels' WebsocketCommunicator, against the scripted upstream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from chat.models import Conversation, MemberResponse, Run, RunStatus
from fusionsite.asgi import application
from tests.conftest import serve_from

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

PANEL = {
    "members": [{"model": "sim/a"}, {"model": "sim/b"}, {"model": "sim/c"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}
SCRIPTS: dict[str, Any] = {
    "sim/a": {"ttft_ms": 50, "tokens_per_s": 400, "chunk_chars": 8},
    "sim/b": {"ttft_ms": 80, "tokens_per_s": 300, "chunk_chars": 8},
    "sim/c": {"ttft_ms": 100, "tokens_per_s": 300, "chunk_chars": 8},
    "sim/slow": {"ttft_ms": 100, "tokens_per_s": 5, "chunk_chars": 4, "content": "slow " * 200},
    "sim/analyst": {},
    "sim/writer": {"ttft_ms": 20, "tokens_per_s": 500},
}


@pytest.fixture
async def upstream(settings, scripted):
    # These users have no key of their own: the server's is allowed.
    return serve_from(settings, await scripted(SCRIPTS, time_scale=0.2), key="test-key", checkpoint_s=0.2)


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def connect(user: Any, conversation_id: int, *, origin: bytes = b"http://127.0.0.1") -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
    if user is not None:
        cookie = await database_sync_to_async(_session_cookie)(user)
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/conversations/{conversation_id}/", headers=headers)


async def open_ws(user: Any, conversation_id: int) -> WebsocketCommunicator:
    comm = await connect(user, conversation_id)
    connected, code = await comm.connect()
    assert connected, code
    first = await comm.receive_json_from(timeout=5)
    assert first["type"] == "snapshot"
    return comm


def flatten(frame: dict[str, Any]) -> list[dict[str, Any]]:
    return frame["events"] if frame["type"] == "batch" else [frame]


async def collect_until(comm: WebsocketCommunicator, types: set[str], timeout: float = 15) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await comm.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        for event in flatten(frame):
            events.append(event)
            if event["type"] in types:
                return events


def rebuild(events: list[dict[str, Any]], stream: tuple[str, int | None]) -> str:
    """A stream's text as a client rebuilds it from deltas with offsets."""
    kind, slot = stream
    text = ""
    for e in events:
        if e["type"] == kind and e.get("slot") == slot:
            assert e["offset"] <= len(text), "a gap in the deltas"
            text = text[: e["offset"]] + e["delta"] if e["offset"] < len(text) else text + e["delta"]
    return text


@pytest.fixture
async def conv(alice):
    return await database_sync_to_async(Conversation.objects.create)(user=alice, panel=PANEL)


async def refused_with(comm: WebsocketCommunicator) -> int:
    """The close code of a socket the server accepts only to close at once (so a browser sees it)."""
    connected, _ = await comm.connect()
    assert connected
    message = await comm.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return int(message["code"])


class TestHandshake:
    async def test_it_rejects_anonymous_users(self, conv):
        comm = await connect(None, conv.pk)
        assert await refused_with(comm) == 4401

    async def test_it_rejects_a_foreign_origin(self, alice, conv):
        comm = await connect(alice, conv.pk, origin=b"http://evil.example")
        connected, _ = await comm.connect()
        assert not connected

    async def test_another_users_conversation_is_not_found(self, bob, conv):
        comm = await connect(bob, conv.pk)
        assert await refused_with(comm) == 4404

    async def test_a_missing_conversation_is_not_found_the_same_way(self, alice):
        comm = await connect(alice, 999999)
        assert await refused_with(comm) == 4404


class TestInbox:
    """On the in-memory layer a socket's frames go straight into its consumer's inbox."""

    async def test_frames_reach_the_socket_and_the_listener_goes_with_it(self, alice, conv):
        layer = get_channel_layer()
        comm = await open_ws(alice, conv.pk)
        [channel] = [c for c in layer._listeners]  # this socket's, and only it
        assert channel not in layer.channels  # nothing is queued for receive()
        await layer.group_send(f"conv_{conv.pk}", {"type": "run.frame", "text": '{"type":"ping.test"}'})
        assert await comm.receive_json_from(timeout=5) == {"type": "ping.test"}
        await comm.disconnect()
        assert channel not in layer._listeners

    async def test_a_full_inbox_drops_frames_for_that_socket_only(self, alice, conv, monkeypatch):
        layer = get_channel_layer()
        monkeypatch.setattr(layer, "get_capacity", lambda channel: 2)
        comm = await open_ws(alice, conv.pk)
        [channel] = list(layer._listeners)
        deliver = layer._listeners[channel]
        deliver({"type": "run.frame", "text": "1"})
        deliver({"type": "run.frame", "text": "2"})
        with pytest.raises(ChannelFull):
            deliver({"type": "run.frame", "text": "3"})
        layer.group_send_nowait(f"conv_{conv.pk}", {"type": "run.frame", "text": "4"})  # skipped, no error
        assert [await comm.receive_from(timeout=5), await comm.receive_from(timeout=5)] == ["1", "2"]
        assert await comm.receive_nothing(timeout=0.2)
        await comm.disconnect()


class TestValidation:
    @pytest.mark.parametrize(
        "raw, code",
        [
            ("not json", "invalid"),
            ("[1, 2]", "invalid"),
            ('{"no": "type"}', "invalid"),
            ('{"type": "explode"}', "invalid"),
            ('{"type": "start", "run_id": "nope", "prompt": "hi"}', "invalid"),
            ('{"type": "start", "run_id": "%s", "prompt": 5}' % uuid.uuid4(), "invalid"),
            ('{"type": "start", "run_id": "%s", "prompt": ""}' % uuid.uuid4(), "invalid"),
            ('{"type": "stop_member", "run_id": "%s", "slot": "x"}' % uuid.uuid4(), "invalid"),
            ('{"type": "stop", "run_id": "%s"}' % uuid.uuid4(), "not_found"),
            ('{"type": "regenerate", "run_id": "%s"}' % uuid.uuid4(), "invalid"),
        ],
    )
    async def test_a_bad_frame_gets_an_error_frame_and_the_socket_stays_open(self, alice, conv, raw, code):
        comm = await open_ws(alice, conv.pk)
        await comm.send_to(text_data=raw)
        frame = await comm.receive_json_from(timeout=5)
        assert frame["type"] == "error"
        assert frame["code"] == code
        await comm.send_json_to({"type": "ping"})
        assert (await comm.receive_json_from(timeout=5))["type"] == "pong"
        await comm.disconnect()

    async def test_an_oversized_frame_is_refused(self, alice, conv, settings):
        settings.FUSION_MAX_WS_MESSAGE_BYTES = 1000
        comm = await open_ws(alice, conv.pk)
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "x" * 2000})
        frame = await comm.receive_json_from(timeout=5)
        assert (frame["type"], frame["code"]) == ("error", "too_large")
        assert await database_sync_to_async(Run.objects.count)() == 0
        await comm.disconnect()

    async def test_a_too_long_prompt_is_refused_with_the_limit(self, alice, conv, settings):
        settings.FUSION_MAX_PROMPT_CHARS = 10
        comm = await open_ws(alice, conv.pk)
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "x" * 11})
        frame = await comm.receive_json_from(timeout=5)
        assert frame["code"] == "invalid"
        assert "limit is 10" in frame["message"]
        await comm.disconnect()

    async def test_an_invalid_panel_is_refused_with_a_reason(self, alice, conv):
        comm = await open_ws(alice, conv.pk)
        panel = {**PANEL, "members": [{"model": "sim/a"}] * 9}
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "hi", "panel": panel})
        frame = await comm.receive_json_from(timeout=5)
        assert frame["code"] == "invalid"
        assert "at most 8" in frame["message"]
        await comm.disconnect()


class TestRuns:
    async def test_a_run_streams_members_analysis_and_fused_answer(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "Why is the sky blue?"})
        events = await collect_until(comm, {"completed", "failed"})
        types = [e["type"] for e in events]
        assert types[0] == "run.started"
        assert types[-1] == "completed", events[-1]
        assert {e["slot"] for e in events if e["type"] == "panel.completed"} == {0, 1, 2}
        analysis = next(e for e in events if e["type"] == "analysis.completed")
        assert set(analysis["analysis"]) == {
            "consensus",
            "contradictions",
            "partial_coverage",
            "unique_insights",
            "blind_spots",
        }
        assert types.index("analysis.completed") < types.index("final.started")

        run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
        members = await database_sync_to_async(lambda: list(MemberResponse.objects.filter(run=run)))()
        assert run.status == RunStatus.COMPLETE
        assert run.answer and rebuild(events, ("final.delta", None)) == run.answer
        for m in members:
            assert m.status == "complete"
            assert rebuild(events, ("panel.delta", m.slot)) == m.content
        assert run.usage["cost"] > 0
        conv_after = await database_sync_to_async(Conversation.objects.get)(pk=conv.pk)
        assert conv_after.title == "Why is the sky blue?"
        await comm.disconnect()

    async def test_a_run_whose_rendering_breaks_still_ends_and_is_written(self, alice, conv, upstream, monkeypatch):
        from chat.runs.rendering import LiveRendering

        async def broken(self: LiveRendering) -> None:
            raise RuntimeError("a bug in the live rendering")

        monkeypatch.setattr(LiveRendering, "drain", broken)
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "hi"})
        events = await collect_until(comm, {"completed", "failed"})
        assert events[-1]["type"] == "failed" and events[-1]["kind"] == "internal", events[-1]
        run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
        assert run.status == RunStatus.ERROR  # the final write happened: nothing stays "running"
        await comm.disconnect()

    async def test_first_delta_of_each_member_is_not_held_for_coalescing(self, alice, conv, upstream, settings):
        settings.FUSION_FRAME_INTERVAL_MS = 5000  # were first deltas coalesced, they would wait 5 s
        comm = await open_ws(alice, conv.pk)
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "hi"})
        seen: set[int] = set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while len(seen) < 3:
            for e in flatten(await comm.receive_json_from(timeout=3)):
                if e["type"] == "panel.delta":
                    seen.add(e["slot"])
        assert loop.time() - t0 < 3
        await comm.send_json_to(
            {"type": "stop", "run_id": (await database_sync_to_async(lambda: Run.objects.get().client_run_id)())}
        )
        await collect_until(comm, {"failed", "completed"})
        await comm.disconnect()

    async def test_a_repeated_start_attaches_instead_of_paying_twice(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "hello"})
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "hello"})
        events = await collect_until(comm, {"completed", "failed"})
        snapshots = [e for e in events if e["type"] == "snapshot"]
        assert len(snapshots) == 1 and snapshots[0]["runs"][0]["client_run_id"] == run_id
        assert await database_sync_to_async(Run.objects.count)() == 1
        panel_requests = [r for r in upstream.requests if r["model"] in ("sim/a", "sim/b", "sim/c")]
        assert len(panel_requests) == 3
        await comm.disconnect()

    async def test_stop_closes_the_upstream_streams(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/slow"}, {"model": "sim/slow"}]}
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go", "panel": panel})
        await collect_until(comm, {"panel.delta"})
        await comm.send_json_to({"type": "stop", "run_id": run_id})
        events = await collect_until(comm, {"failed", "completed"})
        assert events[-1]["type"] == "failed" and events[-1]["status"] == "cancelled"
        for _ in range(50):
            if upstream.disconnects.count("sim/slow") >= 2:
                break
            await asyncio.sleep(0.05)
        assert upstream.disconnects.count("sim/slow") == 2
        run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
        assert run.status == RunStatus.CANCELLED
        await comm.disconnect()

    async def test_stop_member_closes_that_member_only(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/slow"}, {"model": "sim/a"}]}
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go", "panel": panel})
        await collect_until(comm, {"panel.delta"})
        await comm.send_json_to({"type": "stop_member", "run_id": run_id, "slot": 0})
        events = await collect_until(comm, {"completed", "failed"})
        failed = [e for e in events if e["type"] == "panel.failed"]
        assert [(e["slot"], e["status"]) for e in failed] == [(0, "stopped")]
        assert events[-1]["type"] == "completed"
        assert "sim/slow" in upstream.disconnects
        await comm.disconnect()

    async def test_another_users_run_id_is_not_found(self, alice, bob, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/slow"}]}
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go", "panel": panel})
        await collect_until(comm, {"run.started"})
        bobs = await database_sync_to_async(Conversation.objects.create)(user=bob)
        bob_ws = await open_ws(bob, bobs.pk)
        for frame in (
            {"type": "stop", "run_id": run_id},
            {"type": "stop_member", "run_id": run_id, "slot": 0},
            {"type": "fuse_now", "run_id": run_id},
            {"type": "retry_member", "run_id": run_id, "slot": 0},
            {"type": "regenerate", "run_id": run_id, "writer": "sim/writer"},
        ):
            await bob_ws.send_json_to(frame)
            reply = await bob_ws.receive_json_from(timeout=5)
            assert (reply["type"], reply["code"]) == ("error", "not_found"), frame
        # Bob reusing Alice's run id for his own start makes his own run, never attaches to hers.
        await bob_ws.send_json_to({"type": "start", "run_id": run_id, "prompt": "mine", "panel": panel})
        started = await collect_until(bob_ws, {"run.started"})
        assert started[-1]["turn"]["prompt"] == "mine"
        await comm.send_json_to({"type": "stop", "run_id": run_id})
        await bob_ws.send_json_to({"type": "stop", "run_id": run_id})
        await collect_until(comm, {"failed", "completed"})
        await collect_until(bob_ws, {"failed", "completed"})
        await comm.disconnect()
        await bob_ws.disconnect()

    async def test_one_running_run_per_conversation(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        panel = {**PANEL, "members": [{"model": "sim/slow"}]}
        first = str(uuid.uuid4())
        await comm.send_json_to({"type": "start", "run_id": first, "prompt": "one", "panel": panel})
        await collect_until(comm, {"run.started"})
        await comm.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "two", "panel": panel})
        reply = await collect_until(comm, {"error"})
        assert reply[-1]["code"] == "busy"
        await comm.send_json_to({"type": "stop", "run_id": first})
        await collect_until(comm, {"failed", "completed"})
        await comm.disconnect()

    async def test_concurrent_runs_per_user_are_limited(self, alice, upstream, settings):
        settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER = 1
        c1 = await database_sync_to_async(Conversation.objects.create)(user=alice)
        c2 = await database_sync_to_async(Conversation.objects.create)(user=alice)
        ws1, ws2 = await open_ws(alice, c1.pk), await open_ws(alice, c2.pk)
        panel = {**PANEL, "members": [{"model": "sim/slow"}]}
        first = str(uuid.uuid4())
        await ws1.send_json_to({"type": "start", "run_id": first, "prompt": "one", "panel": panel})
        await collect_until(ws1, {"run.started"})
        await ws2.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "two", "panel": panel})
        reply = await collect_until(ws2, {"error"})
        assert reply[-1]["code"] == "limit" and "1 runs going" in reply[-1]["message"]
        await ws1.send_json_to({"type": "stop", "run_id": first})
        await collect_until(ws1, {"failed", "completed"})
        await ws1.disconnect()
        await ws2.disconnect()

    async def test_a_reconnect_mid_run_gets_a_snapshot_then_live_deltas_without_gaps(self, alice, conv, upstream):
        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/a"}, {"model": "sim/slow"}]}
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go", "panel": panel})
        await collect_until(comm, {"panel.delta"})
        await asyncio.sleep(0.3)
        await comm.disconnect()  # the tab closes; the run goes on

        again = await connect(alice, conv.pk)
        assert (await again.connect())[0]
        snapshot = await again.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot"
        state = snapshot["runs"][0]
        assert state["client_run_id"] == run_id and state["status"] == "running"
        slow_text = state["members"][1]["content"]
        assert slow_text, "the snapshot carries the text so far"
        events = [{"type": "panel.delta", "slot": 1, "offset": 0, "delta": slow_text}]
        await again.send_json_to({"type": "stop_member", "run_id": run_id, "slot": 1})
        events += await collect_until(again, {"completed", "failed"})
        member = await database_sync_to_async(MemberResponse.objects.get)(run__client_run_id=run_id, slot=1)
        assert rebuild(events, ("panel.delta", 1)) == member.content
        await again.disconnect()


class TestRecovery:
    async def test_runs_of_a_dead_process_become_interrupted_and_can_be_retried(self, alice, conv, upstream):
        from chat.runs import recover_interrupted_runs

        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go"})
        await collect_until(comm, {"completed", "failed"})

        def fake_dead_run() -> None:
            Run.objects.filter(client_run_id=run_id).update(status=RunStatus.RUNNING, process_id="dead:1:x")
            MemberResponse.objects.filter(run__client_run_id=run_id, slot=2).update(status="streaming")

        await database_sync_to_async(fake_dead_run)()
        assert await database_sync_to_async(recover_interrupted_runs)(all_processes=True) == 1
        run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
        assert run.status == RunStatus.INTERRUPTED

        await comm.send_json_to({"type": "retry_member", "run_id": run_id, "slot": 2})
        events = await collect_until(comm, {"completed", "failed"})
        started = next(e for e in events if e["type"] == "run.started")
        assert started["replaces"] == str(run.pk)
        assert events[-1]["type"] == "completed"
        retried_models = [r["model"] for r in upstream.requests[-3:]]
        assert "sim/c" in retried_models
        await comm.disconnect()


class TestControlAcrossProcesses:
    async def test_a_control_sent_through_the_channel_layer_reaches_the_owning_run(self, alice, conv, upstream):
        # What a consumer of another Daphne process does when it does not own the run.
        from channels.layers import get_channel_layer

        from chat.runs import control_group

        comm = await open_ws(alice, conv.pk)
        run_id = str(uuid.uuid4())
        panel = {**PANEL, "members": [{"model": "sim/slow"}, {"model": "sim/slow"}]}
        await comm.send_json_to({"type": "start", "run_id": run_id, "prompt": "go", "panel": panel})
        await collect_until(comm, {"panel.delta"})
        run = await database_sync_to_async(Run.objects.get)(client_run_id=run_id)
        await get_channel_layer().group_send(
            control_group(run.pk), {"type": "run.control", "action": "stop_member", "slot": 0}
        )
        stopped = await collect_until(comm, {"panel.failed"})
        assert stopped[-1]["slot"] == 0 and stopped[-1]["status"] == "stopped"
        await get_channel_layer().group_send(control_group(run.pk), {"type": "run.control", "action": "stop"})
        events = await collect_until(comm, {"failed", "completed"})
        assert events[-1]["type"] == "failed" and events[-1]["status"] == "cancelled"
        await comm.disconnect()
