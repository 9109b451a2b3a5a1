"""This process's running pipelines: the task that owns each run, and the manager that holds them.

A run is owned by an ``ActiveRun`` task here, never by a websocket consumer: consumers only
subscribe to the conversation's group. The task feeds engine events to its ``RunState``, sends
the frames that makes (chat.runs.frames), checkpoints through a ``RunStore``, and listens on the
run's control group for controls sent from other processes. ``RunManager`` also runs the sweep:
runs of dead processes become interrupted, deactivated users' runs stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from chat.fusion.client import ChatClient
from chat.fusion.pipeline import FusionRun
from chat.fusion.types import FusionRequest, PipelineEvent
from chat.models import Run, RunStatus
from chat.dbthread import in_db_thread
from chat.runs.frames import Flusher, Frame, Stream, frame_message
from chat.runs.rendering import LiveRendering
from chat.runs.recovery import mark_interrupted, stale_after
from chat.runs.state import RunState
from chat.runs.store import RunStore, default_store, keep_checkpointing
from chat.ws_security import inactive_users

log = logging.getLogger(__name__)


def group_name(conversation_id: int) -> str:
    return f"conv_{conversation_id}"


def control_group(run_id: uuid.UUID) -> str:
    """The group a run's owning process listens on for stop/stop member/retry/fuse now."""
    return f"runctl_{run_id.hex}"


async def join_control_group(run_id: uuid.UUID) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(control_group(run_id), channel)
    return channel


class ActiveRun:
    """A running pipeline: engine events → its state → frames for the group + checkpoints."""

    def __init__(
        self,
        *,
        run: Run,
        request: FusionRequest,
        client: ChatClient,
        fusion: FusionRun,
        state: RunState,
        store: RunStore | None = None,
        control_channel: str | None = None,
        listener: Callable[[PipelineEvent | None], None] | None = None,
    ) -> None:
        self.run_id: uuid.UUID = run.pk
        self.user_id = run.user_id
        self.conversation_id = run.conversation_id
        self.request = request
        self.client = client
        self.fusion = fusion
        self.state = state
        self.store = store or default_store()
        self.control_channel = control_channel
        self.loop = asyncio.get_running_loop()
        self.t0 = time.monotonic()
        self.frames = Flusher(
            run_id=str(run.pk),
            send=self._send,
            send_nowait=self._send_nowait,
            interval=settings.FUSION_FRAME_INTERVAL_MS / 1000,
        )
        self.rendering = LiveRendering(state, self.frames.emit, settings.FUSION_RENDER_PROCESSES)
        self._stepping = False  # a queued event is being applied (it may await its rendering)
        self._sink_error: Exception | None = None
        fusion.sink = self._take_now
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # The API's request in this process hears the engine's events as they come, then None
        # once the run's final write is done (chat.api.runs).
        self.listener = listener

    @property
    def streams(self) -> list[Stream]:
        return [m.stream for m in self.state.members]

    @property
    def final(self) -> Stream:
        return self.state.final

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    async def _send(self, payload: Frame) -> None:
        await get_channel_layer().group_send(group_name(self.conversation_id), frame_message(payload))

    def _send_nowait(self, payload: Frame) -> bool:
        send = getattr(get_channel_layer(), "group_send_nowait", None)  # the in-memory layer's
        if send is None:
            return False
        send(group_name(self.conversation_id), frame_message(payload))
        return True

    # ----------------------------------------------------------------- controls

    def control(self, action: str, slot: int | None = None) -> bool:
        """Apply a user's control to this run; False when it does not apply now."""
        if action == "stop":
            self.fusion.cancel()
            return True
        if slot is not None and not 0 <= slot < len(self.state.members):
            return False
        if action == "stop_member" and slot is not None:
            return self.fusion.stop_member(slot)
        if action == "retry_member" and slot is not None:
            return self.fusion.retry_member(slot)
        if action == "fuse_now":
            return self.fusion.fuse_now()
        return False

    async def _control_listener(self) -> None:
        """Controls sent by consumers of other processes (several Daphne workers behind Redis).

        The channel joined the run's control group before ``run.started`` went out (see
        chat.runs.services), so a control sent right after it is not lost.
        """
        layer = get_channel_layer()
        channel = self.control_channel or await join_control_group(self.run_id)
        try:
            while True:
                message = await layer.receive(channel)
                if message.get("type") != "run.control":
                    continue
                action = str(message.get("action"))
                if action == "snapshot":
                    # A socket on another process joined: give it the live state, not the last
                    # checkpoint, so its offsets line up with the frames that follow.
                    reply_to = message.get("reply_to")
                    if isinstance(reply_to, str):
                        frame = {"type": "snapshot", "runs": [self.snapshot()]}
                        await layer.send(reply_to, frame_message(frame))
                    continue
                slot = message.get("slot")
                self.control(action, slot if isinstance(slot, int) else None)
        finally:
            await layer.group_discard(control_group(self.run_id), channel)

    # ----------------------------------------------------------------- driving

    async def drive(self) -> None:
        checkpointer = asyncio.create_task(keep_checkpointing(self.state, self.store))
        listener = asyncio.create_task(self._control_listener())
        try:
            async for event in self.fusion.events():
                if self._sink_error is not None:
                    raise self._sink_error
                await self._step(event)
                if self.listener is not None:
                    self.listener(event)
        except Exception as exc:  # a bug in the engine: fail the run loudly, keep what we have
            log.exception("run %s crashed", self.run_id)
            self.state.crash(exc)
        finally:
            checkpointer.cancel()
            listener.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)  # no checkpoint in flight now
            try:
                await self.rendering.drain()  # after a crash: no block arrives after the end
            except Exception:  # the final write must not depend on the live view's HTML
                log.exception("rendering the last blocks of run %s failed", self.run_id)
            await self.client.aclose()
            try:
                wall_ms = int((time.monotonic() - self.t0) * 1000)
                await in_db_thread(
                    self.store.finalize, self.state, conversation_id=self.conversation_id, wall_ms=wall_ms
                )
            except Exception:
                log.exception("final write of run %s failed", self.run_id)
            # Sent only now: no client sees an end the database does not hold.
            self.frames.emit(self.state.terminal_frame())
            await self.frames.aclose()
            self.done.set()
            if self.listener is not None:
                self.listener(None)

    async def _step(self, event: PipelineEvent) -> None:
        """One engine event applied to the state, its Markdown rendered off the event loop
        (chat.runs.rendering), and its frames queued."""
        self._stepping = True
        try:
            await self.rendering.step(event)
        finally:
            self._stepping = False

    def _take_now(self, event: PipelineEvent) -> bool:
        """The engine's sink: apply *event* at once, in the task that emitted it, when it needs
        no waiting (a delta's text) and no queued event is being applied; else it is queued."""
        if self._stepping or self._sink_error is not None:
            return False
        try:
            if not self.rendering.step_now(event):
                return False
        except Exception as exc:  # a bug: the drive fails the run with it (the event is queued)
            self._sink_error = exc
            return False
        if self.listener is not None:
            self.listener(event)
        return True


