"""Frames of a live run: streamed text with its offsets, coalescing, and the flush to the group.

No database and no channel layer here: ``Flusher`` is given the coroutine that sends a payload
(chat.runs.live sends it to the conversation's group), so all of this is tested alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chat.render import IncrementalRenderer, RenderUpdate, render_markdown
from chat.render.blocks import BlockSource, render_sources
from chat.render.bounds import MAX_BLOCK_CHARS, MAX_BLOCK_LINES

log = logging.getLogger(__name__)

Frame = dict[str, Any]

# What may be a reference-style link definition ("[id]: url"), anywhere: at the start of a line,
# in a quote or a list item. It may resolve links in other blocks, so a text that has one is
# rendered whole rather than from its live blocks (a false alarm only costs that render).
_REFERENCE_DEFINITION_RE = re.compile(r"\[[^\]\n]*\]:")

# Deltas of one stream that follow each other merge into one frame until the next flush.
COALESCED = frozenset({"panel.delta", "panel.reasoning.delta", "final.delta"})


@dataclass
class RenderJob:
    """Markdown to render before an event is applied: block *sources* (plain strings, so the
    rendering can run anywhere: ``chat.render.pool``), and *finish*, which takes their HTML
    (one string per source, in order) on the event loop."""

    sources: list[BlockSource]
    finish: Callable[[list[str]], Any]

    @property
    def chars(self) -> int:
        return sum(len(source) for source, _ in self.sources)


@dataclass
class Stream:
    """One streamed text (a member's answer or the fused answer) and its live renderer.

    ``offset`` of a delta is the length of the text before it: a client applies a delta whose
    offset equals its length, drops what it already has, and asks for a snapshot on a gap.
    """

    text: str = ""
    reasoning: str = ""
    renderer: IncrementalRenderer = field(default_factory=IncrementalRenderer)
    blocks: list[str] = field(default_factory=list)
    html: str | None = None  # the whole answer rendered, once it is finished
    first_sent: bool = False
    # A finished text read back from the database: its HTML is rendered when first asked for.
    finished: bool = False

    def reset(self) -> None:
        self.text, self.reasoning, self.html, self.first_sent = "", "", None, False
        self.renderer = IncrementalRenderer()
        self.blocks = []
        self.consumed = 0
        self._whole = None

    # How much of ``text`` the blocks hold. Kept here, not read off the renderer: a render job
    # cut its blocks off the renderer before their HTML is back, and a snapshot taken meanwhile
    # must not count text that neither its blocks nor its tail show.
    consumed: int = 0
    _whole: tuple[str, str] | None = None  # (text, its whole HTML), once computed

    def whole_html(self, text: str) -> str:
        """The finished *text* as HTML, rendered here (:meth:`whole_job` renders it elsewhere)."""
        job = self.whole_job(text)
        if job is not None:
            job.finish(render_sources(job.sources))
        assert self._whole is not None and self._whole[0] == text
        return self._whole[1]

    def whole_job(self, text: str) -> RenderJob | None:
        """What rendering the finished *text* takes, or None when nothing is left to render.
        When it is what streamed, the live blocks are already that HTML: only the tail is
        rendered (no second conversion of the whole answer), unless a reference-style
        definition may link across blocks or the text is over one unit's limits."""
        if self._whole is not None and self._whole[0] == text:
            return None
        if not text:
            self._whole = (text, "")
            return None
        if self._streamed(text):
            pending = self.renderer.split_finish()

            def finish_streamed(html: list[str]) -> None:
                self.renderer.complete(pending, html)
                self._whole = (text, "\n".join(self.renderer.blocks))

            return RenderJob(pending.sources, finish_streamed)

        def finish_whole(html: list[str]) -> None:
            self._whole = (text, html[0])

        return RenderJob([(text, False)], finish_whole)

    def _streamed(self, text: str) -> bool:
        return (
            text == self.text
            and not self.renderer.done
            and len(text) <= MAX_BLOCK_CHARS
            and text.count("\n") < MAX_BLOCK_LINES
            and not _REFERENCE_DEFINITION_RE.search(text)
        )

    def delta_job(self, delta: str) -> RenderJob:
        """What *delta* takes to render (often nothing); its ``finish`` returns the
        ``RenderUpdate`` to pass to :meth:`feed`. Any delta may finish a block: one ends when
        the next one starts, so a delta without a newline can end the block before it."""
        pending = self.renderer.split(delta)
        return RenderJob(pending.sources, lambda html: self.renderer.complete(pending, html))

    def feed(self, delta: str, update: RenderUpdate | None = None) -> dict[str, Any]:
        """Append *delta*; *update* is the renderer's result when it was computed ahead, off the loop."""
        offset = len(self.text)
        self.text += delta
        update = update if update is not None else self.renderer.feed(delta)
        self.blocks.extend(update.blocks)
        self.consumed = update.consumed
        return {"offset": offset, "delta": delta, "blocks": list(update.blocks), "consumed": self.consumed}

    def text_only(self) -> RenderUpdate:
        """The update for a delta whose blocks are still rendering elsewhere: no blocks, and
        ``consumed`` where it is (:meth:`add_blocks` moves it when their HTML is back)."""
        return RenderUpdate([], "", self.consumed, False)

    def add_blocks(self, update: RenderUpdate) -> dict[str, Any]:
        """Finished blocks whose HTML came back after their text was sent: a delta with no new
        text, at the current end of it, that carries them (a client appends the blocks)."""
        self.blocks.extend(update.blocks)
        self.consumed = update.consumed
        return {"offset": len(self.text), "delta": "", "blocks": list(update.blocks), "consumed": self.consumed}

    def feed_reasoning(self, delta: str) -> dict[str, Any]:
        offset = len(self.reasoning)
        self.reasoning += delta
        return {"offset": offset, "delta": delta}

    def take_first(self) -> bool:
        """True for the first delta of this stream (sent at once, not coalesced)."""
        first = not self.first_sent
        self.first_sent = True
        return first

    def state(self) -> dict[str, Any]:
        """The text for a snapshot: the whole HTML once finished, else finished blocks + consumed."""
        if self.html is None and self.finished:
            self.html = render_markdown(self.text) if self.text else ""
        if self.html is not None:
            return {"content": self.text, "html": self.html, "blocks_html": "", "consumed": len(self.text)}
        return {
            "content": self.text,
            "html": None,
            "blocks_html": "".join(self.blocks),
            "consumed": self.consumed,
        }


class Coalescer:
    """Frames waiting for the next flush; consecutive deltas of one stream merge into one."""

    def __init__(self) -> None:
        self.pending: list[Frame] = []
        self._open: dict[tuple[str, int], int] = {}  # (type, slot) → index of the delta that can grow

    def add(self, frame: Frame) -> None:
        kind = frame["type"]
        if kind not in COALESCED:
            # Any other event is a barrier: later deltas must not merge into earlier ones.
            self._open.clear()
            self.pending.append(frame)
            return
        key = (kind, frame.get("slot", -1))
        index = self._open.get(key)
        if index is None:
            self._open[key] = len(self.pending)
            self.pending.append(frame)
            return
        merged = self.pending[index]
        merged["delta"] += frame["delta"]
        if "blocks" in frame:
            merged["blocks"].extend(frame["blocks"])
            merged["consumed"] = frame["consumed"]

    def take(self) -> list[Frame]:
        frames, self.pending = self.pending, []
        self._open.clear()
        return frames


def frame_message(frame: Frame) -> dict[str, str]:
    """The channel-layer message for a frame: encoded once here, not once per socket (and a
    string is what the in-memory layer copies and channels_redis packs cheapest)."""
    return {"type": "run.frame", "text": json.dumps(frame, separators=(",", ":"))}


def payload(frames: list[Frame]) -> Frame | None:
    """What one flush sends: a lone frame as itself, several as a ``batch``, none as nothing."""
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else {"type": "batch", "events": frames}


async def _closed(message: Frame) -> None:
    log.warning("a frame sent after its run's end was dropped: %s", message.get("type"))


class Flusher:
    """Sends a run's coalesced frames at most every *interval* seconds, or at once when one is urgent.

    No task of its own and no polling: a timer is armed only while frames wait, for the moment
    one interval after the last flush (or at once, when that moment has passed). One send is in
    flight at a time, so a run's frames reach the group in order.
    """

    def __init__(
        self,
        *,
        run_id: str,
        send: Callable[[Frame], Awaitable[None]],
        interval: float,
        send_nowait: Callable[[Frame], bool] | None = None,
    ) -> None:
        self.run_id = run_id
        self.send = send
        # Sends a payload at once, without a task, when it can (the in-memory layer): False
        # means it could not, and the payload goes through ``send`` instead.
        self.send_nowait = send_nowait
        self.interval = interval
        self.frames = Coalescer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self._last = float("-inf")  # loop time of the last flush
        self._urgent = False

    def emit(self, frame: Frame, *, now: bool = False) -> None:
        frame["run"] = self.run_id
        self.frames.add(frame)
        self._urgent = self._urgent or now
        self._schedule()

    def _schedule(self) -> None:
        if self._sending is not None or not self.frames.pending:
            return  # the send in flight looks again when it is done
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._urgent:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._start_send()
        elif self._timer is None:
            self._timer = loop.call_at(max(loop.time(), self._last + self.interval), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._sending is None:
            self._start_send()

    def _start_send(self) -> None:
        assert self._loop is not None
        self._urgent = False
        self._last = self._loop.time()
        message = payload(self.frames.take())
        if message is None:
            return
        if self._sent_now(message):
            return
        self._sending = self._loop.create_task(self._send(message))

    def _sent_now(self, message: Frame) -> bool:
        if self.send_nowait is None:
            return False
        try:
            return self.send_nowait(message)
        except Exception:  # as in _send: these frames are lost, the client's offsets catch it
            log.exception("sending frames of run %s failed", self.run_id)
            return True

    async def _send(self, message: Frame) -> None:
        try:
            await self.send(message)
        except Exception:  # the layer failed: these frames are lost, the client's offsets catch it
            log.exception("sending frames of run %s failed", self.run_id)
        finally:
            self._sending = None
            self._schedule()

    async def flush(self) -> None:
        """Send what waits now, after the send in flight (if any)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last = asyncio.get_running_loop().time()
        message = payload(self.frames.take())
        if message is not None and not self._sent_now(message):
            await self.send(message)

    async def aclose(self) -> None:
        """Send everything left, in order, and stop the timer. Never cancel a send in flight:
        the frames it had taken would be lost (the last deltas of the fused answer, say)."""
        await self.flush()
        while self._sending is not None or self.frames.pending:
            await self.flush()
        # The sends are the run's bound methods (a cycle through the run): nothing is sent
        # after the close, so they are dropped and the run is freed without the collector.
        self.send, self.send_nowait = _closed, None
