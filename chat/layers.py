"""The one-process channel layer: Channels' in-memory layer with its per-message costs removed.
(With ``REDIS_URL``: ``chat.redis_layer``, a module of its own so that a process without Redis
never imports redis, ~5 MB.)

``channels.layers.InMemoryChannelLayer`` walks every channel and every group to expire old
messages on each send to a group and on each receive, makes an asyncio task per recipient of a
group message, and deep-copies every message. With a hundred live runs that is a walk over a
few hundred channels for each of several hundred frames a second. Here:

* expiry is swept at most once a second (messages live ``expiry`` seconds, 60 by default, so
  a sweep a second late changes nothing a client can see);
* a group message is put on each member's queue directly (``send`` never waits: it only puts,
  and ``group_send_nowait`` does it without a coroutine);
* a message whose values are all strings, numbers or None (a run's frames are one encoded
  string, chat.runs.frames.frame_message) is copied shallowly; anything else is deep-copied,
  as before.

Everything else, capacity and ``ChannelFull`` included, is Channels' own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

log = logging.getLogger(__name__)

_SCALARS = (str, int, float, bool, type(None))
SWEEP_EVERY_S = 1.0


class FastInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept_at = 0.0
        self._listeners: dict[str, Callable[[dict[str, Any]], None]] = {}

    def listen(self, channel: str, deliver: Callable[[dict[str, Any]], None]) -> None:
        """Hand *channel*'s messages to *deliver* as they are sent, instead of queueing them for
        ``receive`` (chat.consumers' receive loop: one wake-up per frame, not a task and a
        wait). *deliver* raises ``ChannelFull`` when it cannot take one more."""
        self._listeners[channel] = deliver

    def unlisten(self, channel: str) -> None:
        self._listeners.pop(channel, None)

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        super()._clean_expired()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.send_nowait(channel, message)

    def send_nowait(self, channel: str, message: dict[str, Any]) -> None:
        """``send`` without a coroutine: it never waits (a full channel is ``ChannelFull``)."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        flat = all(isinstance(v, _SCALARS) for v in message.values())
        copy = dict(message) if flat else deepcopy(message)
        deliver = self._listeners.get(channel)
        if deliver is not None:
            deliver(copy)
            return
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels.setdefault(channel, self._new_queue(channel))
        try:
            queue.put_nowait((time.time() + self.expiry, copy))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    def _new_queue(self, channel: str) -> asyncio.Queue[Any]:
        return asyncio.Queue(maxsize=self.get_capacity(channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.group_send_nowait(group, message)

    def group_send_nowait(self, group: str, message: dict[str, Any]) -> None:
        """``group_send`` without a coroutine: a run's frames go out from the flush timer's own
        callback, with no task and no extra turn of the event loop per frame."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, {})):
            try:
                self.send_nowait(channel, message)
            except ChannelFull:
                pass
