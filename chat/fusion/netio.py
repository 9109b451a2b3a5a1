"""An httpcore network backend on plain asyncio protocols, for the engine's model calls.

httpcore's default backend reads through anyio: every ``read`` opens a cancel scope and resumes
the socket's reading (an ``epoll_ctl`` to register it), and pauses it again once a chunk has
arrived. A model stream is many small reads (an SSE chunk of a few tokens each), so with a few
hundred live streams in a process that bookkeeping costs about as much as the HTTP parsing
itself (issue 11's profile: ``SocketStream.receive`` and ``resume_reading`` ~15 % of the loop).

Here the socket is read by the event loop as data arrives (``asyncio.Protocol.data_received``),
into a buffer that ``read`` takes from; reading pauses only when a reader falls behind by
``_HIGH_WATER`` bytes. TLS is the loop's own (``loop.start_tls``), timeouts map to httpcore's
exceptions as its anyio backend does. Only used for direct connections: with a proxy in the
environment the clients keep httpx's default transport (see ``chat.fusion.transport``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing

import httpcore
import httpx

_HIGH_WATER = 256 * 1024  # bytes buffered unread before the socket's reading is paused
_LOW_WATER = 64 * 1024

SocketOption = typing.Union[
    tuple[int, int, int], tuple[int, int, typing.Union[bytes, bytearray]], tuple[int, int, None, int]
]


class _Protocol(asyncio.Protocol):
    """Buffers what the socket receives and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    # --------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --------------------------------------------------------------- for the stream
    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        if len(self.buffer) <= max_bytes:
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
        if self.paused and len(self.buffer) <= _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def wait_readable(self, timeout: float | None) -> None:
        if self._reader is not None and not self._reader.done():
            raise httpcore.ReadError("two concurrent reads of one connection")
        loop = asyncio.get_running_loop()
        self._reader = waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            self._reader = None
            if timer is not None:
                timer.cancel()

    async def wait_drained(self, timeout: float | None) -> None:
        drain = self._drain
        if drain is None or drain.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(drain), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("timed out writing the request") from exc


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout("timed out waiting for the response"))


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: a transport and the protocol buffering its bytes."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        protocol.transport = transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.buffer and not p.eof:
            await p.wait_readable(timeout)
        if p.buffer:
            return p.take(max_bytes)
        if p.error is not None:
            raise httpcore.ReadError(str(p.error) or type(p.error).__name__)
        return b""  # the server closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        await self._protocol.wait_drained(timeout)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self._protocol,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:
            self._transport.close()
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        return AsyncioStream(typing.cast(asyncio.Transport, transport), self._protocol)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle pooled connection the server has closed (or written to)
            return bool(self._protocol.buffer) or self._protocol.eof or self._transport.is_closing()
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connects with ``loop.create_connection``; unix sockets go to httpcore's default backend."""

    def __init__(self) -> None:
        self._fallback = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = _Protocol()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol, host, port, local_addr=(local_address, 0) if local_address else None
                ),
                timeout,
            )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock: socket.socket | None = transport.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)  # the same tuples httpcore passes on
        return AsyncioStream(typing.cast(asyncio.Transport, transport), protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._fallback.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request/response and exception mapping) over a connection pool
    whose connections are :class:`AsyncioBackend` streams. HTTP/1.1, no proxy."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=AsyncioBackend(),
        )
