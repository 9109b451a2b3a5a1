"""The SSRF-safe fetcher behind ``web_fetch``.

``Fetcher.fetch(url)`` never raises: every failure is a ``FetchResult(ok=False, error=...)``
with a short error ("blocked: private address", "blocked: domain", "blocked: port",
"blocked: scheme", "bad url", "too large", "timed out", "not text", "too many redirects",
"http 404", "dns failed", "connection failed", ...).

Each hop (the first URL and every redirect target, at most ``max_redirects`` of them):

1. The URL is parsed once into an ``httpx.URL``; that object, with its host canonicalised
   (``http://0x7f.1/`` → ``http://127.0.0.1/``) and fragment dropped, is what is requested.
2. Scheme http/https, no credentials, port in ``allowed_ports``, domain filters (blocked,
   excluded, allowed), reserved names — all before any DNS query or connection.
3. The host is resolved once per fetch (``loop.getaddrinfo``; an IP literal is not resolved),
   and every address must pass ``netguard.address_block_reason`` unless the host is in
   ``trusted_hosts``.
4. **DNS pinning**: the checked addresses are pinned for that host in a per-fetch
   ``PinnedNetworkBackend``, the httpcore network backend of the fetch's connection pool. The
   request keeps the real host name in its URL, so the Host header, TLS SNI and certificate
   verification are the ordinary ones; only the TCP connect is redirected to a pinned address,
   never to whatever a second DNS answer would say. A connect to a host that was not pinned is
   refused outright.

The body is read raw (``aiter_raw``) and decompressed here with ``zlib``'s ``max_length``, so
``max_bytes`` bounds the *decompressed* size and memory: a gzip bomb stops at the cap. Only
text-like content types are read. ``timeout`` bounds the whole fetch: DNS, every hop, the body
and the text extraction. Environment proxies are ignored (a proxy would resolve names itself).

The one place that fetches web pages for a model. Imports httpx, httpcore and the other
tools modules: no Django, no pipeline module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from chat.fusion.tools import netguard
from chat.fusion.tools.domains import DomainFilter
from chat.fusion.tools.text import extract_document, truncate

__all__ = [
    "FetchPolicy",
    "FetchResult",
    "Fetcher",
    "PinnedNetworkBackend",
    "is_text_type",
]

log = logging.getLogger(__name__)

REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_MAX_URL = 4096
_TEXT_TYPES = frozenset(
    {
        "application/xhtml+xml",
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/x-ndjson",
    }
)
_DEFAULT_UA = "FusionChatroom/1.0 (web_fetch; +self-hosted)"

Resolver = Callable[[str, int], Awaitable[list[str]]]


def is_text_type(content_type: str) -> bool:
    """True for text/* and the JSON/XML application types ("" — no header — is judged later)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+json") or mime.endswith("+xml")


# =========================================================================== policy and result


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of web_fetch. The default trusts nothing and reaches only ports 80 and 443.

    ``trusted_hosts`` skips the address check (never the port or domain checks) for hosts named
    exactly — for tests against a local server, ``FetchPolicy(trusted_hosts={"127.0.0.1"},
    allowed_ports={port})``. Never put a name there that an attacker's redirect could use.
    ``trusted_endpoints`` trusts exact ``(host, port)`` pairs instead: that port of that host only
    (address and port checks skipped), not the host's other ports.
    """

    allowed_ports: frozenset[int] = frozenset({80, 443})
    trusted_hosts: frozenset[str] = frozenset()
    trusted_endpoints: frozenset[tuple[str, int]] = frozenset()
    max_bytes: int = 2_000_000  # decompressed body bytes read; beyond → "too large"
    max_chars: int = 20_000  # extracted text handed on; beyond → truncated
    timeout: float = 20.0  # the whole fetch: DNS, every hop, body, extraction
    connect_timeout: float = 10.0
    max_redirects: int = 5
    user_agent: str = _DEFAULT_UA

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ports", frozenset(int(p) for p in self.allowed_ports))
        trusted = set()
        for host in self.trusted_hosts:
            try:
                trusted.add(netguard.normalise_host(host)[0])
            except netguard.HostError:
                raise ValueError(f"invalid trusted host {host!r}") from None
        object.__setattr__(self, "trusted_hosts", frozenset(trusted))
        endpoints = set()
        for host, port in self.trusted_endpoints:
            try:
                endpoints.add((netguard.normalise_host(host)[0], int(port)))
            except netguard.HostError:
                raise ValueError(f"invalid trusted endpoint {host!r}:{port}") from None
        object.__setattr__(self, "trusted_endpoints", frozenset(endpoints))
        if self.max_bytes <= 0 or self.max_redirects < 0 or self.timeout <= 0:
            raise ValueError("max_bytes and timeout must be positive, max_redirects not negative")


@dataclass
class FetchResult:
    ok: bool
    url: str  # as asked for
    final_url: str | None  # the last URL requested (or refused), after redirects
    title: str | None
    text: str  # extracted, cleaned, truncated to max_chars; "" on failure
    error: str | None  # short: "blocked: private address", "too large", "timed out", …
    status: int | None = None
    content_type: str | None = None
    truncated: bool = False
    redirects: int = 0


class _Refused(Exception):
    """A hop is refused; ``args[0]`` is the short error, ``detail`` goes to the log only."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


# =========================================================================== DNS pinning


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses pinned for a host.

    ``pin(host, addresses)`` records the addresses that were resolved and checked for a host;
    ``connect_tcp(host, port)`` then connects to those addresses (in order, first success wins)
    and to nothing else, and refuses a host that was never pinned. Connections made are listed
    in ``connections`` as ``(host, address, port)``.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._pins: dict[str, tuple[str, ...]] = {}
        self.connections: list[tuple[str, str, int]] = []

    @staticmethod
    def _key(host: str) -> str:
        return host.strip().strip("[]").lower().rstrip(".")

    def pin(self, host: str, addresses: Iterable[str]) -> None:
        addresses = tuple(addresses)
        if not addresses:
            raise ValueError("nothing to pin")
        self._pins[self._key(host)] = addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get(self._key(host))
        if not addresses:
            raise httpcore.ConnectError(f"refused: no checked address for host {host!r}")
        last: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                last = exc
                continue
            self.connections.append((self._key(host), address, port))
            return stream
        assert last is not None
        if isinstance(last, (httpcore.ConnectError, httpcore.ConnectTimeout)):
            raise last
        raise httpcore.ConnectError(str(last)) from last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refused: unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request/response mapping, exception mapping) over a pool whose
    every TCP connection goes through a PinnedNetworkBackend. No proxies, no retries, HTTP/1.1."""

    def __init__(self, backend: PinnedNetworkBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=4,
            max_keepalive_connections=2,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


# =========================================================================== bounded decoding


class _TooLarge(Exception):
    pass


class _Inflater:
    """One Content-Encoding stage (gzip or deflate), never producing more than it is allowed."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
        self._first = True

    def feed(self, data: bytes, limit: int) -> bytes:
        if not data:
            return b""
        try:
            out = self._obj.decompress(data, limit)
        except zlib.error:
            if self._gzip or not self._first:
                raise
            # "deflate" is sometimes sent as a raw deflate stream without the zlib header.
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._obj.decompress(data, limit)
        self._first = False
        if self._obj.unconsumed_tail:
            raise _TooLarge
        return out

    def flush(self, limit: int) -> bytes:
        out = self._obj.flush(limit) if not self._obj.eof else b""
        return out


def _decoders(content_encoding: str) -> list[_Inflater]:
    """Decoders in the order to apply them (the reverse of the header's order)."""
    stages = []
    for token in content_encoding.lower().split(","):
        token = token.strip()
        if token in ("", "identity"):
            continue
        if token not in ("gzip", "x-gzip", "deflate"):
            raise _Refused("unsupported content encoding", token)
        stages.append(_Inflater(token))
    return list(reversed(stages))


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decompressed body, or _TooLarge as soon as it would exceed ``max_bytes``."""
    decoders = _decoders(response.headers.get("content-encoding", ""))
    parts: list[bytes] = []
    total = 0
    raw_total = 0
    raw_cap = max_bytes if not decoders else max(max_bytes, 1) * 2  # compressed ≤ ~plain

    def push(data: bytes) -> None:
        nonlocal total
        total += len(data)
        if total > max_bytes:
            raise _TooLarge
        parts.append(data)

    try:
        async for chunk in response.aiter_raw():
            raw_total += len(chunk)
            if raw_total > raw_cap:
                raise _TooLarge
            data = chunk
            for decoder in decoders:
                data = decoder.feed(data, max_bytes - total + 1)
            push(data)
        for i, decoder in enumerate(decoders):
            data = decoder.flush(max_bytes - total + 1)
            for later in decoders[i + 1 :]:
                data = later.feed(data, max_bytes - total + 1)
            push(data)
    except zlib.error as exc:
        raise _Refused("bad content encoding", str(exc)) from None
    return b"".join(parts)


# =========================================================================== the fetcher


@dataclass
class _Hop:
    url: httpx.URL
    host: str
    port: int


@dataclass
class Fetcher:
    """Fetches one URL at a time under a FetchPolicy. Cheap; holds no connections between calls.

    ``network_backend`` is the real connector under the pinning backend (tests pass a
    recording one); ``resolver`` replaces ``netguard.resolve`` (``async (host, port) ->
    [address, ...]``); ``ssl_context`` replaces the default (system CA bundle) one.
    """

    policy: FetchPolicy = field(default_factory=FetchPolicy)
    network_backend: httpcore.AsyncNetworkBackend | None = None
    resolver: Resolver | None = None
    ssl_context: ssl.SSLContext | None = None

    async def fetch(self, url: str, *, domains: DomainFilter | None = None) -> FetchResult:
        state: dict[str, Any] = {"final_url": None, "redirects": 0}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.policy.timeout):
                result = await self._fetch(str(url), domains or DomainFilter(), state)
        except TimeoutError:
            result = self._fail(url, state, "timed out")
        except _Refused as refused:
            if refused.detail:
                log.info("web_fetch %s refused: %s (%s)", state["final_url"] or url, refused.error, refused.detail)
            result = self._fail(url, state, refused.error)
        except _TooLarge:
            result = self._fail(url, state, "too large")
        except httpx.TimeoutException:
            result = self._fail(url, state, "timed out")
        except httpx.ConnectError as exc:
            log.info("web_fetch %s: connect failed: %s", state["final_url"] or url, exc)
            result = self._fail(url, state, "connection failed")
        except httpx.HTTPError as exc:
            log.info("web_fetch %s: %s: %s", state["final_url"] or url, type(exc).__name__, exc)
            result = self._fail(url, state, f"network error: {type(exc).__name__}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tool never raises into the pipeline
            log.exception("web_fetch %s failed unexpectedly", url)
            result = self._fail(url, state, f"fetch failed: {type(exc).__name__}")
        log.debug("web_fetch %s → %s in %.0f ms", url, result.error or "ok", (time.monotonic() - started) * 1000)
        return result

    @staticmethod
    def _fail(url: str, state: dict[str, Any], error: str) -> FetchResult:
        return FetchResult(
            ok=False,
            url=str(url),
            final_url=state["final_url"],
            title=None,
            text="",
            error=error,
            status=state.get("status"),
            redirects=state["redirects"],
        )

    # ----------------------------------------------------------------------- hops

    async def _fetch(self, url: str, domains: DomainFilter, state: dict[str, Any]) -> FetchResult:
        policy = self.policy
        if len(url) > _MAX_URL:
            raise _Refused("bad url", "too long")
        try:
            target = httpx.URL(url.strip())
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise _Refused("bad url", str(exc)) from None
        backend = PinnedNetworkBackend(self.network_backend)
        # The transport is used directly, not through an httpx.AsyncClient: no cookie jar, no
        # environment proxies, no auth, and no redirect handling of its own — every hop below.
        transport = _PinnedTransport(backend, self.ssl_context or _ssl_context())
        resolved: dict[str, list[str]] = {}  # host → checked addresses, once per fetch
        timeout = httpx.Timeout(policy.timeout, connect=policy.connect_timeout).as_dict()
        async with transport:
            for hop_number in range(policy.max_redirects + 1):
                state["final_url"] = str(target)
                hop = self._check(target, domains)
                state["final_url"] = str(hop.url)
                backend.pin(hop.host, await self._addresses(hop, resolved))
                request = httpx.Request("GET", hop.url, headers=self._headers(), extensions={"timeout": timeout})
                response = await transport.handle_async_request(request)
                try:
                    state["status"] = response.status_code
                    if response.status_code in REDIRECT_STATUS:
                        location = response.headers.get("location")
                        if not location:
                            raise _Refused(f"http {response.status_code}", "redirect without Location")
                        if hop_number >= policy.max_redirects:
                            raise _Refused("too many redirects")
                        try:
                            target = hop.url.join(location.strip())
                        except (httpx.InvalidURL, ValueError) as exc:
                            raise _Refused("bad url", f"redirect: {exc}") from None
                        state["redirects"] += 1
                        continue
                    return await self._finish(url, hop, response, state)
                finally:
                    await response.aclose()
        raise _Refused("too many redirects")  # pragma: no cover - the loop returns or raises

    def _check(self, url: httpx.URL, domains: DomainFilter) -> _Hop:
        """Everything about a hop that can be decided before DNS and before any connection."""
        if url.scheme not in ("http", "https"):
            raise _Refused("blocked: scheme", url.scheme)
        if url.userinfo:
            raise _Refused("bad url", "credentials in URL")
        try:
            host, ip = netguard.normalise_host(url.raw_host.decode("ascii"))
        except (netguard.HostError, UnicodeDecodeError) as exc:
            raise _Refused("bad url", f"host: {exc}") from None
        port = url.port or (443 if url.scheme == "https" else 80)
        endpoint_trusted = (host, port) in self.policy.trusted_endpoints
        why = domains.reason(host)
        if why:
            raise _Refused("blocked: domain", f"{host} {why}")
        # The address before the port: "blocked: private address" says more about a redirect
        # into loopback or a metadata service than "blocked: port" would.
        trusted = endpoint_trusted or host in self.policy.trusted_hosts
        if not trusted:
            why = netguard.host_block_reason(host) if ip is None else netguard.address_block_reason(ip)
            if why:
                raise _Refused(netguard.BLOCKED_PRIVATE, f"{host}: {why}")
        if port not in self.policy.allowed_ports and not endpoint_trusted:
            raise _Refused("blocked: port", str(port))
        canonical = url.copy_with(host=host, fragment=None) if url.raw_host.decode("ascii") != host else url
        if canonical.fragment:
            canonical = canonical.copy_with(fragment=None)
        return _Hop(canonical, host, port)

    async def _addresses(self, hop: _Hop, resolved: dict[str, list[str]]) -> list[str]:
        """The checked addresses of a hop's host: resolved once per fetch, every one public."""
        try:
            literal = netguard.normalise_host(hop.host)[1]
        except netguard.HostError:  # pragma: no cover - _check normalised it already
            literal = None
        if literal is not None:
            return [str(literal)]
        if hop.host not in resolved:
            resolver = self.resolver or netguard.resolve
            try:
                addresses = list(await resolver(hop.host, hop.port))
            except (OSError, socket.gaierror, UnicodeError) as exc:
                raise _Refused("dns failed", str(exc)) from None
            if not addresses:
                raise _Refused("dns failed", "no addresses")
            trusted = hop.host in self.policy.trusted_hosts or (hop.host, hop.port) in self.policy.trusted_endpoints
            if not trusted:
                for address in addresses:
                    why = netguard.address_block_reason(address)
                    if why:
                        raise _Refused(netguard.BLOCKED_PRIVATE, f"{hop.host} → {address}: {why}")
            resolved[hop.host] = addresses
        return resolved[hop.host]

    def _headers(self) -> dict[str, str]:
        return {
            "User-Agent": self.policy.user_agent,
            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.8,*/*;q=0.1",
            "Accept-Encoding": "gzip, deflate",
        }

    # ----------------------------------------------------------------------- body

    async def _finish(self, url: str, hop: _Hop, response: httpx.Response, state: dict[str, Any]) -> FetchResult:
        status = response.status_code
        if not 200 <= status < 300:
            raise _Refused(f"http {status}")
        content_type = response.headers.get("content-type", "").strip()
        if content_type and not is_text_type(content_type):
            raise _Refused("not text", content_type.split(";", 1)[0])
        length = response.headers.get("content-length", "")
        if length.isdigit() and not response.headers.get("content-encoding") and int(length) > self.policy.max_bytes:
            raise _TooLarge
        body = await _read_capped(response, self.policy.max_bytes)
        if "utf-16" not in content_type.lower() and b"\x00" in body[:1024]:
            raise _Refused("not text", "binary body")
        extracted = await asyncio.to_thread(extract_document, body, content_type, str(hop.url))
        text, truncated = truncate(extracted.text, self.policy.max_chars)
        return FetchResult(
            ok=True,
            url=url,
            final_url=str(hop.url),
            title=extracted.title,
            text=text,
            error=None,
            status=status,
            content_type=content_type or None,
            truncated=truncated,
            redirects=state["redirects"],
        )
