"""The conversation websocket: authenticate, validate frames, call one run service, relay frames.

The protocol is documented in docs/protocol.md. Runs are owned by chat.runs.manager, not by
this consumer: closing the socket only leaves the conversation's group.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import runs
from chat.models import Conversation

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


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
    raise FrameError("preset must be a preset id or \"builtin:<name>\".")


def _slot(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 8:
        raise FrameError("slot must be a member number from 0 to 7.")
    return value


class ConversationConsumer(AsyncWebsocketConsumer):
    conversation_id: int
    group: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        owned = await database_sync_to_async(
            Conversation.objects.filter(user=user, pk=self.conversation_id).exists
        )()
        if not owned:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = runs.group_name(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send_snapshot()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self._error("invalid", "Frames must be JSON text.")
            return
        if len(text_data.encode("utf-8", "surrogatepass")) > settings.FUSION_MAX_WS_MESSAGE_BYTES:
            await self._error("too_large", f"Frames are limited to {settings.FUSION_MAX_WS_MESSAGE_BYTES} bytes.")
            return
        try:
            frame = json.loads(text_data)
        except json.JSONDecodeError:
            await self._error("invalid", "Frames must be JSON objects.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self._error("invalid", "Frames must be JSON objects with a type.")
            return
        handler = getattr(self, f"on_{frame['type']}", None)
        if handler is None:
            await self._error("invalid", f"Unknown frame type {frame['type'][:40]!r}.")
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
        state, created = await runs.run_start(
            user=self.scope["user"], conversation_id=self.conversation_id, client_run_id=run_id,
            prompt=prompt, panel=panel, follow_up_mode=mode, preset=preset,
        )
        if not created:  # attached to the existing run: send where it is now
            await self._send({"type": "snapshot", "runs": [state]})

    async def on_stop(self, frame: dict[str, Any]) -> None:
        await runs.run_stop(user=self.scope["user"], conversation_id=self.conversation_id,
                            client_run_id=_run_ref(frame.get("run_id")))

    async def on_stop_member(self, frame: dict[str, Any]) -> None:
        await runs.run_stop_member(user=self.scope["user"], conversation_id=self.conversation_id,
                                   client_run_id=_run_ref(frame.get("run_id")), slot=_slot(frame.get("slot")))

    async def on_retry_member(self, frame: dict[str, Any]) -> None:
        await runs.run_retry_member(user=self.scope["user"], conversation_id=self.conversation_id,
                                    client_run_id=_run_ref(frame.get("run_id")), slot=_slot(frame.get("slot")))

    async def on_fuse_now(self, frame: dict[str, Any]) -> None:
        await runs.run_fuse_now(user=self.scope["user"], conversation_id=self.conversation_id,
                                client_run_id=_run_ref(frame.get("run_id")))

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        writer = frame.get("writer")
        if not isinstance(writer, str) or not writer.strip():
            raise FrameError("writer must be a model id.")
        await runs.run_regenerate(user=self.scope["user"], conversation_id=self.conversation_id,
                                  client_run_id=_run_ref(frame.get("run_id")), writer=writer.strip())

    # ----------------------------------------------------------------- server side

    async def run_frame(self, message: dict[str, Any]) -> None:
        """A frame from a run of this conversation (channel-layer group message)."""
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
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
