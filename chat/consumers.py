"""The conversation websocket: authenticate, validate frames, call one run service, relay frames.

The protocol is documented in docs/protocol.md. Runs are owned by chat.runs.manager, not by
this consumer: closing the socket only leaves the conversation's group.

Every frame is rate limited (a bucket per socket and one per user) before it is parsed; frames
that steer a run re-check the session first (chat.ws_security), a start checks it in the same
database call that writes it (chat.runs.starts), and the process's
SessionWatch closes sockets whose session ended even when they are idle. No server frame is
larger than FUSION_MAX_WS_FRAME_BYTES: bigger ones are sent as ``chunk`` frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from chat import ratelimit, runs
from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.layers import FastInMemoryChannelLayer
from chat.models import Conversation
from chat.ws_security import CLOSE_SESSION_ENDED, SessionWatch

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = CLOSE_SESSION_ENDED
CLOSE_NOT_FOUND = 4404
CLOSE_FLOODING = 4429
# Deepest nesting of arrays and objects a client frame may have (real frames need 4).
MAX_JSON_DEPTH = 32
# Frames that start or steer a run: the session is re-checked before each.
STEERING = frozenset({"start", "stop", "stop_member", "retry_member", "fuse_now", "regenerate", "rerun"})
# The versions a start may name (one per earlier turn, ``shown_runs``).
MAX_SHOWN_RUNS = 1000
RERUN_MODES = ("retry_stopped", "resend", "fuse")

watch = SessionWatch(on_inactive_users=lambda ids: runs.manager.cancel_users(ids))


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Does *text* nest arrays/objects deeper than *limit*? (json.loads recurses per level.)"""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def split_frame(text: str, limit: int, frame_id: str) -> Iterator[str]:
    """*text* (one frame's JSON) as ``chunk`` frames of at most *limit* bytes each."""
    seq, start = 0, 0
    size = max(1024, limit - 200)
    while start < len(text):
        piece_len = size
        while True:
            piece = text[start : start + piece_len]
            last = start + len(piece) >= len(text)
            out = json.dumps(
                {"type": "chunk", "id": frame_id, "seq": seq, "last": last, "data": piece},
                separators=(",", ":"),
                ensure_ascii=False,
            )
            encoded = len(out.encode("utf-8", "surrogatepass"))
            if encoded <= limit or piece_len <= 64:
                break
            piece_len = max(64, int(piece_len * limit / encoded * 0.95))
        yield out
        start += len(piece)
        seq += 1


class FrameError(ValueError):
    pass


def _uuid_str(value: Any, name: str = "run_id") -> str:
    if not isinstance(value, str):
        raise FrameError(f"{name} must be a UUID string.")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise FrameError(f"{name} must be a UUID string.") from None


def _run_ref(value: Any) -> str:
    """Run ids sent back by the client: a client UUID or a derived id of a re-run."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not all(c.isalnum() or c == "-" for c in value):
        raise FrameError("run_id is not a valid run id.")
    return value


def _preset_ref(value: Any) -> str | int | None:
    """A preset in a start frame: one of the user's preset ids, or "builtin:<key>"."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and 0 < len(value) <= 80 and (value.startswith("builtin:") or value.isdigit()):
        return value
    raise FrameError('preset must be a preset id or "builtin:<name>".')


