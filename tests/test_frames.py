"""Frames of a live run (chat.runs.frames): offsets, coalescing, barriers, the flush. No database,
no channel layer: the flusher is given a plain coroutine to send with."""

from __future__ import annotations

import asyncio
from typing import Any

from chat.runs.frames import Coalescer, Flusher, Stream, payload


def delta(slot: int, text: str, kind: str = "panel.delta", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "slot": slot, "offset": 0, "delta": text, **extra}


class TestStreamOffsets:
    def test_each_delta_carries_the_length_of_the_text_before_it(self) -> None:
        stream = Stream()
        first, second = stream.feed("Hello "), stream.feed("world")
        assert (first["offset"], second["offset"]) == (0, 6)
        assert stream.text == "Hello world"

    def test_reasoning_has_offsets_of_its_own(self) -> None:
        stream = Stream()
        stream.feed("answer")
        assert stream.feed_reasoning("think")["offset"] == 0
        assert stream.feed_reasoning("ing")["offset"] == 5

    def test_a_finished_block_is_rendered_once_and_counted_as_consumed(self) -> None:
        stream = Stream()
        frame = stream.feed("First paragraph.\n\nSecond")
        assert frame["blocks"] == ["<p>First paragraph.</p>"]
        assert frame["consumed"] == len("First paragraph.\n\n")
        state = stream.state()
        assert state["html"] is None and state["blocks_html"] == "<p>First paragraph.</p>"
        assert state["content"][state["consumed"] :] == "Second"

    def test_only_the_first_delta_is_marked_first(self) -> None:
        stream = Stream()
        assert stream.take_first() is True
        assert stream.take_first() is False
        stream.reset()
        assert stream.take_first() is True and stream.text == ""

    def test_a_finished_stream_shows_its_whole_html(self) -> None:
        stream = Stream(text="**done**", html="<p><strong>done</strong></p>")
        assert stream.state() == {
            "content": "**done**",
            "html": "<p><strong>done</strong></p>",
            "blocks_html": "",
            "consumed": 8,
        }

    def test_a_stored_finished_stream_is_rendered_when_first_asked(self) -> None:
        stream = Stream(text="*x*", finished=True)
        assert stream.html is None
        assert stream.state()["html"] == "<p><em>x</em></p>"


class TestCoalescing:
    def test_consecutive_deltas_of_one_stream_merge(self) -> None:
        frames = Coalescer()
        frames.add(delta(0, "a", blocks=["<p>1</p>"], consumed=3))
        frames.add(delta(0, "b", blocks=["<p>2</p>"], consumed=6))
        [merged] = frames.take()
        assert merged["delta"] == "ab" and merged["offset"] == 0
        assert merged["blocks"] == ["<p>1</p>", "<p>2</p>"] and merged["consumed"] == 6

    def test_deltas_of_different_slots_and_kinds_stay_apart(self) -> None:
        frames = Coalescer()
        frames.add(delta(0, "a"))
        frames.add(delta(1, "b"))
        frames.add(delta(0, "r", kind="panel.reasoning.delta"))
        frames.add(delta(0, "c"))
        taken = frames.take()
        assert [(f["type"], f["slot"], f["delta"]) for f in taken] == [
            ("panel.delta", 0, "ac"),
            ("panel.delta", 1, "b"),
            ("panel.reasoning.delta", 0, "r"),
        ]

    def test_any_other_event_is_a_barrier(self) -> None:
        frames = Coalescer()
        frames.add(delta(0, "a"))
        frames.add({"type": "panel.completed", "slot": 1})
        frames.add(delta(0, "b"))
        assert [f.get("delta") for f in frames.take()] == ["a", None, "b"]

    def test_final_deltas_merge_without_a_slot(self) -> None:
        frames = Coalescer()
        frames.add({"type": "final.delta", "offset": 0, "delta": "x", "blocks": [], "consumed": 0})
        frames.add({"type": "final.delta", "offset": 1, "delta": "y", "blocks": [], "consumed": 0})
        assert [f["delta"] for f in frames.take()] == ["xy"]

    def test_take_empties_the_buffer_and_closes_open_deltas(self) -> None:
        frames = Coalescer()
        frames.add(delta(0, "a"))
        frames.take()
        frames.add(delta(0, "b"))
        assert [f["delta"] for f in frames.take()] == ["b"]
        assert frames.take() == []


class TestPayload:
    def test_none_one_or_a_batch(self) -> None:
        assert payload([]) is None
        assert payload([{"type": "x"}]) == {"type": "x"}
        assert payload([{"type": "x"}, {"type": "y"}]) == {"type": "batch", "events": [{"type": "x"}, {"type": "y"}]}


