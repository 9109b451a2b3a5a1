"""A run's engine events applied to its state, with the Markdown they need rendered off the loop.

With a render worker (``FUSION_RENDER_PROCESSES`` ≥ 1, chat.render.pool) a delta's text is
applied and sent at once, and the blocks it finished follow when their HTML is back: a delta
with no new text that carries them (``RunState.apply_blocks``). So a token never waits for a
round trip to the worker, which takes tens of milliseconds when a process streams a hundred
answers; until then the client shows those blocks' text in the stream's escaped tail, as it
shows any unfinished block. A stream's blocks are applied in the order they were cut off.

Every other event (a member completed or failed, the analysis, the end of the run) first waits
for the blocks still out, then renders what it needs (a finished answer's tail) before it is
applied, as without a worker: its HTML is final, so it must hold every block. With
``FUSION_RENDER_PROCESSES=0`` everything is rendered in this process before it is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from chat.fusion.types import FinalDelta, PanelDelta, PipelineEvent
from chat.render import RenderUpdate
from chat.render import pool as render_pool
from chat.render.blocks import render_sources
from chat.render.safe import render_escaped
from chat.runs.frames import Frame, RenderJob
from chat.runs.state import RunState

log = logging.getLogger(__name__)


class Emit(Protocol):  # the run's Flusher.emit
    def __call__(self, frame: Frame, *, now: bool = False) -> None: ...


class LiveRendering:
    """Feeds one run's events to its :class:`RunState` and hands the frames they make to *emit*."""

    def __init__(self, state: RunState, emit: Emit, processes: int) -> None:
        self.state = state
        self.emit = emit
        self.processes = processes
        # Per stream (a member's slot, None for the fused answer): its blocks out for rendering.
        self._out: dict[int | None, deque[tuple[RenderJob, asyncio.Future[list[str]]]]] = {}

    @property
    def rendering(self) -> int:
        """How many render jobs are out."""
        return sum(len(q) for q in self._out.values())

    def step_now(self, event: PipelineEvent) -> bool:
        """Apply *event* without waiting, if it can be (a delta, with a render worker): True
        when it was."""
        if not isinstance(event, (PanelDelta, FinalDelta)):
            return False
        pool = render_pool.for_loop(self.processes)
        if pool.executor is None:
            return False
        self._text_first(event, pool)
        return True

    async def step(self, event: PipelineEvent) -> None:
        if self.step_now(event):
            return
        pool = render_pool.for_loop(self.processes)
        await self.drain()
        job = self.state.prerender(event)
        ahead: object = None
        if job is not None:
            try:
                html = await pool.render(job.sources) if job.sources else []
            except asyncio.CancelledError:
                # The job has cut its blocks off the stream's renderer: put their HTML in place
                # before the run winds up, so the final write still holds the whole text.
                job.finish(render_sources(job.sources))
                raise
            ahead = job.finish(html)
        emitted = self.state.apply(event, ahead if isinstance(ahead, RenderUpdate) else None)
        if emitted is not None:
            self.emit(emitted[0], now=emitted[1])

    def _text_first(self, event: PanelDelta | FinalDelta, pool: render_pool.RenderPool) -> None:
        slot = None if isinstance(event, FinalDelta) else event.slot
        stream = self.state.stream_of(event)
        job = stream.delta_job(event.delta)
        if job.sources:
            future = asyncio.ensure_future(pool.render(job.sources))
            self._out.setdefault(slot, deque()).append((job, future))
            future.add_done_callback(lambda _f: self._apply_ready(slot))
        emitted = self.state.apply(event, stream.text_only())
        if emitted is not None:
            self.emit(emitted[0], now=emitted[1])

    def _apply_ready(self, slot: int | None) -> None:
        """Apply the stream's rendered blocks, oldest first, up to the first still out."""
        queue = self._out.get(slot)
        while queue and queue[0][1].done():
            job, future = queue.popleft()
            self._apply(slot, job, self._html(job, future))

    def _html(self, job: RenderJob, future: asyncio.Future[list[str]]) -> list[str]:
        if future.cancelled():
            return render_sources(job.sources)
        exc = future.exception()
        if exc is None:
            return future.result()
        # The renderer failed on this input, in the worker and here: show it as text.
        log.error("rendering %d block(s) failed; shown as text", len(job.sources), exc_info=exc)
        return [render_escaped(source) for source, _ in job.sources]

    def _apply(self, slot: int | None, job: RenderJob, html: list[str]) -> None:
        update = job.finish(html)
        if isinstance(update, RenderUpdate):
            frame, now = self.state.apply_blocks(slot, update)
            self.emit(frame, now=now)

    async def drain(self) -> None:
        """Wait until every block out is back and applied. Cancelled meanwhile, it renders them
        here before it gives up, so the state never misses a block's HTML."""
        futures = [future for queue in self._out.values() for _, future in queue]
        if not futures:
            return
        try:
            await asyncio.wait(futures)
        except asyncio.CancelledError:
            for queue in self._out.values():
                for _, future in queue:
                    future.cancel()
            self._flush_all()
            raise
        self._flush_all()

    def _flush_all(self) -> None:
        for slot, queue in self._out.items():
            while queue:
                job, future = queue.popleft()
                html = self._html(job, future) if future.done() else render_sources(job.sources)
                self._apply(slot, job, html)