def _shown_runs(value: Any) -> list[str]:
    """``shown_runs`` of a start frame: the server run ids (versions) the user is looking at."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_SHOWN_RUNS:
        raise FrameError(f"shown_runs must be a list of at most {MAX_SHOWN_RUNS} run ids.")
    return [_uuid_str(v, "shown_runs") for v in value]


def _slot(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_PANEL_MEMBERS:
        raise FrameError(f"slot must be a member number from 0 to {MAX_PANEL_MEMBERS - 1}.")
    return value


class _Ended:
    """In a consumer's inbox: its websocket's receive raised *exc*."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ConversationConsumer(AsyncWebsocketConsumer):
    conversation_id: int
    group: str
    session_key: str
    user_id: int

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """On the in-memory layer, one inbox for the socket's messages and the layer's: the layer
        puts a frame straight into it (``listen``) and this loop takes it, one wake-up per frame.
        Channels' own loop makes a receive task and an ``asyncio.wait`` per message, and the
        frame takes two turns of the event loop to get here. Other layers keep Channels' loop."""
        layer = get_channel_layer(self.channel_layer_alias)
        if not isinstance(layer, FastInMemoryChannelLayer):
            await super().__call__(scope, receive, send)
            return
        self.scope, self.channel_layer, self.base_send = scope, layer, send
        self.channel_name = await layer.new_channel()
        capacity = layer.get_capacity(self.channel_name)
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(message: dict[str, Any]) -> None:
            if inbox.qsize() >= capacity:
                raise ChannelFull(self.channel_name)
            inbox.put_nowait(message)

        async def pump() -> None:
            try:
                while True:
                    inbox.put_nowait(await receive())
            except BaseException as exc:  # the server's receive failed: end the loop with it
                inbox.put_nowait(_Ended(exc))
                raise

        layer.listen(self.channel_name, deliver)
        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                message = await inbox.get()
                if isinstance(message, _Ended):
                    raise message.exc
                await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            layer.unlisten(self.channel_name)
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.closing = False
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.session_key = getattr(self.scope.get("session"), "session_key", None) or ""
        self.bucket = ratelimit.Bucket(rate=settings.FUSION_WS_RATE_PER_S, burst=settings.FUSION_WS_BURST)
        self.refused_in_a_row = 0
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        owned = await database_sync_to_async(Conversation.objects.filter(user=user, pk=self.conversation_id).exists)()
        if not owned:
            await self._refuse(CLOSE_NOT_FOUND)
            return
        self.group = runs.group_name(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        watch.add(self)
        await self._send_snapshot()

    async def _refuse(self, code: int) -> None:
        # Accept, then close with the reason: closed before accept, a browser sees only 1006 and
        # cannot tell "signed out" or "no such conversation" from a network failure.
        self.closing = True
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        watch.discard(self)
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def session_ended(self) -> None:
        """Called by the SessionWatch: this socket's session was signed out, changed or expired."""
        if not self.closing:
            self.closing = True
            await self.close(code=CLOSE_SESSION_ENDED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing or not await self._within_rate():
            return
        try:
            await self._receive(text_data)
        except Exception:  # a bug must not close the socket with 1011: say so and go on
            log.exception("websocket frame failed")
            await self._error("internal", "The server could not handle that frame.")

    async def _within_rate(self) -> bool:
        """Take a token from this socket's bucket and the user's; refuse, then close, a flood."""
        decision = self.bucket.take()
        if decision.allowed:
            decision = await ratelimit.atake(
                f"ws:user:{self.user_id}", rate=settings.FUSION_WS_USER_RATE_PER_S, burst=settings.FUSION_WS_USER_BURST
            )
        if decision.allowed:
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        if self.refused_in_a_row > settings.FUSION_WS_FLOOD_CLOSE_AFTER:
            self.closing = True
            await self.close(code=CLOSE_FLOODING)
            return False
        retry = round(max(decision.retry_after, 0.05), 2)
        await self._send(
            {
                "type": "error",
                "code": "rate_limited",
                "retry_after": retry,
                "message": f"Too many messages at once. Wait {retry:g} s and try again.",
            }
        )
        return False

    async def _receive(self, text_data: str | None) -> None:
        if text_data is None:
            await self._error("invalid", "Frames must be JSON text.")
            return
        if len(text_data.encode("utf-8", "surrogatepass")) > settings.FUSION_MAX_WS_MESSAGE_BYTES:
            await self._error("too_large", f"Frames are limited to {settings.FUSION_MAX_WS_MESSAGE_BYTES} bytes.")
            return
        if json_too_deep(text_data):
            await self._error("invalid", f"Frames may nest at most {MAX_JSON_DEPTH} levels deep.")
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer of over 4300 digits
            await self._error("invalid", "Frames must be JSON objects.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self._error("invalid", "Frames must be JSON objects with a type.")
            return
        handler = getattr(self, f"on_{frame['type']}", None)
        if handler is None:
            await self._error("invalid", f"Unknown frame type {frame['type'][:40]!r}.")
            return
        # A start checks its session with the start itself (one query for a batch of starts).
        if frame["type"] in STEERING and frame["type"] != "start" and not await watch.still_valid(self):
            await self.session_ended()
            return
        try:
            await handler(frame)
        except FrameError as exc:
            await self._error("invalid", str(exc), frame.get("run_id"))
        except runs.RunError as exc:
            await self._error(exc.code, exc.message, frame.get("run_id"))

    # ----------------------------------------------------------------- client frames

    async def on_ping(self, frame: dict[str, Any]) -> None:
        await self._send({"type": "pong"})

    async def on_subscribe(self, frame: dict[str, Any]) -> None:
        await self._send_snapshot()

    async def on_start(self, frame: dict[str, Any]) -> None:
        run_id = _uuid_str(frame.get("run_id"))
        prompt = frame.get("prompt")
        if not isinstance(prompt, str):
            raise FrameError("prompt must be text.")
        panel = frame.get("panel")
        if panel is not None and not isinstance(panel, dict):
            raise FrameError("panel must be an object.")
        mode = frame.get("follow_up_mode")
        if mode is not None and mode not in ("fused", "per_member"):
            raise FrameError("follow_up_mode must be 'fused' or 'per_member'.")
        preset = _preset_ref(frame.get("preset"))
        if preset is not None and panel is not None:
            raise FrameError("Send either a panel or a preset, not both.")
        shown_runs = _shown_runs(frame.get("shown_runs"))
        try:
            state, created = await runs.run_start(
                user=self.scope["user"],
                conversation_id=self.conversation_id,
                client_run_id=run_id,
                prompt=prompt,
                panel=panel,
                follow_up_mode=mode,
                preset=preset,
                shown_runs=shown_runs,
                session=(self.session_key, self.user_id),
            )
        except runs.SessionEnded:
            await watch.still_valid(self)  # also stops a deactivated user's runs
            await self.session_ended()
            return
        if not created:  # attached to the existing run: send where it is now
            await self._send({"type": "snapshot", "runs": [state]})

    async def on_stop(self, frame: dict[str, Any]) -> None:
        await runs.run_stop(
            user=self.scope["user"], conversation_id=self.conversation_id, client_run_id=_run_ref(frame.get("run_id"))
        )

    async def on_stop_member(self, frame: dict[str, Any]) -> None:
        await runs.run_stop_member(
            user=self.scope["user"],
            conversation_id=self.conversation_id,
            client_run_id=_run_ref(frame.get("run_id")),
            slot=_slot(frame.get("slot")),
        )

    async def on_retry_member(self, frame: dict[str, Any]) -> None:
        await runs.run_retry_member(
            user=self.scope["user"],
            conversation_id=self.conversation_id,
            client_run_id=_run_ref(frame.get("run_id")),
            slot=_slot(frame.get("slot")),
            shown_runs=_shown_runs(frame.get("shown_runs")),
        )

    async def on_fuse_now(self, frame: dict[str, Any]) -> None:
        await runs.run_fuse_now(
            user=self.scope["user"], conversation_id=self.conversation_id, client_run_id=_run_ref(frame.get("run_id"))
        )

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        writer = frame.get("writer")
        if not isinstance(writer, str) or not writer.strip():
            raise FrameError("writer must be a model id.")
        await runs.run_regenerate(
            user=self.scope["user"],
            conversation_id=self.conversation_id,
            client_run_id=_run_ref(frame.get("run_id")),
            writer=writer.strip(),
            shown_runs=_shown_runs(frame.get("shown_runs")),
        )

    async def on_rerun(self, frame: dict[str, Any]) -> None:
        mode = frame.get("mode")
        if mode not in RERUN_MODES:
            raise FrameError("mode must be 'retry_stopped', 'resend' or 'fuse'.")
        await runs.run_rerun(
            user=self.scope["user"],
            conversation_id=self.conversation_id,
            client_run_id=_run_ref(frame.get("run_id")),
            mode=mode,
            shown_runs=_shown_runs(frame.get("shown_runs")),
        )

    # ----------------------------------------------------------------- server side

    async def dispatch(self, message: dict[str, Any]) -> None:
        """A run's frames go straight to the socket. Channels' own dispatch first closes old
        database connections through the thread-sensitive executor, for every message: with a
        hundred live runs, hundreds of thread hops a second for a handler that never touches the
        database. Every other message still goes through it."""
        if message.get("type") == "run.frame":
            await self.run_frame(message)
        else:
            await super().dispatch(message)

    async def run_frame(self, message: dict[str, Any]) -> None:
        """A frame from a run of this conversation (channel-layer group message), encoded once
        by its sender (chat.runs.frames.frame_message)."""
        text = message.get("text")  # a "frame" dict still comes from processes of an older version
        if isinstance(text, str):
            await self._send_text(text)
        else:
            await self._send(message["frame"])

    async def _send_snapshot(self) -> None:
        ids = await database_sync_to_async(runs.running_runs_for_conversation)(
            user=self.scope["user"], conversation_id=self.conversation_id
        )
        states = [await runs.run_snapshot(run_id=run_id) for run_id in ids]
        await self._send({"type": "snapshot", "runs": states})
        # A run owned by another process was given from its last checkpoint; its owner sends
        # the live state next, which the frames that follow line up with.
        for run_id in ids:
            await runs.run_request_live_snapshot(run_id=run_id, reply_to=self.channel_name)

    async def _error(self, code: str, message: str, run_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if isinstance(run_id, str) and len(run_id) <= 64:
            frame["run_id"] = run_id
        await self._send(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_text(json.dumps(frame, separators=(",", ":")))

    async def _send_text(self, text: str) -> None:
        if self.closing:
            return
        limit = settings.FUSION_MAX_WS_FRAME_BYTES
        if len(text) <= limit:  # json.dumps writes ASCII: characters are bytes
            await self.send(text_data=text)
            return
        for piece in split_frame(text, limit, uuid.uuid4().hex[:12]):
            await self.send(text_data=piece)
