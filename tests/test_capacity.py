"""Capacity, part 1: many concurrent runs per process.

Checkpoints of every run batched per tick (chat.runs.store), frames encoded once
(chat.runs.frames, chat.consumers), the finished answer built from its live blocks, big Markdown
work off the loop (chat.runs.live), the in-memory channel layer without per-message sweeps
(chat.layers), shared HTTP clients (chat.fusion.client), reads done once per start
(chat.memo, chat.runs.services) and the run path's own database threads (chat.dbthread).
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import chat.layers
from chat import dbthread, memo
from chat.consumers import ConversationConsumer
from chat.fusion import client as fusion_client
from chat.fusion import transport
from chat.fusion.types import (
    CallRecord,
    FinalDelta,
    ModelSpec,
    PanelCompleted,
    PanelDelta,
    PanelNote,
    PanelReasoningDelta,
    PanelToolFinished,
    PanelToolStarted,
    RunCompleted,
    Usage,
)
from chat.layers import FastInMemoryChannelLayer
from chat.models import Conversation, MemberResponse, Run, RunStatus, Turn
from chat.render import IncrementalRenderer, render_markdown
from chat.render import pool as render_pool
from chat.render.blocks import render_sources
from chat.render.safe import render_escaped
from chat.runs import live, services
from chat.runs.checks import RunError
from chat.runs.frames import Stream, frame_message
from chat.runs.rendering import LiveRendering
from chat.runs.state import RunState
from chat.runs.store import (
    Checkpoint,
    CheckpointBatcher,
    DatabaseRunStore,
    _checkpoint,
    _Enrolled,
    keep_checkpointing,
)
from fusionsite.asgi import application
from tests.conftest import serve_from
from tests.rows import row_like

# --------------------------------------------------------------------------- helpers


def new_state(members: int = 2, run: Any = None) -> RunState:
    return RunState.start(run or row_like(), [ModelSpec(model=f"sim/m{i}") for i in range(members)])


def delta(slot: int, text: str) -> PanelDelta:
    return PanelDelta(slot=slot, model=f"sim/m{slot}", delta=text)


class RecordingStore:
    """Records every ``write``: (checkpoints, heartbeats, the thread it ran in)."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[list[Checkpoint], list[str], str]] = []
        self.fail_times = fail_times

    def write(self, checkpoints: list[Checkpoint], heartbeats: list[str]) -> None:
        self.calls.append((list(checkpoints), list(heartbeats), threading.current_thread().name))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("database is locked")

    def finalize(self, state: RunState, *, conversation_id: int, wall_ms: int) -> None:
        raise AssertionError("not in these tests")


async def wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def batcher_with(*states: RunState, store: Any) -> tuple[CheckpointBatcher, list[_Enrolled]]:
    """A batcher holding *states* without its background task: the test calls ``_tick`` itself."""
    batcher = CheckpointBatcher()
    entries = []
    for state in states:
        entry = _Enrolled(state=state, store=store, min_gap=0.0, block_delay=0.05, last_write=0.0)
        batcher.entries[state.run_id] = entry
        entries.append(entry)
    return batcher, entries


# --------------------------------------------------------------------------- 1. checkpoints


class TestCheckpointBatching:
    async def test_the_runs_due_in_one_tick_are_written_in_one_call_and_quiet_ones_only_beat(self, settings):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0.2
        states = [new_state() for _ in range(3)]
        states[0].apply(delta(0, "Blue light scatters"))
        states[1].apply(delta(1, "Rayleigh"))
        store = RecordingStore()
        tasks = [asyncio.create_task(keep_checkpointing(s, store)) for s in states]
        try:
            await wait_until(lambda: store.calls)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        checkpoints, heartbeats, thread = store.calls[0]
        assert sorted(c.run_id for c in checkpoints) == sorted([states[0].run_id, states[1].run_id])
        assert sorted(heartbeats) == sorted(s.run_id for s in states)
        assert thread.startswith("fusion-db")
        by_run = {c.run_id: c for c in checkpoints}
        assert by_run[states[0].run_id].members[0]["content"] == "Blue light scatters"
        assert by_run[states[1].run_id].members[1]["content"] == "Rayleigh"
        for later_checkpoints, later_beats, _ in store.calls[1:]:  # quiet since: heartbeats only
            assert later_checkpoints == [] and sorted(later_beats) == sorted(s.run_id for s in states)

    async def test_a_run_not_due_yet_is_left_for_a_later_tick(self, settings):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 1.0
        due, fresh = new_state(), new_state()
        due.apply(delta(0, "a"))
        fresh.apply(delta(0, "b"))
        store = RecordingStore()
        batcher, entries = batcher_with(due, fresh, store=store)
        entries[1].last_write = time.monotonic()  # just written
        await batcher._tick()
        assert len(store.calls) == 1
        checkpoints, heartbeats, _ = store.calls[0]
        assert [c.run_id for c in checkpoints] == [due.run_id] and heartbeats == [due.run_id]
        assert fresh.dirty

    async def test_an_unchanged_member_is_not_written_again_but_a_tool_call_changed_in_place_is(self, settings):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0  # every tick is due
        state, store = new_state(), RecordingStore()
        batcher, _ = batcher_with(state, store=store)

        async def members_written() -> dict[int, dict[str, Any]]:
            await batcher._tick()
            checkpoints = store.calls[-1][0]
            assert len(checkpoints) == 1
            return checkpoints[0].members

        state.apply(delta(0, "First "))
        state.apply(delta(1, "Second "))
        assert set(await members_written()) == {0, 1}

        state.apply(delta(0, "more"))
        written = await members_written()
        assert set(written) == {0} and written[0]["content"] == "First more"

        state.apply(PanelToolStarted(slot=1, model="sim/m1", call_id="c1", name="web_search", arguments={"q": "x"}))
        state.apply(PanelToolStarted(slot=1, model="sim/m1", call_id="c2", name="web_search", arguments={"q": "y"}))
        assert set(await members_written()) == {1}

        # c1 ends, c2 still runs: the member's status, text and list lengths stay; one call's status changed.
        status_before = state.members[1].status
        state.apply(PanelToolFinished(slot=1, model="sim/m1", call_id="c1", name="web_search", ok=True, summary="3"))
        assert state.members[1].status == status_before and len(state.members[1].tool_calls) == 2
        written = await members_written()
        assert set(written) == {1}
        assert [c["status"] for c in written[1]["tool_calls"]] == ["done", "running"]

        state.dirty = True  # something else of the run changed (its analysis, say)
        state.analysis = {"agreement": []}
        written_run = await members_written()
        assert written_run == {}
        assert store.calls[-1][0][0].run["analysis"] == {"agreement": []}

    async def test_a_failed_write_is_logged_and_written_again_in_a_later_tick(self, settings, caplog):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0
        state, store = new_state(), RecordingStore(fail_times=1)
        batcher, _ = batcher_with(state, store=store)
        state.apply(delta(0, "Text the user already reads"))
        await batcher._tick()
        assert "checkpoint of 1 run(s) failed" in caplog.text
        assert state.dirty
        await batcher._tick()
        assert len(store.calls) == 2
        checkpoints = store.calls[1][0]
        assert checkpoints and checkpoints[0].members[0]["content"] == "Text the user already reads"

    async def test_a_failed_write_is_retried_by_the_running_checkpointer(self, settings, caplog):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0.1
        state, store = new_state(), RecordingStore(fail_times=1)
        state.apply(delta(0, "kept"))
        task = asyncio.create_task(keep_checkpointing(state, store))
        try:
            await wait_until(lambda: len(store.calls) >= 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert "checkpoint of 1 run(s) failed" in caplog.text
        assert store.calls[1][0] and store.calls[1][0][0].members[0]["content"] == "kept"

    async def test_cancelling_returns_only_after_the_write_in_flight(self, settings):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0.05
        entered, release = threading.Event(), threading.Event()
        finished: list[bool] = []

        class BlockingStore(RecordingStore):
            def write(self, checkpoints: list[Checkpoint], heartbeats: list[str]) -> None:
                entered.set()
                release.wait(5)
                finished.append(True)

        state = new_state()
        state.apply(delta(0, "x"))
        task = asyncio.create_task(keep_checkpointing(state, BlockingStore()))
        try:
            await wait_until(entered.is_set)
            task.cancel()
            await asyncio.sleep(0.15)
            assert not task.done(), "keep_checkpointing returned while its write was still in flight"
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 3)
        assert finished == [True]


