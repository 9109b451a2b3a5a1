"""Pluggable web-search backends behind ``web_search``: SearXNG, Brave, Tavily, Exa.

Every backend returns ``list[SearchResult]`` normalised from its own JSON shape, and raises
``SearchError`` (a short, key-free message) on trouble; ``WebTools`` turns that into a tool
error. Backend URLs come from the administrator's configuration, so they get no SSRF address
check, but redirects are never followed (a 3xx is an error) and response bodies are capped.

Domain filters: backends that support them natively (Tavily, Exa) are given
``include_domains`` / ``exclude_domains``; ``WebTools`` filters every result again whatever the
backend did, subdomains included.

The one place that calls search APIs. Imports httpx: no Django, no pipeline module.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

__all__ = [
    "BACKENDS",
    "BraveBackend",
    "ExaBackend",
    "SearchBackend",
    "SearchError",
    "SearchResult",
    "SearxngBackend",
    "TavilyBackend",
    "make_search_backend",
]

log = logging.getLogger(__name__)

_MAX_BODY = 4_000_000
_MAX_SNIPPET = 1_000


@dataclass
class SearchResult:
    title: str
    url: str
    snippet: str
    published: str | None = None


class SearchError(Exception):
    """A search failed; ``str(error)`` is short, safe to show, and never contains a key."""


@runtime_checkable
class SearchBackend(Protocol):
    """What WebTools needs of a backend. A backend whose ``supports_domain_filters`` attribute is
    true is also called with ``include_domains=`` / ``exclude_domains=`` keyword arguments."""

    name: str

    async def search(self, query: str, *, max_results: int) -> list[SearchResult]: ...


# =========================================================================== shared HTTP


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _snippet(value: Any) -> str:
    text = " ".join(_text(value).split())
    return text[:_MAX_SNIPPET]


class _HTTPBackend:
    """Common plumbing: one request, no redirects, capped body, JSON object out."""

    name: str = "base"
    default_url = ""
    supports_domain_filters = False  # passed natively to the API (WebTools filters regardless)
    forbidden_hint = "check the API key / access"

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str = "",
        timeout: float = 15.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = (url or self.default_url).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.name}: url must be http(s)")
        self._api_key = api_key
        self.timeout = float(timeout)
        self._http = http

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(url={self.url!r})"

    async def search(
        self, query: str, *, max_results: int, include_domains: Sequence[str] = (), exclude_domains: Sequence[str] = ()
    ) -> list[SearchResult]:
        raise NotImplementedError  # each backend speaks its own API

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        # httpx's timeouts bound each read, not the call: a server dripping one byte at a time
        # would never trip them. The deadline covers the whole request.
        try:
            async with asyncio.timeout(self.timeout):
                response, body = await self._send(method, url, params, json_body, headers)
        except TimeoutError:
            raise SearchError(f"{self.name}: timed out") from None
        status = response.status_code
        if 300 <= status < 400:
            raise SearchError(f"{self.name}: unexpected redirect (http {status})")
        if status == 401 or status == 403:
            raise SearchError(f"{self.name}: http {status} ({self.forbidden_hint})")
        if status == 429:
            raise SearchError(f"{self.name}: rate limited (http 429)")
        if not 200 <= status < 300:
            raise SearchError(f"{self.name}: http {status}")
        try:
            payload = json.loads(body)
        except ValueError:
            raise SearchError(f"{self.name}: response is not JSON") from None
        if not isinstance(payload, dict):
            raise SearchError(f"{self.name}: unexpected response")
        return payload

    async def _send(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        headers: dict[str, str] | None,
    ) -> tuple[httpx.Response, bytes]:
        owned = self._http is None
        http = self._http or httpx.AsyncClient(verify=_ssl_context())
        try:
            request = http.build_request(
                method,
                url,
                params=params,
                json=json_body,
                headers={"Accept": "application/json", **(headers or {})},
                timeout=httpx.Timeout(self.timeout),
            )
            try:
                response = await http.send(request, stream=True, follow_redirects=False)
            except httpx.TimeoutException:
                raise SearchError(f"{self.name}: timed out") from None
            except httpx.HTTPError as exc:
                raise SearchError(f"{self.name}: network error ({type(exc).__name__})") from None
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise SearchError(f"{self.name}: response too large")
            except httpx.TimeoutException:
                raise SearchError(f"{self.name}: timed out") from None
            except httpx.HTTPError as exc:
                raise SearchError(f"{self.name}: network error ({type(exc).__name__})") from None
            finally:
                await response.aclose()
        finally:
            if owned:
                await http.aclose()
        return response, bytes(body)

    @staticmethod
    def _results(
        items: Any, convert: Callable[[dict[str, Any]], SearchResult | None], max_results: int
    ) -> list[SearchResult]:
        out: list[SearchResult] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            result = convert(item)
            if result is None or not result.url.startswith(("http://", "https://")):
                continue
            out.append(result)
            if len(out) >= max_results:
                break
        return out


# =========================================================================== backends


class SearxngBackend(_HTTPBackend):
    """A SearXNG instance: ``GET {url}/search?q=…&format=json``.

    The instance must allow JSON output: add ``json`` to ``search.formats`` in its
    ``settings.yml`` (the default is ``html`` only; without it SearXNG answers 403).
    Result shape: ``{"results": [{"url", "title", "content", "publishedDate"?}, …]}``.
    """

    name = "searxng"
    forbidden_hint = "is json enabled in the instance's search.formats?"

    async def search(
        self, query: str, *, max_results: int, include_domains: Sequence[str] = (), exclude_domains: Sequence[str] = ()
    ) -> list[SearchResult]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        payload = await self._request(
            "GET", self.url + "/search", params={"q": query, "format": "json"}, headers=headers
        )

        def convert(item: dict[str, Any]) -> SearchResult | None:
            return SearchResult(
                title=_text(item.get("title")),
                url=_text(item.get("url")),
                snippet=_snippet(item.get("content")),
                published=_text(item.get("publishedDate")) or None,
            )

        return self._results(payload.get("results"), convert, max_results)


class BraveBackend(_HTTPBackend):
    """Brave Search API: ``GET …/res/v1/web/search?q=…&count=N`` with ``X-Subscription-Token``.

    Result shape: ``{"web": {"results": [{"title", "url", "description", "page_age"?, "age"?}]}}``;
    descriptions carry ``<strong>`` highlighting, which is stripped.
    """

    name = "brave"
    default_url = "https://api.search.brave.com/res/v1/web/search"

    async def search(
        self, query: str, *, max_results: int, include_domains: Sequence[str] = (), exclude_domains: Sequence[str] = ()
    ) -> list[SearchResult]:
        payload = await self._request(
            "GET",
            self.url,
            params={"q": query[:400], "count": max(1, min(20, max_results))},
            headers={"X-Subscription-Token": self._api_key},
        )

        def convert(item: dict[str, Any]) -> SearchResult | None:
            description = _snippet(item.get("description"))
            for tag in ("<strong>", "</strong>", "<b>", "</b>"):
                description = description.replace(tag, "")
            return SearchResult(
                title=_text(item.get("title")),
                url=_text(item.get("url")),
                snippet=description,
                published=_text(item.get("page_age")) or _text(item.get("age")) or None,
            )

        raw_web = payload.get("web")
        web: dict[str, Any] = raw_web if isinstance(raw_web, dict) else {}
        return self._results(web.get("results"), convert, max_results)


class TavilyBackend(_HTTPBackend):
    """Tavily: ``POST https://api.tavily.com/search`` with ``Authorization: Bearer <key>``.

    Request ``{"query", "max_results", "search_depth": "basic", "include_domains"?,
    "exclude_domains"?}``; result shape ``{"results": [{"title", "url", "content",
    "published_date"?, "score"}]}``.
    """

    name = "tavily"
    default_url = "https://api.tavily.com/search"
    supports_domain_filters = True

    async def search(
        self, query: str, *, max_results: int, include_domains: Sequence[str] = (), exclude_domains: Sequence[str] = ()
    ) -> list[SearchResult]:
        body: dict[str, Any] = {
            "query": query,
            "max_results": max(1, min(20, max_results)),
            "search_depth": "basic",
        }
        if include_domains:
            body["include_domains"] = list(include_domains)
        if exclude_domains:
            body["exclude_domains"] = list(exclude_domains)
        payload = await self._request(
            "POST", self.url, json_body=body, headers={"Authorization": f"Bearer {self._api_key}"}
        )

        def convert(item: dict[str, Any]) -> SearchResult | None:
            return SearchResult(
                title=_text(item.get("title")),
                url=_text(item.get("url")),
                snippet=_snippet(item.get("content")),
                published=_text(item.get("published_date")) or None,
            )

        return self._results(payload.get("results"), convert, max_results)


class ExaBackend(_HTTPBackend):
    """Exa: ``POST https://api.exa.ai/search`` with ``x-api-key``.

    Request ``{"query", "numResults", "includeDomains"?, "excludeDomains"?, "contents":
    {"highlights": …}}``; result shape ``{"results": [{"title", "url", "publishedDate"?,
    "highlights"?: [str], "summary"?, "text"?}]}`` — the snippet is the highlights, else the
    summary, else the start of the text.
    """

    name = "exa"
    default_url = "https://api.exa.ai/search"
    supports_domain_filters = True

    async def search(
        self, query: str, *, max_results: int, include_domains: Sequence[str] = (), exclude_domains: Sequence[str] = ()
    ) -> list[SearchResult]:
        body: dict[str, Any] = {
            "query": query,
            "numResults": max(1, min(25, max_results)),
            "contents": {"highlights": {"numSentences": 3, "highlightsPerUrl": 2}},
        }
        if include_domains:
            body["includeDomains"] = list(include_domains)
        if exclude_domains:
            body["excludeDomains"] = list(exclude_domains)
        payload = await self._request("POST", self.url, json_body=body, headers={"x-api-key": self._api_key})

        def convert(item: dict[str, Any]) -> SearchResult | None:
            highlights = item.get("highlights")
            snippet = ""
            if isinstance(highlights, list):
                snippet = " … ".join(_snippet(h) for h in highlights if _text(h))
            snippet = snippet or _snippet(item.get("summary")) or _snippet(item.get("text"))
            return SearchResult(
                title=_text(item.get("title")),
                url=_text(item.get("url")),
                snippet=snippet[:_MAX_SNIPPET],
                published=_text(item.get("publishedDate")) or None,
            )

        return self._results(payload.get("results"), convert, max_results)


BACKENDS: dict[str, type[_HTTPBackend]] = {
    "searxng": SearxngBackend,
    "brave": BraveBackend,
    "tavily": TavilyBackend,
    "exa": ExaBackend,
}
_NEEDS_KEY = frozenset({"brave", "tavily", "exa"})


def make_search_backend(
    config: dict[str, Any] | None, *, http: httpx.AsyncClient | None = None
) -> SearchBackend | None:
    """A backend from ``{"backend": "searxng"|"brave"|"tavily"|"exa", "url": …, "api_key": …,
    "timeout": seconds}``; None when nothing is configured (no config or no ``backend``).

    Raises ValueError for a configuration that names a backend but cannot work (unknown name,
    SearXNG without ``url``, a hosted API without ``api_key``), so a mistake shows at start-up.
    """
    if not config or not str(config.get("backend") or "").strip():
        return None
    name = str(config["backend"]).strip().lower()
    cls = BACKENDS.get(name)
    if cls is None:
        raise ValueError(f"unknown search backend {name!r}; expected one of {', '.join(sorted(BACKENDS))}")
    url = str(config.get("url") or "").strip() or None
    api_key = str(config.get("api_key") or "").strip()
    if name == "searxng" and not url:
        raise ValueError("the searxng search backend needs a url")
    if name in _NEEDS_KEY and not api_key:
        raise ValueError(f"the {name} search backend needs an api_key")
    timeout = float(config.get("timeout") or 15.0)
    return cls(url=url, api_key=api_key, timeout=timeout, http=http)
