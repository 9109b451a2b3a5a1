"""chat.fusion.netio: the engine's asyncio network backend, through httpx, against raw local
servers that misbehave on purpose (no database)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import httpx
import pytest

from chat.fusion import transport
from chat.fusion.netio import _HIGH_WATER, AsyncioTransport
from tests.tls import tls_pair

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[bool]]


class RawServer:
    """HTTP/1.1 on 127.0.0.1, one handler per path; counts connections. A handler returns
    whether the connection stays open for another request."""

    def __init__(self, handlers: dict[str, Handler], ssl_context: ssl.SSLContext | None = None) -> None:
        self.handlers = handlers
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, path: str) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if not await self.handlers[path](reader, writer, path):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _headers(extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{extra}\r\n".encode()


def _chunk(piece: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(piece), piece)


async def chunked(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    w.write(_headers("transfer-encoding: chunked\r\n"))
    for i in range(50):
        piece = f"piece {i:02d};".encode()
        w.write(_chunk(piece))
        await w.drain()
        await asyncio.sleep(0.001)
    w.write(b"0\r\n\r\n")
    await w.drain()
    return True


BIG = bytes(range(256)) * (4 * _HIGH_WATER // 256)  # 4× the buffer's high-water mark


async def big(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    w.write(_headers(f"content-length: {len(BIG)}\r\n") + BIG)
    await w.drain()
    return True


async def reset_midway(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    w.write(_headers("content-length: 1000\r\n") + b"only part of it")
    await w.drain()
    w.transport.abort()  # RST, not FIN
    return False


async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    w.write(_headers("content-length: 10\r\n"))
    await w.drain()
    await asyncio.sleep(5)
    return False


async def hello_then_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    """Answers with keep-alive and then closes the connection anyway, as servers do when idle."""
    w.write(_headers("content-length: 5\r\n") + b"hello")
    await w.drain()
    return False


def asyncio_client(**kwargs: object) -> httpx.AsyncClient:
    ctx = kwargs.pop("ssl_context", None) or ssl.create_default_context()
    assert isinstance(ctx, ssl.SSLContext)
    return httpx.AsyncClient(
        transport=AsyncioTransport(ssl_context=ctx, limits=httpx.Limits(max_keepalive_connections=4)), **kwargs
    )


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    handlers: dict[str, Handler] = {
        "/chunked": chunked,
        "/big": big,
        "/reset": reset_midway,
        "/silent": silent,
        "/close": hello_then_close,
    }
    async with RawServer(handlers) as s:
        yield s


async def test_a_chunked_stream_arrives_whole_and_the_connection_is_reused(server: RawServer) -> None:
    async with asyncio_client() as client:
        for _ in range(3):
            async with client.stream("GET", server.url("/chunked")) as response:
                body = b"".join([part async for part in response.aiter_raw()])
            assert body == b"".join(f"piece {i:02d};".encode() for i in range(50))
    assert server.connections == 1 and len(server.requests) == 3


async def test_a_body_larger_than_the_buffer_read_slowly_arrives_intact(server: RawServer) -> None:
    async with asyncio_client() as client:
        async with client.stream("GET", server.url("/big")) as response:
            parts = []
            async for part in response.aiter_raw(16 * 1024):
                parts.append(part)
                await asyncio.sleep(0)  # a slow reader: the socket pauses and resumes
        assert b"".join(parts) == BIG
        # … and the connection is still good for the next request.
        assert (await client.get(server.url("/chunked"))).status_code == 200
    assert server.connections == 1


async def test_a_connection_reset_midway_is_a_read_error(server: RawServer) -> None:
    async with asyncio_client() as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(server.url("/reset"))
        # The broken connection is not handed out again.
        assert (await client.get(server.url("/chunked"))).status_code == 200
    assert server.connections == 2


async def test_a_silent_server_times_out_the_read(server: RawServer) -> None:
    async with asyncio_client(timeout=httpx.Timeout(1.0, read=0.1)) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url("/silent"))
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_an_idle_connection_the_server_closed_is_replaced_not_reused(server: RawServer) -> None:
    async with asyncio_client() as client:
        assert (await client.get(server.url("/close"))).text == "hello"
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection sits in the pool
        assert (await client.get(server.url("/close"))).text == "hello"
    assert server.connections == 2


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with RawServer({}) as s:
        port = s.port
    async with asyncio_client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_tls_verifies_the_certificate_and_the_name(tmp_path) -> None:
    server_ctx, client_ctx = tls_pair(tmp_path, "localhost", ip="127.0.0.1")
    async with RawServer({"/chunked": chunked}, ssl_context=server_ctx) as s:
        async with asyncio_client(ssl_context=client_ctx) as client:
            for _ in range(2):
                response = await client.get(s.url("/chunked"))
                assert response.text.startswith("piece 00;")
        assert s.connections == 1
        # A client that does not trust the test CA refuses the handshake.
        async with asyncio_client(ssl_context=ssl.create_default_context()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(s.url("/chunked"))
    # A certificate for another name fails verification.
    other_ctx, other_client_ctx = tls_pair(tmp_path, "other.example")
    async with RawServer({"/chunked": chunked}, ssl_context=other_ctx) as s:
        async with asyncio_client(ssl_context=other_client_ctx) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(s.url("/chunked"))
        assert s.requests == []


def test_model_clients_use_the_asyncio_backend_unless_a_proxy_is_configured(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    direct = transport.new_http_client()
    assert isinstance(direct._transport, AsyncioTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # never contacted: nothing is sent
    proxied = transport.new_http_client()
    assert not isinstance(proxied._transport, AsyncioTransport)
    assert any(isinstance(getattr(t, "_pool", None), httpcore.AsyncHTTPProxy) for t in proxied._mounts.values() if t)


async def done_then_a_slow_end(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _p: str) -> bool:
    """An SSE answer whose body ends (the empty last chunk) a second after its [DONE]."""
    w.write(_headers("transfer-encoding: chunked\r\n"))
    for event in (
        '{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}',
        "[DONE]",
    ):
        piece = f"data: {event}\n\n".encode()
        w.write(_chunk(piece))
    await w.drain()
    await asyncio.sleep(1.0)
    w.write(b"0\r\n\r\n")
    await w.drain()
    return True


async def test_a_finished_stream_returns_its_connection_to_the_pool_without_waiting_for_it() -> None:
    from chat.fusion.client import ChatClient
    from chat.fusion.providers import ProviderRegistry
    from chat.fusion.types import ContentDelta, Finish, Limits, ModelSpec, Provider

    async with RawServer({"/v1/chat/completions": done_then_a_slow_end}) as s:
        registry = ProviderRegistry({"openrouter": Provider("openrouter", s.url("/v1"), api_key="k")})
        async with ChatClient(registry, limits=Limits(first_token=5, idle=5, total=10)) as client:
            for round_ in range(2):
                started = asyncio.get_running_loop().time()
                events = [e async for e in client.stream(ModelSpec("m/a"), [{"role": "user", "content": "?"}])]
                took = asyncio.get_running_loop().time() - started
                assert [e.text for e in events if isinstance(e, ContentDelta)] == ["hi"]
                assert events[-1] == Finish("stop")
                assert took < 0.5, f"call {round_} waited {took:.2f} s for the body's end"
                await asyncio.sleep(1.3)  # the end arrives and is read in the background
    assert s.connections == 1