def _db_run(user: Any, *, status: str = RunStatus.RUNNING, members: int = 2) -> Run:
    conversation = Conversation.objects.create(user=user, title="t")
    turn = Turn.objects.create(conversation=conversation, index=0, prompt="Why is the sky blue?")
    run = Run.objects.create(
        user=user,
        conversation=conversation,
        turn=turn,
        client_run_id=uuid.uuid4().hex,
        status=status,
        analyst_model="sim/analyst",
        writer_model="sim/writer",
        answer="The final answer." if status != RunStatus.RUNNING else "",
        heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    MemberResponse.objects.bulk_create([MemberResponse(run=run, slot=i, model=f"sim/m{i}") for i in range(members)])
    return run


def _snapshot_of(state: RunState) -> Checkpoint:
    return _checkpoint(_Enrolled(state=state, store=None, min_gap=0, block_delay=0))  # type: ignore[arg-type]


@pytest.mark.django_db(transaction=True)
class TestDatabaseRunStore:
    def test_a_checkpoint_lands_in_the_member_and_run_rows(self, alice):
        run = _db_run(alice)
        state = RunState.start(run, [ModelSpec(model="sim/m0"), ModelSpec(model="sim/m1")])
        state.apply(PanelReasoningDelta(slot=0, model="sim/m0", delta="Thinking…"))
        state.apply(delta(0, "Hello **world** ✓"))
        state.apply(PanelToolStarted(slot=1, model="sim/m1", call_id="c1", name="web_search", arguments={"q": "sky"}))
        source = {"url": "https://example.com/sky", "title": "Sky", "kind": "search"}
        state.apply(
            PanelToolFinished(
                slot=1, model="sim/m1", call_id="c1", name="web_search", ok=True, summary="1 result", sources=[source]
            )
        )
        state.apply(PanelNote(slot=1, model="sim/m1", message="answered without tools"))
        state.analysis, state.label_map, state.writer = {"consensus": ["blue"]}, {"A": "sim/m0"}, "sim/writer-2"
        state.apply(FinalDelta(delta="Rayleigh scattering"))
        before = timezone.now()
        DatabaseRunStore().write([_snapshot_of(state)], [state.run_id])

        m0, m1 = MemberResponse.objects.filter(run=run).order_by("slot")
        assert (m0.content, m0.reasoning, m0.status) == ("Hello **world** ✓", "Thinking…", "streaming")
        assert m1.tool_calls[0]["status"] == "done" and m1.tool_calls[0]["arguments"] == {"q": "sky"}
        assert m1.sources == [source] and m1.notes == ["answered without tools"]
        run.refresh_from_db()
        assert run.answer == "Rayleigh scattering"
        assert run.analysis == {"consensus": ["blue"]} and run.label_map == {"A": "sim/m0"}
        assert run.writer_model == "sim/writer-2"
        assert run.heartbeat_at >= before

    def test_a_run_no_longer_running_is_not_overwritten_and_gets_no_heartbeat(self, alice):
        done = _db_run(alice, status=RunStatus.COMPLETE)
        going = _db_run(alice)
        stale = Checkpoint(
            run_id=str(done.pk),
            members={},
            run={"answer": "partial", "analysis": None, "label_map": {}, "writer_model": "old"},
        )
        DatabaseRunStore().write([stale], [str(done.pk), str(going.pk)])
        done.refresh_from_db()
        going.refresh_from_db()
        assert (done.answer, done.writer_model) == ("The final answer.", "sim/writer")
        assert done.heartbeat_at == datetime(2026, 1, 1, tzinfo=UTC)
        assert going.heartbeat_at > datetime(2026, 1, 1, tzinfo=UTC)

    def test_more_than_500_heartbeats_in_one_write(self, alice):
        runs = [_db_run(alice, members=0) for _ in range(3)]
        unknown = [str(uuid.uuid4()) for _ in range(1500)]
        ids = [str(runs[0].pk), *unknown[:700], str(runs[1].pk), *unknown[700:], str(runs[2].pk)]
        connection.ensure_connection()
        raw = connection.connection if connection.vendor == "sqlite" else None
        # SQLite as many builds have it: at most 999 parameters a statement.
        old = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999) if raw is not None else None
        try:
            DatabaseRunStore().write([], ids)
        finally:
            if raw is not None:
                raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, old)
        for run in runs:
            run.refresh_from_db()
            assert run.heartbeat_at > datetime(2026, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- 2. frames


class TestFrameMessage:
    def test_a_frame_is_encoded_once_as_compact_json(self):
        frame = {"type": "panel.delta", "slot": 0, "delta": "é <b>", "run": "r1", "blocks": []}
        message = frame_message(frame)
        assert message == {"type": "run.frame", "text": json.dumps(frame, separators=(",", ":"))}
        assert json.loads(message["text"]) == frame and ", " not in message["text"] and '": ' not in message["text"]

    async def test_the_consumer_sends_the_text_as_is_and_still_takes_the_old_shape(self, settings):
        settings.FUSION_MAX_WS_FRAME_BYTES = 10_000
        sent: list[str] = []
        consumer = ConversationConsumer()
        consumer.closing = False

        async def send(text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
            assert text_data is not None
            sent.append(text_data)

        consumer.send = send  # type: ignore[method-assign]
        as_encoded = '{"type": "panel.delta",  "delta": "x"}'  # not compact: re-encoding would show
        await consumer.run_frame({"type": "run.frame", "text": as_encoded})
        await consumer.run_frame({"type": "run.frame", "frame": {"type": "snapshot", "runs": []}})
        assert sent == [as_encoded, '{"type":"snapshot","runs":[]}']

        settings.FUSION_MAX_WS_FRAME_BYTES = 1100  # a long encoded frame is still cut into chunks
        long_text = frame_message({"type": "panel.delta", "delta": "y" * 5000})["text"]
        sent.clear()
        await consumer.run_frame({"type": "run.frame", "text": long_text})
        assert len(sent) > 1 and all(len(p.encode()) <= 1100 for p in sent)
        chunks = [json.loads(p) for p in sent]
        assert "".join(c["data"] for c in chunks) == long_text and chunks[-1]["last"]

        consumer.closing = True
        sent.clear()
        await consumer.run_frame({"type": "run.frame", "text": as_encoded})
        assert sent == []

    @pytest.mark.django_db(transaction=True)
    async def test_a_frame_sent_to_the_group_reaches_a_socket_as_that_text(self, alice):
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, title="t")

        def cookie() -> str:
            client = Client()
            client.force_login(alice)
            return client.cookies[django_settings.SESSION_COOKIE_NAME].value

        headers = [
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={await database_sync_to_async(cookie)()}".encode()),
        ]
        comm = WebsocketCommunicator(application, f"/ws/conversations/{conversation.pk}/", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        try:
            assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
            message = frame_message({"type": "panel.delta", "slot": 0, "delta": "hi", "run": "r"})
            await get_channel_layer().group_send(live.group_name(conversation.pk), message)
            assert await comm.receive_from(timeout=5) == message["text"]
        finally:
            await comm.disconnect()


def stream_in_chunks(text: str, size: int = 7) -> Stream:
    stream = Stream()
    for i in range(0, len(text), size):
        stream.feed(text[i : i + size])
    return stream


def live_join(text: str, size: int = 7) -> str:
    """What an independent live renderer makes of *text* streamed in chunks, finished."""
    renderer = IncrementalRenderer()
    for i in range(0, len(text), size):
        renderer.feed(text[i : i + size])
    renderer.finish()
    return "\n".join(renderer.blocks)


def between_blocks(html: str) -> str:
    return re.sub(r">\s+<", "><", html).strip()


ANSWER = """# Why the sky is blue

Sunlight is *scattered* by the molecules of the air; blue light, with its short wavelength,
is scattered the most.

- Rayleigh scattering grows as the fourth power of frequency.
- Violet is scattered even more, but the eye is less sensitive to it.

1. First
2. Second

```python
def intensity(wavelength):
    return 1 / wavelength ** 4
```

| Colour | Wavelength |
|--------|-----------:|
| Blue   | 450 nm     |
| Red    | 700 nm     |

A last paragraph, still streaming"""


class TestWholeHtml:
    def test_a_streamed_text_is_its_live_blocks_and_renders_like_the_whole(self):
        stream = stream_in_chunks(ANSWER)
        html = stream.whole_html(ANSWER)
        assert html == live_join(ANSWER)
        assert between_blocks(html) == between_blocks(render_markdown(ANSWER))
        for tag in ("<h1", "<ul>", "<ol>", 'class="highlight"', "<table>", "<em>scattered</em>"):
            assert tag in html

    def test_the_streamed_path_renders_only_the_tail(self, monkeypatch):
        stream = stream_in_chunks(ANSWER)
        whole = []
        monkeypatch.setattr("chat.render.blocks.render_markdown", lambda t: whole.append(t) or render_markdown(t))
        stream.whole_html(ANSWER)
        assert whole == ["A last paragraph, still streaming"]  # no second conversion of the whole answer

    def test_a_reference_definition_makes_the_text_render_whole(self):
        text = "See [the docs][d] first.\n\nThen more text.\n\n[d]: https://example.com/docs\n"
        stream = stream_in_chunks(text, size=4)
        html = stream.whole_html(text)
        assert html == render_markdown(text)
        assert 'href="https://example.com/docs"' in html
        assert "[the docs][d]" in live_join(text, size=4)  # the live blocks could not resolve it

    @pytest.mark.parametrize(
        "definition", ["> [d]: https://example.com/docs\n", "- item\n\n    [d]: https://example.com/docs\n"]
    )
    def test_a_nested_reference_definition_makes_the_text_render_whole_too(self, definition):
        text = f"See [the docs][d] first.\n\n{definition}"
        stream = stream_in_chunks(text, size=4)
        assert stream.whole_html(text) == render_markdown(text)

    def test_a_text_other_than_what_streamed_is_rendered_whole(self):
        stream = stream_in_chunks("The sky is blue.\n\nBecause")
        final = "The sky is **blue**.\n\nBecause of Rayleigh scattering."
        assert stream.whole_html(final) == render_markdown(final)

    def test_a_text_over_one_units_limits_is_rendered_whole(self):
        text = "\n\n".join(f"Paragraph {i}." for i in range(600))  # 1,199 lines
        stream = stream_in_chunks(text, size=500)
        job = stream.whole_job(text)
        assert job is not None and job.sources == [(text, False)]
        assert stream.whole_html(text) == render_markdown(text)

    def test_the_whole_job_is_the_tail_for_a_streamed_text_and_all_of_it_otherwise(self):
        text = "First paragraph.\n\nSecond paragraph, still open"
        other = text + " and longer"
        other_job = stream_in_chunks(text).whole_job(other)
        assert other_job is not None and other_job.chars == len(other)
        stream = stream_in_chunks(text)
        assert stream.renderer.tail == "Second paragraph, still open"
        job = stream.whole_job(text)
        assert job is not None and job.sources == [("Second paragraph, still open", False)]
        job.finish(["<p>Second paragraph, still open</p>\n"])
        assert stream.whole_html(text) == "<p>First paragraph.</p>\n<p>Second paragraph, still open</p>"
        assert stream.whole_job(text) is None  # already computed

    @pytest.mark.parametrize("streamed", [True, False])
    def test_the_result_is_memoized(self, monkeypatch, streamed):
        text = "One.\n\nTwo *three*."
        stream = stream_in_chunks(text if streamed else "Something else")
        renders: list[str] = []
        monkeypatch.setattr("chat.render.blocks.render_markdown", lambda t: renders.append(t) or render_markdown(t))
        first = stream.whole_html(text)
        assert renders == (["Two *three*."] if streamed else [text])  # the tail, or the whole text
        assert stream.whole_html(text) == first
        assert len(renders) == 1


# --------------------------------------------------------------------------- 3. inline or in a thread


def long_code_block() -> str:
    block = "```python\n" + "".join(f"value_{i} = {i} * 2\n" for i in range(700)) + "```\n"
    assert len(block) > 10_000
    return block


class TestRenderPlacement:
    def test_prerender_reports_what_each_job_converts(self):
        state = new_state()
        first = state.prerender(delta(0, "no newline"))
        assert first is not None and first.sources == []
        state.apply(delta(0, "no newline"), first.finish([]))
        job = state.prerender(delta(0, " end.\n\nNext"))
        assert job is not None and job.sources == [("no newline end.\n\n", False)]
        state.apply(delta(0, " end.\n\nNext"), job.finish(render_sources(job.sources)))
        big = long_code_block()
        big_job = state.prerender(FinalDelta(delta=big))
        assert big_job is not None and big_job.chars == 0  # the block is not finished yet: nothing to render
        state.apply(FinalDelta(delta=big), big_job.finish([]))

        answer = "x" * 9000
        done = RunCompleted(
            answer=answer, analysis=None, analysis_error=None, failed_models=[], records=[], usage=Usage(), timings={}
        )
        done_job = state.prerender(done)
        assert done_job is not None and done_job.sources == [(answer, False)]  # not what streamed: all of it

    def test_a_delta_without_a_newline_can_finish_the_block_before_it(self):
        # A block ends when the next one starts: here the paragraph's end is only known when
        # "Second" arrives, in a delta without a newline. Its rendering must be a job too (it
        # went to the event loop before).
        stream = Stream()
        for piece in ("First paragraph.\n", "\n"):
            stream.feed(piece, stream.delta_job(piece).finish([]))
        job = stream.delta_job("Second")
        assert job.sources == [("First paragraph.\n\n", False)]
        frame = stream.feed("Second", job.finish(render_sources(job.sources)))
        assert frame["blocks"] == ["<p>First paragraph.</p>"]

    def test_a_snapshot_while_a_job_is_out_counts_only_what_its_blocks_and_tail_show(self):
        stream = stream_in_chunks("First paragraph.\n\nSecond")
        before = stream.state()
        job = stream.delta_job(" paragraph.\n\nThird")
        assert job is not None and job.sources == [("Second paragraph.\n\n", False)]
        assert stream.state() == before  # the cut-off block is neither in the blocks nor counted
        update = job.finish(render_sources(job.sources))
        frame = stream.feed(" paragraph.\n\nThird", update)
        assert frame["blocks"] == ["<p>Second paragraph.</p>"]
        assert stream.state()["consumed"] == len("First paragraph.\n\nSecond paragraph.\n\n") == frame["consumed"]

    @staticmethod
    def owner(state: RunState) -> SimpleNamespace:
        """What ActiveRun._step uses: the run's LiveRendering, its frames collected."""
        emitted: list[tuple[dict[str, Any], bool]] = []
        rendering = LiveRendering(
            state, lambda f, now=False: emitted.append((f, now)), django_settings.FUSION_RENDER_PROCESSES
        )
        return SimpleNamespace(state=state, rendering=rendering, step=rendering.step, emitted=emitted)

    # -- with FUSION_RENDER_PROCESSES=0: in this process, big jobs in a thread

    @pytest.fixture
    def threads(self, monkeypatch, settings) -> list[Any]:
        settings.FUSION_RENDER_PROCESSES = 0
        calls: list[Any] = []
        real = asyncio.to_thread

        async def counting(fn, *args, **kwargs):
            calls.append(fn)
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(render_pool.asyncio, "to_thread", counting)
        return calls

    async def test_small_render_jobs_run_inline(self, threads):
        state = new_state()
        me = self.owner(state)
        await me.step(delta(0, "A short paragraph.\n\nNext"))
        await me.step(delta(0, " one.\n"))
        assert threads == []
        assert state.members[0].stream.blocks == ["<p>A short paragraph.</p>"]
        assert [f["blocks"] for f, _ in me.emitted] == [["<p>A short paragraph.</p>"], []]

    async def test_a_big_code_block_goes_to_a_thread_when_it_is_finished(self, threads):
        state = new_state()
        me = self.owner(state)
        big = long_code_block()
        assert len(big) > render_pool.INLINE_RENDER_CHARS
        await me.step(FinalDelta(delta=big))
        # The block ends when the next one starts: its conversion is big.
        await me.step(FinalDelta(delta="\nAfter"))
        assert len(threads) == 1
        assert 'class="highlight"' in state.final.blocks[0]  # the thread's result was applied

    async def test_a_long_finished_answer_goes_to_a_thread_unless_only_its_tail_is_left(self, threads):
        text = "\n\n".join(f"Paragraph {i} of a long answer." for i in range(300))
        assert len(text) > render_pool.INLINE_RENDER_CHARS

        def completed() -> RunCompleted:
            return RunCompleted(
                answer=text, analysis=None, analysis_error=None, failed_models=[], records=[], usage=Usage(), timings={}
            )

        never_streamed = new_state()
        await self.owner(never_streamed).step(completed())
        assert len(threads) == 1 and never_streamed.final.html == render_markdown(text)

        streamed = new_state()
        me = self.owner(streamed)
        for i in range(0, len(text), 40):
            await me.step(FinalDelta(delta=text[i : i + 40]))
        assert len(threads) == 1
        await me.step(completed())
        assert len(threads) == 1  # only the last paragraph was left to convert: inline
        assert between_blocks(streamed.final.html or "") == between_blocks(render_markdown(text))

    async def test_a_member_completed_with_its_streamed_text_is_inline(self, threads):
        text = "\n\n".join(f"Line {i} of a member." for i in range(300))
        state = new_state()
        me = self.owner(state)
        for i in range(0, len(text), 50):
            await me.step(delta(0, text[i : i + 50]))
        done = PanelCompleted(slot=0, model="sim/m0", content=text, record=CallRecord(role="panel", model="sim/m0"))
        await me.step(done)
        assert threads == []
        assert between_blocks(state.members[0].stream.html or "") == between_blocks(render_markdown(text))

    # -- with the default, a worker process

    @pytest.fixture
    async def worker(self, settings) -> render_pool.RenderPool:
        settings.FUSION_RENDER_PROCESSES = 1
        return render_pool.for_loop(1)

    async def test_a_run_renders_in_the_worker_process_the_same_html(self, worker, threads_forbidden):
        state = new_state()
        me = self.owner(state)
        batches = worker.batches
        text = ANSWER + "\n"
        for i in range(0, len(text), 23):
            await me.step(delta(0, text[i : i + 23]))
        done = PanelCompleted(slot=0, model="sim/m0", content=text, record=CallRecord(role="panel", model="sim/m0"))
        await me.step(done)
        assert worker.batches > batches and worker.fallbacks == 0
        assert state.members[0].stream.html == live_join(text, size=23)
        assert 'class="highlight"' in (state.members[0].stream.html or "")

    async def test_jobs_submitted_while_one_is_out_go_together(self, worker):
        await worker.render([("warm *up*\n\n", False)])  # the worker has started
        batches = worker.batches
        jobs = [[(f"Paragraph **{i}**.\n\n", False)] for i in range(40)]
        results = await asyncio.gather(*(worker.render(job) for job in jobs))
        assert results == [render_sources(job) for job in jobs]
        assert worker.batches - batches == 2  # the first alone, the other 39 in one round trip

    async def test_a_dead_worker_is_replaced_and_its_jobs_render_here(self, worker):
        await worker.render([("warm\n\n", False)])
        assert worker.executor is not None
        pool = worker.executor.get()
        for process in list(pool._processes.values()):  # type: ignore[attr-defined]
            process.kill()
            process.join()
        fallbacks = worker.fallbacks
        job = [("After the *crash*.\n\n", False)]
        assert await worker.render(job) == render_sources(job)
        assert worker.fallbacks == fallbacks + 1
        assert worker.executor.get() is not pool  # a new pool for the next jobs
        assert await worker.render(job) == render_sources(job)
        assert worker.fallbacks == fallbacks + 1

    def test_a_worker_leaves_when_its_daphne_is_killed(self):
        import psutil

        code = (
            "import time; from chat.render import pool; pool.start(1);"
            # The worker is up, past its start, waiting for jobs:
            "pool._executor_for(1).get().submit(pool.render_batch, []).result();"
            "print('ready', flush=True); time.sleep(60)"
        )
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 20
            workers: list[psutil.Process] = []
            while not workers and time.monotonic() < deadline:
                children = psutil.Process(parent.pid).children()  # the worker, and multiprocessing's resource tracker
                workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
                time.sleep(0.05)
            assert len(workers) == 1
            workers = children
        finally:
            parent.kill()  # SIGKILL: no atexit, no executor shutdown
            parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        for process in alive:
            process.kill()
        assert alive == [], "the render worker (or the resource tracker) outlived its killed parent"

    async def test_in_process_a_job_that_fails_fails_alone(self, worker, monkeypatch):
        def picky(sources):
            if "boom" in sources[0][0]:
                raise ValueError("boom")
            return [s for s, _ in sources]

        monkeypatch.setattr(render_pool, "render_sources", picky)
        results = await worker._here([[("boom", False)], [("fine", False)]])
        assert isinstance(results[0], ValueError) and results[1] == ["fine"]

    async def test_a_deltas_text_is_sent_before_its_blocks_come_back(self, worker):
        state = new_state()
        me = self.owner(state)
        first = "First paragraph.\n\nSecond"  # "Second" ends the first block: a job for the worker
        await me.step(delta(0, first))
        assert me.emitted == [
            ({"type": "panel.delta", "slot": 0, "offset": 0, "delta": first, "blocks": [], "consumed": 0}, True)
        ]
        assert me.rendering.rendering == 1
        assert state.members[0].stream.state()["consumed"] == 0  # a snapshot shows it in the tail
        await me.step(delta(0, " one"))  # text goes on while the block is out
        await me.rendering.drain()
        assert me.rendering.rendering == 0
        frames = [f for f, _ in me.emitted]
        assert frames[1]["delta"] == " one" and frames[1]["blocks"] == []
        assert frames[2] == {
            "type": "panel.delta",
            "slot": 0,
            "offset": len(first + " one"),  # at the end of the text: a client appends the blocks
            "delta": "",
            "blocks": ["<p>First paragraph.</p>"],
            "consumed": len("First paragraph.\n\n"),
        }
        assert state.block_finished

    async def test_a_streams_blocks_are_applied_in_the_order_they_were_cut(self, worker, monkeypatch):
        gates: list[asyncio.Future[None]] = []

        async def held(job):
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            gates.append(gate)
            await gate
            return render_sources(job)

        monkeypatch.setattr(worker, "render", held)
        state = new_state()
        me = self.owner(state)
        for piece in ("One.\n\nTwo", ".\n\nThree"):
            await me.step(delta(0, piece))
        await asyncio.sleep(0)
        assert len(gates) == 2
        gates[1].set_result(None)  # the second block comes back first …
        await asyncio.sleep(0.01)
        assert state.members[0].stream.blocks == []  # … and waits for the first
        gates[0].set_result(None)
        await me.rendering.drain()
        assert state.members[0].stream.blocks == ["<p>One.</p>", "<p>Two.</p>"]
        assert [f["blocks"] for f, _ in me.emitted if f["blocks"]] == [["<p>One.</p>"], ["<p>Two.</p>"]]

    async def test_a_member_completed_waits_for_its_blocks_out(self, worker):
        state = new_state()
        me = self.owner(state)
        text = ANSWER + "\n"
        for i in range(0, len(text), 23):
            await me.step(delta(0, text[i : i + 23]))
        assert me.rendering.rendering > 0
        done = PanelCompleted(slot=0, model="sim/m0", content=text, record=CallRecord(role="panel", model="sim/m0"))
        await me.step(done)
        assert me.rendering.rendering == 0
        assert state.members[0].stream.html == live_join(text, size=23)

    async def test_a_drain_cancelled_while_blocks_are_out_renders_them_here(self, worker):
        state = new_state()
        me = self.owner(state)
        await me.step(delta(0, "First paragraph.\n\nSecond"))
        await me.step(delta(0, " paragraph.\n\nThird"))
        drain = asyncio.ensure_future(me.rendering.drain())
        await asyncio.sleep(0)  # the jobs are out
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        stream = state.members[0].stream
        assert stream.blocks == ["<p>First paragraph.</p>", "<p>Second paragraph.</p>"]
        assert stream.state()["consumed"] == len("First paragraph.\n\nSecond paragraph.\n\n")
        await asyncio.sleep(0.5)  # the worker's late answer adds nothing twice
        assert stream.blocks == ["<p>First paragraph.</p>", "<p>Second paragraph.</p>"]

    async def test_a_step_cancelled_while_a_whole_answer_renders_keeps_the_whole_text(self, worker):
        state = new_state()
        me = self.owner(state)
        text = "First paragraph.\n\nSecond paragraph."
        await me.step(delta(0, text))
        await me.rendering.drain()
        done = PanelCompleted(slot=0, model="sim/m0", content=text, record=CallRecord(role="panel", model="sim/m0"))
        step = asyncio.ensure_future(me.step(done))
        await asyncio.sleep(0)  # the tail's job is out
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        stream = state.members[0].stream
        assert stream.blocks == ["<p>First paragraph.</p>"]  # the event was not applied …
        assert "<p>Second paragraph.</p>" in stream.whole_html(stream.text)  # … and no block is missing

    async def test_a_block_the_renderer_fails_on_is_shown_as_text(self, worker, monkeypatch):
        async def broken(job):
            raise ValueError("the renderer failed")

        monkeypatch.setattr(worker, "render", broken)
        state = new_state()
        me = self.owner(state)
        await me.step(delta(0, "<b>First</b> paragraph.\n\nSecond"))
        await me.rendering.drain()
        assert state.members[0].stream.blocks == [render_escaped("<b>First</b> paragraph.\n\n")]
        assert "<b>" not in state.members[0].stream.blocks[0]


@pytest.fixture
def threads_forbidden(monkeypatch) -> None:
    async def no_threads(fn, *args, **kwargs):
        raise AssertionError(f"rendered in a thread: {fn}")

    monkeypatch.setattr(render_pool.asyncio, "to_thread", no_threads)


# --------------------------------------------------------------------------- 4. the channel layer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


async def received(layer: FastInMemoryChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), 1)


class TestFastInMemoryChannelLayer:
    async def test_group_send_reaches_every_member_and_only_them(self):
        layer = FastInMemoryChannelLayer()
        a, b, outsider = [await layer.new_channel() for _ in range(3)]
        await layer.group_add("conv_1", a)
        await layer.group_add("conv_1", b)
        await layer.group_add("conv_2", outsider)
        await layer.group_send("conv_1", {"type": "run.frame", "text": "{}"})
        assert await received(layer, a) == {"type": "run.frame", "text": "{}"}
        assert await received(layer, b) == {"type": "run.frame", "text": "{}"}
        assert outsider not in layer.channels
        await layer.group_discard("conv_1", b)
        await layer.group_send("conv_1", {"type": "run.frame", "text": "2"})
        assert b not in layer.channels and (await received(layer, a))["text"] == "2"

    async def test_group_send_nowait_delivers_before_it_returns(self):
        layer = FastInMemoryChannelLayer()
        a = await layer.new_channel()
        await layer.group_add("conv_1", a)
        assert layer.group_send_nowait("conv_1", {"type": "run.frame", "text": "now"}) is None  # not a coroutine
        assert layer.channels[a].qsize() == 1
        assert await received(layer, a) == {"type": "run.frame", "text": "now"}

    async def test_a_flat_message_arrives_equal_but_as_its_own_dict(self):
        layer = FastInMemoryChannelLayer()
        channel = await layer.new_channel()
        message = {"type": "run.frame", "text": "{}", "n": 1, "x": 1.5, "ok": True, "none": None}
        await layer.send(channel, message)
        got = await received(layer, channel)
        assert got == message and got is not message
        message["text"] = "changed"
        assert got["text"] == "{}"

    async def test_a_nested_message_is_deep_copied(self):
        layer = FastInMemoryChannelLayer()
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("g", a)
        await layer.group_add("g", b)
        message = {"type": "run.frame", "frame": {"type": "batch", "events": [{"delta": "a"}]}}
        await layer.group_send("g", message)
        message["frame"]["events"][0]["delta"] = "mutated"
        message["frame"]["events"].append({"delta": "b"})
        got_a, got_b = await received(layer, a), await received(layer, b)
        assert got_a == got_b == {"type": "run.frame", "frame": {"type": "batch", "events": [{"delta": "a"}]}}
        assert got_a["frame"] is not got_b["frame"]

    async def test_expired_messages_and_memberships_are_still_dropped(self, monkeypatch):
        clock = FakeClock()
        monkeypatch.setattr(chat.layers, "time", clock)
        monkeypatch.setattr("channels.layers.time", clock)
        layer = FastInMemoryChannelLayer(expiry=60, group_expiry=3600)
        stale, member = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("g", stale)
        await layer.send(stale, {"type": "old"})  # never read
        clock.now += 61
        await layer.group_add("g", member)
        await layer.group_send("g", {"type": "new"})
        # The old message expired: its channel left the group and got nothing new.
        assert stale not in layer.channels and stale not in layer.groups["g"]
        assert (await received(layer, member)) == {"type": "new"}
        clock.now += 3601
        await layer.group_send("g", {"type": "later"})
        assert member not in layer.groups.get("g", {}) and member not in layer.channels

    async def test_expiry_is_swept_at_most_once_a_second(self, monkeypatch):
        clock = FakeClock()
        monkeypatch.setattr(chat.layers, "time", clock)
        monkeypatch.setattr("channels.layers.time", clock)
        layer = FastInMemoryChannelLayer(expiry=10)
        idle, other = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("g", other)
        await layer.send(idle, {"type": "old"})
        clock.now += 10.5  # the message has expired …
        layer._swept_at = clock.now - 0.5  # … but the last sweep was half a second ago
        await layer.group_send("g", {"type": "x"})
        assert idle in layer.channels
        clock.now += 0.6
        await layer.group_send("g", {"type": "y"})
        assert idle not in layer.channels
        await layer.send(idle, {"type": "old again"})
        clock.now += 10.5
        layer._swept_at = clock.now
        monkeypatch.setattr(chat.layers, "SWEEP_EVERY_S", 0)  # no wait between sweeps
        await layer.group_send("g", {"type": "z"})
        assert idle not in layer.channels

    async def test_a_full_channel_raises_on_send_and_is_skipped_by_group_send(self):
        layer = FastInMemoryChannelLayer(capacity=2)
        full, free = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("g", full)
        await layer.group_add("g", free)
        await layer.send(full, {"type": "1"})
        await layer.send(full, {"type": "2"})
        with pytest.raises(ChannelFull):
            await layer.send(full, {"type": "3"})
        await layer.group_send("g", {"type": "to all"})
        assert (await received(layer, free)) == {"type": "to all"}
        assert [await received(layer, full), await received(layer, full)] == [{"type": "1"}, {"type": "2"}]

    def test_a_server_without_redis_imports_neither_redis_nor_the_chart_library(self):
        # ~5 MB (redis, msgpack) and ~40 MB (matplotlib, numpy) a one-process server never uses
        # until someone opens an evaluation chart.
        code = (
            "import os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'fusionsite.settings';"
            "import fusionsite.asgi; from django.urls import resolve; resolve('/');"
            "from channels.layers import get_channel_layer; print(type(get_channel_layer()).__name__);"
            "print(sorted({'redis', 'channels_redis', 'matplotlib', 'numpy'} & set(sys.modules)))"
        )
        env = {**os.environ, "REDIS_URL": "", "FUSION_RENDER_PROCESSES": "0"}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["FastInMemoryChannelLayer", "[]"]

    def test_settings_use_it_without_redis(self):
        code = "import fusionsite.settings as s; print(s.CHANNEL_LAYERS['default']['BACKEND'])"

        def backend(redis_url: str) -> str:
            env = {**os.environ, "REDIS_URL": redis_url}
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert backend("") == "chat.layers.FastInMemoryChannelLayer"
        assert backend("redis://127.0.0.1:6390/0") != "chat.layers.FastInMemoryChannelLayer"
        if not django_settings.REDIS_URL:
            assert django_settings.CHANNEL_LAYERS["default"]["BACKEND"] == "chat.layers.FastInMemoryChannelLayer"


# --------------------------------------------------------------------------- 5. shared HTTP clients


async def _close_shared_clients(loop: asyncio.AbstractEventLoop) -> None:
    for client in transport._shared_clients.pop(loop, None) or []:
        if client is not None:
            await client.aclose()


class CookieServer:
    """/set answers with a Set-Cookie; /echo answers with the Cookie header it got."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib API)
                body = (self.headers.get("Cookie") or "").encode()
                self.send_response(200)
                if self.path == "/set":
                    self.send_header("Set-Cookie", "session=secret-of-user-a; Path=/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestSharedHttp:
    async def test_calls_rotate_over_the_shards_and_come_back(self):
        loop = asyncio.get_running_loop()
        try:
            clients = [transport.shared_http() for _ in range(transport.HTTP_SHARDS)]
            assert len({id(c) for c in clients}) == transport.HTTP_SHARDS
            again = [transport.shared_http() for _ in range(transport.HTTP_SHARDS)]
            assert all(a is c for a, c in zip(again, clients, strict=True))  # back after HTTP_SHARDS calls
            assert all(not c.is_closed for c in clients)
        finally:
            await _close_shared_clients(loop)

    def test_another_event_loop_gets_other_clients(self):
        async def take() -> tuple[asyncio.AbstractEventLoop, list[httpx.AsyncClient]]:
            return asyncio.get_running_loop(), [transport.shared_http() for _ in range(transport.HTTP_SHARDS)]

        got = []
        for _ in range(2):
            loop = asyncio.new_event_loop()
            try:
                got.append(loop.run_until_complete(take()))
                loop.run_until_complete(_close_shared_clients(got[-1][0]))
            finally:
                loop.close()
        assert not {id(c) for c in got[0][1]} & {id(c) for c in got[1][1]}

    async def test_a_cookie_set_by_a_server_is_not_sent_back(self):
        loop = asyncio.get_running_loop()
        with CookieServer() as base:
            async with httpx.AsyncClient() as plain:  # the control: an ordinary client keeps it
                await plain.get(f"{base}/set")
                assert (await plain.get(f"{base}/echo")).text == "session=secret-of-user-a"
            try:
                shared = transport.shared_http()
                response = await shared.get(f"{base}/set")
                assert "session=secret-of-user-a" in response.headers["set-cookie"]
                assert (await shared.get(f"{base}/echo")).text == ""
                assert len(shared.cookies) == 0
            finally:
                await _close_shared_clients(loop)

    async def test_a_chat_client_leaves_a_shared_client_open(self):
        loop = asyncio.get_running_loop()
        try:
            shared = transport.shared_http()
            client = fusion_client.ChatClient(None, http=shared)  # type: ignore[arg-type]
            await client.aclose()
            assert not shared.is_closed
            own = fusion_client.ChatClient(None)  # type: ignore[arg-type]
            await own.aclose()
            assert own._http.is_closed
        finally:
            await _close_shared_clients(loop)

    async def test_sniffio_is_installed_for_httpcore(self):
        import httpcore._synchronization

        assert importlib.util.find_spec("sniffio") is not None
        import sniffio

        assert sniffio.current_async_library() == "asyncio"
        assert httpcore._synchronization.current_async_library() == "asyncio"
        assert "sniffio" in sys.modules  # imported once, not a failed import (a sys.path walk) per request
        with open(django_settings.BASE_DIR / "requirements.txt") as f:
            assert re.search(r"^sniffio==", f.read(), re.MULTILINE)


# --------------------------------------------------------------------------- 6. reads once; the start path


class TestReadsOnce:
    def test_inside_reads_once_a_key_is_read_once(self):
        reads: list[str] = []

        def read(name: str):
            return lambda: reads.append(name) or f"value of {name}"

        with memo.reads_once():
            assert memo.memoized("a", read("a")) == "value of a"
            assert memo.memoized("a", read("a")) == "value of a"
            assert memo.memoized("b", read("b")) == "value of b"
            memo.memo_update("rows", {"x": 1})
            memo.memo_update("rows", {"y": 2, "x": 3})
            got = memo.memo_get("rows")
            assert got == {"x": 3, "y": 2}
            got["z"] = 9  # a copy
            assert memo.memo_get("rows") == {"x": 3, "y": 2} and memo.memo_get("other") == {}
        assert reads == ["a", "b"]

    def test_outside_every_call_reads(self):
        reads: list[int] = []
        assert memo.memoized("a", lambda: reads.append(1) or 1) == 1
        assert memo.memoized("a", lambda: reads.append(1) or 1) == 1
        assert reads == [1, 1]
        memo.memo_update("rows", {"x": 1})
        assert memo.memo_get("rows") == {}
        with memo.reads_once():
            memo.memoized("a", lambda: reads.append(2) or 2)
        with memo.reads_once():  # a new unit of work starts empty
            memo.memoized("a", lambda: reads.append(3) or 3)
        assert reads == [1, 1, 2, 3]

    async def test_each_task_has_its_own_memo(self):
        reads: list[str] = []

        async def unit(name: str) -> str:
            with memo.reads_once():
                await asyncio.sleep(0.01)
                return memo.memoized("k", lambda: reads.append(name) or name)

        assert await asyncio.gather(unit("a"), unit("b")) == ["a", "b"]
        assert sorted(reads) == ["a", "b"]


START_SCRIPTS = {"m/a": {"content": "x"}, "m/b": {"content": "y"}, "m/an": {"content": "{}"}, "m/w": {"content": "z"}}
START_PANEL = {
    "members": [{"model": "m/a"}, {"model": "m/b"}],
    "analyst": {"model": "m/an"},
    "writer": {"model": "m/w"},
}


@pytest.fixture
def start_upstream(settings, scripted_thread):
    return serve_from(settings, scripted_thread(START_SCRIPTS))


def start_in(user: Any, conversation: Conversation) -> tuple[Run, Any, dict[str, Any]]:
    return services._start_and_read(
        user=user,
        conversation_id=conversation.pk,
        client_run_id=uuid.uuid4().hex,
        prompt="Why is the sky blue?",
        panel_data=START_PANEL,
        follow_up_mode=None,
    )


@pytest.mark.django_db(transaction=True)
class TestStartPath:
    @pytest.mark.parametrize(
        ("daily_limit", "first_budget", "second_budget"),
        [
            (0, 15, 19),  # no daily limit (as the lead profiled): 14 and 17 now
            (5.0, 16, 19),  # the default daily limit adds today's spend and reservations: 16 and 19 now
        ],
    )
    def test_query_budget_of_a_start(
        self, settings, alice, start_upstream, django_assert_max_num_queries, daily_limit, first_budget, second_budget
    ):
        settings.FUSION_DAILY_SPEND_LIMIT_USD = daily_limit
        start_in(alice, Conversation.objects.create(user=alice, title="warm"))  # the catalogue is fetched once
        conversation = Conversation.objects.create(user=alice)
        with django_assert_max_num_queries(first_budget):
            run, request, inputs = start_in(alice, conversation)
        assert request is not None and set(inputs) == {"registry", "price_lookup", "no_tool_models"}
        Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETE, answer="Rayleigh.")
        with django_assert_max_num_queries(second_budget):
            second, request, _ = start_in(alice, conversation)
        assert second.turn.index == 1 and request is not None
        assert request.messages[-2] == {"role": "assistant", "content": "Rayleigh."}

    def test_a_start_reads_the_catalogue_and_keys_once(self, alice, start_upstream):
        start_in(alice, Conversation.objects.create(user=alice, title="warm"))
        with CaptureQueriesContext(connection) as queries:
            start_in(alice, Conversation.objects.create(user=alice))
        tables = [q["sql"] for q in queries.captured_queries]
        assert sum('FROM "chat_cataloguecache"' in s for s in tables) == 1
        assert sum('FROM "chat_providerkey"' in s for s in tables) == 1

    def test_a_start_beside_a_running_run_is_busy_and_leaves_no_turn(self, alice, start_upstream):
        conversation = Conversation.objects.create(user=alice)
        running, _, _ = start_in(alice, conversation)
        assert running.status == RunStatus.RUNNING
        with pytest.raises(RunError) as refused:
            start_in(alice, conversation)
        assert refused.value.code == "busy"
        assert Turn.objects.filter(conversation=conversation).count() == 1
        assert Run.objects.filter(conversation=conversation).count() == 1

    def test_the_same_client_run_id_again_is_that_run_not_busy(self, alice, start_upstream):
        conversation = Conversation.objects.create(user=alice)
        client_run_id = uuid.uuid4().hex
        kw = {"prompt": "Hi", "panel_data": START_PANEL, "follow_up_mode": None}
        first, _, _ = services._start_and_read(
            user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, **kw
        )
        again, request, inputs = services._start_and_read(
            user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, **kw
        )
        assert again.pk == first.pk and request is None and inputs == {}


# --------------------------------------------------------------------------- 7. database threads


@pytest.mark.django_db(transaction=True)
class TestDbThread:
    async def test_it_runs_in_a_fusion_db_thread_and_returns_the_value(self, alice):
        def work(x: int, *, y: int) -> tuple[str, int, int]:
            return threading.current_thread().name, x + y, Conversation.objects.filter(user=alice).count()

        name, total, count = await dbthread.in_db_thread(work, 2, y=3)
        assert name.startswith("fusion-db") and name != threading.current_thread().name
        assert (total, count) == (5, 0)

    async def test_its_connection_stays_open_between_calls(self, alice):
        def open_connection() -> Any:
            connection.ensure_connection()
            return id(connection.connection)

        if dbthread.db_threads() > 1:
            pytest.skip("several threads: the next call may run in another one")
        first = await dbthread.in_db_thread(open_connection)
        assert (
            await dbthread.in_db_thread(lambda: id(connection.connection) if connection.connection else None) == first
        )

    async def test_an_exception_is_raised_again_and_the_connection_closed(self, alice):
        def fail() -> None:
            connection.ensure_connection()
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await dbthread.in_db_thread(fail)
        assert await dbthread.in_db_thread(lambda: connection.connection) is None
        assert await dbthread.in_db_thread(lambda: Conversation.objects.count()) == 0

    def test_one_thread_on_sqlite_unless_configured(self, settings):
        if connection.vendor == "sqlite":
            assert dbthread.db_threads() == 1
        else:
            assert dbthread.db_threads() == 4
        settings.FUSION_DB_THREADS = 3
        assert dbthread.db_threads() == 3


# --------------------------------------------------------------------------- 8. starts in batches


def batch_item(user: Any, conversation: Conversation, *, session: tuple[str, int] | None = None, **over: Any) -> Any:
    from chat.runs.starts import StartItem

    start = {
        "conversation_id": conversation.pk,
        "client_run_id": uuid.uuid4().hex,
        "prompt": "Why is the sky blue?",
        "panel_data": START_PANEL,
        "follow_up_mode": None,
        **over,
    }
    return StartItem(user=user, start=start, future=None, session=session)  # type: ignore[arg-type]


def signed_in_session(user: Any) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key or ""


@pytest.mark.django_db(transaction=True)
class TestStartBatches:
    def test_a_batch_starts_each_run_with_one_read_of_what_they_share(self, alice, bob, start_upstream):
        from chat.runs.starts import start_many

        start_in(alice, Conversation.objects.create(user=alice, title="warm"))  # the catalogue is fetched once
        items = [batch_item(u, Conversation.objects.create(user=u)) for u in (alice, bob, alice, bob)]
        with CaptureQueriesContext(connection) as queries:
            results = start_many(items)
        assert all(isinstance(r, tuple) and r[1] is not None for r in results)
        assert [r[0].user_id for r in results] == [alice.pk, bob.pk, alice.pk, bob.pk]  # type: ignore[index]
        sql = [q["sql"] for q in queries.captured_queries]
        assert sum('FROM "chat_cataloguecache"' in s for s in sql) == 1
        assert sum('FROM "chat_providerkey"' in s for s in sql) == 1
        assert sum(s.startswith('SELECT "chat_conversation"') for s in sql) == 1
        assert Run.objects.filter(status=RunStatus.RUNNING).count() == 5

    def test_one_refused_start_leaves_the_others_of_its_batch(self, alice, start_upstream):
        from chat.runs.starts import start_many

        busy = Conversation.objects.create(user=alice)
        start_in(alice, busy)
        items = [
            batch_item(alice, Conversation.objects.create(user=alice)),
            batch_item(alice, busy),  # a run is going there
            batch_item(alice, Conversation.objects.create(user=alice), prompt="   "),  # nothing to ask
            batch_item(alice, Conversation.objects.create(user=alice)),
        ]
        first, refused, empty, last = start_many(items)
        assert isinstance(first, tuple) and isinstance(last, tuple)
        assert isinstance(refused, RunError) and refused.code == "busy"
        assert isinstance(empty, RunError) and empty.code == "invalid"
        assert Turn.objects.filter(conversation=busy).count() == 1  # the refused start left no turn

    def test_the_concurrency_limit_counts_the_runs_started_earlier_in_the_batch(self, settings, alice, start_upstream):
        from chat.runs.starts import start_many

        settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER = 2
        results = start_many([batch_item(alice, Conversation.objects.create(user=alice)) for _ in range(3)])
        assert [isinstance(r, tuple) for r in results] == [True, True, False]
        assert isinstance(results[2], RunError) and results[2].code == "limit"
        assert Run.objects.filter(user=alice, status=RunStatus.RUNNING).count() == 2

    def test_the_daily_limit_counts_what_the_batch_reserved_before_but_not_a_refused_start(
        self, settings, alice, bob, start_upstream
    ):
        from chat.runs.starts import start_many

        settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER = 100
        settings.FUSION_DAILY_SPEND_LIMIT_USD = 1000
        busy = Conversation.objects.create(user=alice)
        held, _, _ = start_in(alice, busy)
        per_run = held.reserved_usd
        assert per_run > 0
        # Room for two more runs of alice's beside the one going, not three.
        settings.FUSION_DAILY_SPEND_LIMIT_USD = float(per_run * Decimal("3.5"))
        new = [Conversation.objects.create(user=alice) for _ in range(3)]
        results = start_many(
            [
                batch_item(alice, busy),  # refused as busy: reserves nothing
                batch_item(alice, new[0]),
                batch_item(bob, Conversation.objects.create(user=bob)),  # bob's own limit
                batch_item(alice, new[1]),
                batch_item(alice, new[2]),
            ]
        )
        kinds = [r.code if isinstance(r, RunError) else "started" for r in results]
        assert kinds == ["busy", "started", "started", "started", "spend_limit"]
        running = Run.objects.filter(user=alice, status=RunStatus.RUNNING)
        assert sum(r.reserved_usd for r in running) == 3 * per_run
        assert not Turn.objects.filter(conversation=new[2]).exists()

    def test_a_batch_counts_turns_and_locks_limits_once_for_all_of_its_starts(self, alice, bob, start_upstream):
        from chat.runs.starts import start_many

        conversations = [Conversation.objects.create(user=u) for u in (alice, bob, alice, bob)]
        for c in conversations:  # a turn each already
            run, _, _ = start_in(c.user, c)
            Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETE, answer="Rayleigh.")
        with CaptureQueriesContext(connection) as queries:
            results = start_many([batch_item(c.user, c) for c in conversations])
        assert [r[0].turn.index for r in results] == [1, 1, 1, 1]  # type: ignore[index]
        assert [r[1].messages[-2]["content"] for r in results] == ["Rayleigh."] * 4  # type: ignore[index]
        sql = [q["sql"] for q in queries.captured_queries]
        assert sum("COUNT(*)" in s and 'FROM "chat_turn"' in s for s in sql) == 0
        assert sum('FROM "chat_turn"' in s and "GROUP BY" in s for s in sql) == 1
        assert sum('FROM "chat_userlimits"' in s for s in sql) == 2  # the key flags, the lock
        assert sum('FROM "chat_spendentry"' in s for s in sql) == 1
        # History: the batch's earlier turns, their runs and the runs' answers, one query each.
        assert sum(s.startswith('SELECT "chat_turn"."id"') for s in sql) == 1
        assert sum('FROM "chat_run"' in s and '"turn_id" IN' in s for s in sql) == 1
        assert sum('FROM "chat_memberresponse"' in s and '"run_id" IN' in s for s in sql) == 1

    def test_a_start_whose_session_ended_is_refused_and_writes_nothing(self, alice, bob, start_upstream):
        from chat.runs.checks import SessionEnded
        from chat.runs.starts import start_many

        valid = (signed_in_session(alice), alice.pk)
        ended = ("no-such-session", bob.pk)
        bobs = Conversation.objects.create(user=bob)
        ok, gone = start_many(
            [
                batch_item(alice, Conversation.objects.create(user=alice), session=valid),
                batch_item(bob, bobs, session=ended),
            ]
        )
        assert isinstance(ok, tuple) and isinstance(gone, SessionEnded)
        assert not Turn.objects.filter(conversation=bobs).exists()

    async def test_simultaneous_starts_share_a_batch_and_each_gets_its_own_run(self, settings, alice, start_upstream):
        from channels.db import database_sync_to_async

        from chat.runs import starts

        settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER = 100
        conversations = [await database_sync_to_async(Conversation.objects.create)(user=alice) for _ in range(6)]
        sizes: list[int] = []
        real = starts.start_many

        def counting(items: list[Any]) -> list[Any]:
            sizes.append(len(items))
            return real(items)

        starts.start_many = counting  # type: ignore[assignment]
        try:
            batcher = starts.StartBatcher()
            results = await asyncio.gather(
                *(
                    batcher.start(
                        user=alice,
                        conversation_id=c.pk,
                        client_run_id=uuid.uuid4().hex,
                        prompt="Hi",
                        panel_data=START_PANEL,
                        follow_up_mode=None,
                    )
                    for c in conversations
                )
            )
        finally:
            starts.start_many = real  # type: ignore[assignment]
        assert [r[0].conversation_id for r in results] == [c.pk for c in conversations]
        assert sum(sizes) == 6 and len(sizes) < 6  # the ones that waited went together
        assert max(sizes) <= starts.MAX_BATCH


class TestReadWatch:
    async def test_a_deadline_passing_between_reads_does_not_cancel_other_work(self) -> None:
        from chat.fusion.client import _ReadWatch

        loop = asyncio.get_running_loop()
        call = SimpleNamespace(
            sent=loop.time(), last_token_at=None, total_deadline=loop.time() + 60, read_deadline=None
        )
        limits = SimpleNamespace(first_token=0.05, idle=0.05)
        call.next_deadline = lambda lim: min(call.sent + lim.first_token, call.total_deadline)
        call.read_deadline = lambda lim: (call.next_deadline(lim), "No first token within 0.05 s.")
        watch = _ReadWatch(loop, call, limits)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)  # the consumer's own work: past the deadline, not cancelled
        with pytest.raises(TimeoutError, match="No first token"):
            await watch.read(iter([]))  # the next read times out at once
        watch.close()

    async def test_a_deadline_passing_during_a_read_raises_timeout_and_leaves_the_task_uncancelled(self) -> None:
        from chat.fusion.client import _ReadWatch

        loop = asyncio.get_running_loop()
        call = SimpleNamespace(sent=loop.time(), last_token_at=None, total_deadline=loop.time() + 60)
        call.next_deadline = lambda lim: min(call.sent + lim.first_token, call.total_deadline)
        call.read_deadline = lambda lim: (call.next_deadline(lim), "No first token within 0.05 s.")
        watch = _ReadWatch(loop, call, SimpleNamespace(first_token=0.05, idle=0.05))  # type: ignore[arg-type]

        async def never() -> Any:
            await asyncio.sleep(10)

        class Chunks:
            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> bytes:
                await never()
                return b""

        with pytest.raises(TimeoutError):
            await watch.read(Chunks())
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)  # the task still runs normally
        watch.close()


class TestConsumerDispatch:
    async def test_run_frames_skip_channels_connection_cleanup(self, monkeypatch) -> None:
        from chat import consumers

        calls: list[str] = []

        async def cleanup() -> None:
            calls.append("cleanup")

        monkeypatch.setattr("channels.consumer.aclose_old_connections", cleanup)
        consumer = consumers.ConversationConsumer()
        sent: list[str] = []

        async def send_text(text: str) -> None:
            sent.append(text)

        consumer._send_text = send_text  # type: ignore[method-assign]
        await consumer.dispatch({"type": "run.frame", "text": '{"type":"pong"}'})
        assert sent == ['{"type":"pong"}'] and calls == []


# --------------------------------------------------------------------------- 9. the Redis layer's reader

PUMP_REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
async def pumped_layer() -> Any:
    import redis

    from chat.redis_layer import PumpedRedisChannelLayer

    try:
        redis.Redis.from_url(PUMP_REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        if os.environ.get("CI", "").strip().lower() == "true":
            raise
        pytest.skip(f"Redis is not running on 127.0.0.1:6379 ({exc})")
    layer = PumpedRedisChannelLayer(
        hosts=[{"address": PUMP_REDIS_URL, "socket_timeout": None}],
        capacity=1500,
        channel_capacity={"specific.*": 50_000},
    )
    await layer.flush()
    yield layer
    await layer.flush()


class TestPumpedRedisChannelLayer:
    async def test_a_group_message_reaches_each_of_the_process_channels_in_it(self, pumped_layer) -> None:
        a, b, other = [await pumped_layer.new_channel() for _ in range(3)]
        for channel in (a, b):
            await pumped_layer.group_add("conv_1", channel)
        await pumped_layer.group_add("conv_2", other)
        await pumped_layer.group_send("conv_1", {"type": "run.frame", "text": '{"type":"pong"}'})
        for channel in (a, b):
            got = await asyncio.wait_for(pumped_layer.receive(channel), 3)
            assert got == {"type": "run.frame", "text": '{"type":"pong"}'}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pumped_layer.receive(other), 0.3)

    async def test_thousands_of_frames_to_one_socket_arrive_all_and_in_order(self, pumped_layer) -> None:
        channel = await pumped_layer.new_channel()
        await pumped_layer.group_add("conv_1", channel)
        for i in range(1200):
            await pumped_layer.group_send("conv_1", {"type": "run.frame", "text": str(i)})
        got = [(await asyncio.wait_for(pumped_layer.receive(channel), 5))["text"] for _ in range(1200)]
        assert got == [str(i) for i in range(1200)]

    async def test_more_messages_than_one_channel_holds_fit_in_the_process_inbox(self, pumped_layer) -> None:
        # 40 sockets × 100 frames waiting at once: 4,000 in the process's one Redis inbox, more
        # than the per-channel capacity (1500) that channels_redis checked it against.
        channels = [await pumped_layer.new_channel() for _ in range(40)]
        for i, channel in enumerate(channels):
            await pumped_layer.group_add(f"conv_{i}", channel)
        for n in range(100):
            for i in range(len(channels)):
                await pumped_layer.group_send(f"conv_{i}", {"type": "run.frame", "text": f"{i}:{n}"})
        for i, channel in enumerate(channels):
            got = [(await asyncio.wait_for(pumped_layer.receive(channel), 5))["text"] for _ in range(100)]
            assert got == [f"{i}:{n}" for n in range(100)]

    async def test_a_direct_send_to_a_process_channel_arrives(self, pumped_layer) -> None:
        channel = await pumped_layer.new_channel()
        await pumped_layer.send(channel, {"type": "run.control", "action": "stop"})
        assert await asyncio.wait_for(pumped_layer.receive(channel), 3) == {"type": "run.control", "action": "stop"}


# --------------------------------------------------------------------------- 10. finished runs are freed

FREED_SCRIPTS = {
    "m/a": {"content": "Rayleigh scattering. " * 20, "tokens_per_s": 4000},
    "m/b": {"content": "Shorter waves scatter more. " * 20, "tokens_per_s": 4000},
    "m/slow": {"content": "slow " * 400, "tokens_per_s": 40, "chunk_chars": 4},
    "m/broken": {"faults": [{"type": "http", "status": 500, "times": -1}]},
    "m/an": {},
    "m/w": {"tokens_per_s": 4000},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestFinishedRunsAreFreed:
    """A finished run's objects (its streams and blocks, calls, analysis) are freed when the last
    reference goes, not at the next full garbage collection: at 50 live runs the garbage of the
    runs before them was most of the memory growth per run (0.55 → 0.43 MB)."""

    @pytest.mark.parametrize(
        ("members", "stop"),
        [(["m/a", "m/b"], False), (["m/a", "m/broken"], False), (["m/slow", "m/a"], True)],
        ids=["complete", "a member failed", "stopped"],
    )
    async def test_nothing_of_a_finished_run_waits_for_the_collector(self, settings, alice, scripted, members, stop):
        import gc
        import weakref

        serve_from(settings, await scripted(FREED_SCRIPTS, time_scale=1.0), checkpoint_s=0.05)
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        panel = {"members": [{"model": m} for m in members], "analyst": {"model": "m/an"}, "writer": {"model": "m/w"}}
        client_run_id = uuid.uuid4().hex
        frame, _ = await services.run_start(
            user=alice, conversation_id=conversation.pk, client_run_id=client_run_id, prompt="Why?", panel=panel
        )
        active = live.manager.get(uuid.UUID(frame["run"]))
        assert active is not None
        if stop:
            await asyncio.sleep(0.3)
            await services.run_stop(user=alice, conversation_id=conversation.pk, client_run_id=client_run_id)
        await asyncio.wait_for(active.done.wait(), 20)
        assert active.task is not None
        await asyncio.wait_for(asyncio.shield(active.task), 5)
        await asyncio.sleep(0.05)  # the connections' rest is read, the render jobs are back
        watched = [weakref.ref(o) for o in (active, active.fusion, active.state, active.frames, active.rendering)]
        status = active.state.status
        gc.collect()
        gc.disable()
        try:
            del active
            alive = [type(r()).__name__ for r in watched if r() is not None]
        finally:
            gc.enable()
        assert status == ("cancelled" if stop else "complete")
        assert alive == []