class TestFlusher:
    async def test_an_urgent_frame_goes_out_before_the_interval(self) -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        flusher = Flusher(run_id="r1", send=send, interval=60)
        flusher.emit(delta(0, "a"))
        flusher.emit({"type": "panel.added", "slot": 0}, now=True)
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.001)
        assert sent == [
            {
                "type": "batch",
                "events": [{**delta(0, "a"), "run": "r1"}, {"type": "panel.added", "slot": 0, "run": "r1"}],
            }
        ]
        await asyncio.wait_for(flusher.aclose(), 1)

    async def test_close_sends_what_is_left_and_ends(self) -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        flusher = Flusher(run_id="r1", send=send, interval=60)
        flusher.emit(delta(0, "a"), now=True)  # the first delta goes at once …
        await asyncio.sleep(0)
        flusher.emit(delta(0, "b"))  # … so this one waits for the interval
        flusher.emit({"type": "completed"})
        await asyncio.wait_for(flusher.aclose(), 1)
        assert sent == [
            {**delta(0, "a"), "run": "r1"},
            {"type": "batch", "events": [{**delta(0, "b"), "run": "r1"}, {"type": "completed", "run": "r1"}]},
        ]

    async def test_nothing_is_sent_when_nothing_is_pending(self) -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        flusher = Flusher(run_id="r1", send=send, interval=0.001)
        await asyncio.sleep(0.01)
        await asyncio.wait_for(flusher.aclose(), 1)
        assert sent == []

    async def test_frames_wait_for_one_interval_after_the_last_flush_and_no_longer(self) -> None:
        sent: list[tuple[float, dict[str, Any]]] = []
        loop = asyncio.get_running_loop()

        async def send(message: dict[str, Any]) -> None:
            sent.append((loop.time(), message))

        flusher = Flusher(run_id="r1", send=send, interval=0.05)
        t0 = loop.time()
        flusher.emit(delta(0, "a"), now=True)
        await asyncio.sleep(0.01)
        flusher.emit(delta(0, "b"))
        flusher.emit(delta(0, "c"))
        await asyncio.sleep(0.08)
        assert [m for _, m in sent] == [{**delta(0, "a"), "run": "r1"}, {**delta(0, "b"), "delta": "bc", "run": "r1"}]
        assert 0.045 <= sent[1][0] - t0 < 0.075  # one interval after the first flush, merged
        await asyncio.sleep(0.1)  # an idle stream: nothing waits, nothing is sent
        flusher.emit(delta(1, "x"))
        await asyncio.sleep(0.005)
        assert len(sent) == 3  # past the interval since the last flush: sent at once
        await flusher.aclose()

    async def test_a_failed_send_is_logged_and_later_frames_still_go(self, caplog) -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if not sent:
                sent.append({"failed": True})
                raise RuntimeError("layer down")
            sent.append(message)

        flusher = Flusher(run_id="r1", send=send, interval=0.001)
        flusher.emit({"type": "panel.added", "slot": 0}, now=True)
        await asyncio.sleep(0.01)
        flusher.emit({"type": "completed"})
        await flusher.aclose()
        assert sent[-1] == {"type": "completed", "run": "r1"}
        assert "sending frames of run r1 failed" in caplog.text


class TestFlusherSendingAtOnce:
    """With ``send_nowait`` (the in-memory layer), a flush sends from its own callback: no task."""

    @staticmethod
    def flusher(interval: float, answer: bool = True) -> tuple[Flusher, list[Any], list[Any]]:
        now: list[Any] = []
        later: list[Any] = []

        async def send(message: dict[str, Any]) -> None:
            later.append(message)

        def send_nowait(message: dict[str, Any]) -> bool:
            if answer:
                now.append(message)
            return answer

        return Flusher(run_id="r1", send=send, send_nowait=send_nowait, interval=interval), now, later

    async def test_an_urgent_frame_is_sent_inside_emit(self) -> None:
        flusher, now, later = self.flusher(60)
        flusher.emit({"type": "panel.added", "slot": 0}, now=True)
        assert now == [{"type": "panel.added", "slot": 0, "run": "r1"}]  # no await in between
        assert flusher._sending is None
        flusher.emit(delta(0, "a"))
        await asyncio.wait_for(flusher.aclose(), 1)
        assert now[-1] == {**delta(0, "a"), "run": "r1"} and later == []

    async def test_coalesced_frames_go_from_the_timer(self) -> None:
        flusher, now, later = self.flusher(0.02)
        flusher.emit(delta(0, "a"), now=True)
        flusher.emit(delta(0, "b"))
        flusher.emit(delta(0, "c"))
        assert len(now) == 1
        await asyncio.sleep(0.06)
        assert now[1] == {**delta(0, "b"), "delta": "bc", "run": "r1"} and later == []
        await flusher.aclose()

    async def test_when_it_cannot_the_frames_go_through_send(self) -> None:
        flusher, now, later = self.flusher(60, answer=False)
        flusher.emit(delta(0, "a"), now=True)
        flusher.emit({"type": "completed"})
        await asyncio.wait_for(flusher.aclose(), 1)
        assert now == [] and [m.get("type") for m in later] == ["panel.delta", "completed"]

    async def test_a_failing_send_nowait_is_logged_and_later_frames_still_go(self, caplog) -> None:
        sent: list[Any] = []

        def send_nowait(message: dict[str, Any]) -> bool:
            if not sent:
                sent.append("failed")
                raise RuntimeError("layer down")
            sent.append(message)
            return True

        async def send(message: dict[str, Any]) -> None:
            raise AssertionError("not used")

        flusher = Flusher(run_id="r1", send=send, send_nowait=send_nowait, interval=0.001)
        flusher.emit({"type": "panel.added", "slot": 0}, now=True)
        flusher.emit({"type": "completed"}, now=True)
        await flusher.aclose()
        assert sent == ["failed", {"type": "completed", "run": "r1"}]
        assert "sending frames of run r1 failed" in caplog.text
