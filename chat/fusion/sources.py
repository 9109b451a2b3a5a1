"""Sources of web research: the one place that says when two pages are the same page.

Owns URL normalisation and source merging for the engine, its tools and the run layer:
a source is known by its normalised URL (http/https only, host lower-cased, no userinfo, no
default port, fragment dropped; see docs/protocol.md, "Web research"). A member's sources are
``[{url, title, kind}]``; a run's are ``[{url, title, members: [model ids]}]``.

Plain functions over dicts; imports nothing but the standard library (no Django, no httpx).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = ["merge_sources", "normalise_url", "run_sources", "source_dict"]

MAX_TITLE = 300


class _SourceLike(Protocol):
    """A ``chat.fusion.tools.Source``: anything with ``url``, ``title`` and ``kind``."""

    @property
    def url(self) -> str: ...

    @property
    def title(self) -> str | None: ...

    @property
    def kind(self) -> str: ...


def normalise_url(url: str) -> str:
    """The URL a source is known by: http(s) only, host lowercased, no userinfo, no fragment,
    no default port; "" when it is not a usable web URL."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def source_dict(source: Mapping[str, Any] | _SourceLike) -> dict[str, str]:
    """A tools.Source (or a dict) as ``{url, title, kind}``, the title capped, nothing normalised."""
    if isinstance(source, Mapping):
        url, title, kind = source.get("url"), source.get("title"), source.get("kind")
    else:
        url, title, kind = source.url, source.title, source.kind
    return {"url": str(url or ""), "title": str(title or "")[:MAX_TITLE], "kind": str(kind or "")}


def merge_sources(
    into: list[dict[str, str]], sources: Iterable[Mapping[str, Any] | _SourceLike]
) -> list[dict[str, str]]:
    """Add *sources* to *into*, deduplicated by normalised URL, and return them normalised.

    A source whose URL is not a web URL is dropped. A page already in *into* is not added again,
    but gains the title it lacked. The returned list holds every usable source given, repeats
    included (what one tool call found), as ``{url, title, kind}``.
    """
    given: list[dict[str, str]] = []
    known = {s["url"]: s for s in into}
    for source in sources:
        item = source_dict(source)
        item["url"] = normalise_url(item["url"])
        if not item["url"]:
            continue
        given.append(item)
        existing = known.get(item["url"])
        if existing is None:
            known[item["url"]] = stored = dict(item)
            into.append(stored)
        elif item["title"] and not existing.get("title"):
            existing["title"] = item["title"]
    return given


def run_sources(by_member: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """The run's sources from each member's: ``[{url, title, members}]``, first seen first.

    *by_member* is ``(member key, its sources)`` pairs, e.g. ``("model#2", [...])`` or
    ``("analyst:<model>", [...])``; URLs are those of ``merge_sources`` (already normalised).
    """
    merged: dict[str, dict[str, Any]] = {}
    for key, sources in by_member:
        for source in sources:
            url = source.get("url")
            if not url:
                continue
            entry = merged.setdefault(url, {"url": url, "title": "", "members": []})
            entry["title"] = entry["title"] or source.get("title") or ""
            if key not in entry["members"]:
                entry["members"].append(key)
    return list(merged.values())
