"""The HTTP clients of the engine's model calls: shared by the runs of a process."""

from __future__ import annotations

import functools
import http.cookiejar
import itertools
import ssl
import urllib.request

import httpx

from chat.fusion.loops import PerLoop
from chat.fusion.netio import AsyncioTransport

# Clients a process's runs share, per event loop. Several, each given to every SHARDS-th run:
# httpcore's pool walks all of its connections for each request it assigns (a cost that grows
# with the square of the connections), so one pool for hundreds of live streams would cost more
# than the connects it saves.
HTTP_SHARDS = 32
_shared_clients: PerLoop[list[httpx.AsyncClient | None]] = PerLoop(lambda: [None] * HTTP_SHARDS)
_next_shard = itertools.count()


def shared_http() -> httpx.AsyncClient:
    """An HTTP client shared by the runs of the process: its connections to a provider are kept
    open and reused by later runs (no TCP connect per member per run).

    No cookie is ever kept (runs of different users share it), and the pool has no cap on
    connections. ``ChatClient`` does not close a client it was given.
    """
    shards = _shared_clients.get()
    index = next(_next_shard) % HTTP_SHARDS
    client = shards[index]
    if client is None or client.is_closed:
        client = shards[index] = new_http_client(
            cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=16, keepalive_expiry=30),
        )
    return client


def new_http_client(
    *,
    limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5),
    cookies: http.cookiejar.CookieJar | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for model calls (no timeout: ``ChatClient`` watches its reads).

    Its connections are plain asyncio ones (``chat.fusion.netio``), cheaper per read than
    httpx's default; with a proxy configured in the environment (``HTTPS_PROXY`` …) it is
    httpx's default transport, which honours it.
    """
    if urllib.request.getproxies():
        return httpx.AsyncClient(timeout=None, verify=shared_ssl_context(), limits=limits, cookies=cookies)
    transport = AsyncioTransport(ssl_context=shared_ssl_context(), limits=limits)
    return httpx.AsyncClient(timeout=None, transport=transport, cookies=cookies)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~60 ms; one context serves every client of the process.
    return httpx.create_ssl_context()
