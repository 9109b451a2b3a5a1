"""Frames of a live run: streamed text with its offsets, coalescing, and the flush to the group.

No database and no channel layer here: ``Flusher`` is given the coroutine that sends a payload
(chat.runs.live sends it to the conversation's group), so all of this is tested alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chat.render import IncrementalRenderer, RenderUpdate, render_markdown

Frame = dict[str, Any]

# Deltas of one stream that follow each other merge into one frame until the next flush.
COALESCED = frozenset({"panel.delta", "panel.reasoning.delta", "final.delta"})


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

    def feed(self, delta: str, update: RenderUpdate | None = None) -> dict[str, Any]:
        """Append *delta*; *update* is the renderer's result when it was computed ahead, off the loop."""
        offset = len(self.text)
        self.text += delta
        update = update if update is not None else self.renderer.feed(delta)
        self.blocks.extend(update.blocks)
        return {"offset": offset, "delta": delta, "blocks": list(update.blocks), "consumed": self.renderer.consumed}

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
            "consumed": self.renderer.consumed,
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


def payload(frames: list[Frame]) -> Frame | None:
    """What one flush sends: a lone frame as itself, several as a ``batch``, none as nothing."""
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else {"type": "batch", "events": frames}


class Flusher:
    """Sends a run's coalesced frames every *interval* seconds, or at once when one is urgent."""

    def __init__(self, *, run_id: str, send: Callable[[Frame], Awaitable[None]], interval: float) -> None:
        self.run_id = run_id
        self.send = send
        self.interval = interval
        self.frames = Coalescer()
        self._now = asyncio.Event()
        self._closing = False

    def emit(self, frame: Frame, *, now: bool = False) -> None:
        frame["run"] = self.run_id
        self.frames.add(frame)
        if now:
            self._now.set()

    async def flush(self) -> None:
        message = payload(self.frames.take())
        if message is not None:
            await self.send(message)

    async def run(self) -> None:
        """Flush until ``close``; run as a task of its own."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._now.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._now.clear()
            await self.flush()

    def close(self) -> None:
        """Make ``run`` flush once more and end.

        Never cancel that task: cancelled in the middle of a send, the frames it had taken would
        be lost (the last deltas of the fused answer, say). Await it instead.
        """
        self._closing = True
        self._now.set()