class RunManager:
    """Owns this process's running pipelines, keyed by run id."""

    def __init__(self) -> None:
        self.active: dict[uuid.UUID, ActiveRun] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def get(self, run_id: uuid.UUID) -> ActiveRun | None:
        return self.active.get(run_id)

    def launch(self, active: ActiveRun) -> None:
        self.active[active.run_id] = active

        async def _run() -> None:
            try:
                await active.drive()
            finally:
                self.active.pop(active.run_id, None)

        active.task = asyncio.get_running_loop().create_task(_run(), name=f"run-{active.run_id}")

    def cancel_conversation(self, conversation_id: int) -> None:
        """Stop the runs of a conversation from any thread (a sync view deleting it)."""
        for active in list(self.active.values()):
            if active.conversation_id == conversation_id:
                active.loop.call_soon_threadsafe(active.fusion.cancel)

    def cancel_users(self, user_ids: set[int]) -> int:
        """Stop this process's runs of these (deactivated) users, from any thread."""
        stopped = 0
        for active in list(self.active.values()):
            if active.user_id in user_ids:
                active.loop.call_soon_threadsafe(active.fusion.cancel)
                stopped += 1
        if stopped:
            log.info("stopped %d run(s) of deactivated user(s) %s", stopped, sorted(user_ids))
        return stopped

    def ensure_sweeper(self) -> None:
        """Start this process's run sweep in the running loop, once (fusionsite.asgi calls it)."""
        if settings.FUSION_RUN_SWEEP_INTERVAL_S <= 0:
            return
        loop = asyncio.get_running_loop()
        task = self._sweeper
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._sweeper = loop.create_task(self._sweep_forever(), name="run-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await database_sync_to_async(self.sweep)()
            except Exception:
                log.exception("run sweep failed")
            await asyncio.sleep(settings.FUSION_RUN_SWEEP_INTERVAL_S)

    def sweep(self) -> tuple[int, int]:
        """One pass: runs whose process died become interrupted; deactivated users' runs stop.

        Returns (interrupted, stopped). Runs this process owns are never marked: they are alive.
        """
        stale = Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=timezone.now() - stale_after())
        interrupted = mark_interrupted(stale.exclude(pk__in=list(self.active)))
        owners = {a.user_id for a in self.active.values()}
        stopped = self.cancel_users(inactive_users(owners)) if owners else 0
        if interrupted:
            log.info("marked %d run(s) of a dead process as interrupted", interrupted)
        return interrupted, stopped

    async def shutdown(self) -> None:
        """Cancel every run (tests, and a process that is going away)."""
        runs = list(self.active.values())
        for a in runs:
            a.fusion.cancel()
        for a in runs:
            try:
                await asyncio.wait_for(a.done.wait(), timeout=10)
            except TimeoutError:
                if a.task:
                    a.task.cancel()


manager = RunManager()
