"""channels_redis with a faster receive for the process's own channels (``PumpedRedisChannelLayer``);
the channel layer with ``REDIS_URL`` (fusionsite.settings)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels_redis.core import RedisChannelLayer

log = logging.getLogger(__name__)


class PumpedRedisChannelLayer(RedisChannelLayer):
    """channels_redis with one reader per process for the process's own channels.

    channels_redis receives a process-local message (every frame a socket gets) with four Redis
    round trips (a clean-up script, BZPOPMIN, a backup ZADD, its ZPOPMIN) while the receivers of
    the process take turns at one lock: measured here, about 250 messages a second per process
    at 60 live runs, so frames arrived seconds late and the bounded buffers dropped the oldest.
    Here one task per process pops the process's messages in batches (ZPOPMIN of up to
    ``PUMP_BATCH``, BZPOPMIN when there are none) and puts each on its channel's buffer; a
    receiver only waits on its own buffer. The backup queue guarded against a *cancelled*
    receive losing the message it had popped; the pump is never cancelled while the process
    runs, and a message it has popped is already in the buffer of its channel. Channels that
    are not process-local (``new_channel`` always makes local ones here) keep channels_redis'
    own receive. Buffers of channels nobody has received on for ``expiry`` seconds are dropped.
    """

    PUMP_BATCH = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pumps: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._last_seen: dict[str, float] = {}

    async def receive(self, channel: str) -> dict[str, Any]:
        assert self.require_valid_channel_name(channel)
        if "!" not in channel:
            return await super().receive(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        self._ensure_pump(real_channel)
        self._last_seen[channel] = time.monotonic()
        try:
            return await self.receive_buffer[channel].get()
        finally:
            self._last_seen[channel] = time.monotonic()

    def _ensure_pump(self, real_channel: str) -> None:
        loop = asyncio.get_running_loop()
        task = self._pumps.get(loop)
        if task is None or task.done():
            for old in [lp for lp in self._pumps if lp.is_closed()]:
                del self._pumps[old]
            self._pumps[loop] = loop.create_task(self._pump(real_channel), name="channel-layer-pump")

    async def _pump(self, real_channel: str) -> None:
        index = self.consistent_hash(real_channel)
        key = self.prefix + real_channel
        swept = time.monotonic()
        while True:
            try:
                connection = self.connection(index)
                popped = await connection.zpopmin(key, self.PUMP_BATCH)
                if not popped:
                    one = await connection.bzpopmin(key, timeout=self.brpop_timeout)
                    popped = [(one[1], one[2])] if one is not None else []
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: say so, wait, try again
                log.exception("channel layer: reading this process's messages failed")
                await asyncio.sleep(1)
                continue
            for member, _score in popped:
                try:
                    message = self.deserialize(member)
                    # A group message carries the list of this process's channels it is for.
                    target = message.pop("__asgi_channel__", real_channel)
                    for channel in target if isinstance(target, list) else [target]:
                        self.receive_buffer[channel].put_nowait(message)
                except Exception:  # one bad message must not stop every socket's frames
                    log.exception("channel layer: a message could not be delivered")
            if time.monotonic() - swept > 10:
                swept = time.monotonic()
                self._sweep_buffers()

    def _sweep_buffers(self) -> None:
        """Drop the buffers of channels nobody has received on for ``expiry`` seconds (closed sockets)."""
        now = time.monotonic()
        for channel in list(self.receive_buffer):
            seen = self._last_seen.get(channel)
            if seen is None:
                self._last_seen[channel] = now
            elif now - seen > self.expiry and channel in self.receive_buffer:
                queue = self.receive_buffer[channel]
                if not queue._getters:  # nobody waiting
                    del self.receive_buffer[channel]
                    del self._last_seen[channel]

    async def close_pools(self) -> None:
        for task in self._pumps.values():
            task.cancel()
        self._pumps.clear()
        await super().close_pools()
