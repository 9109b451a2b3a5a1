"""Domain filters shared by web_search (applied to every result) and web_fetch (every hop).

A domain entry matches itself and its subdomains: ``example.com`` matches ``example.com`` and
``a.b.example.com`` but not ``notexample.com``. Entries and hosts are compared in their ASCII
(IDNA) form, lower-case, without a trailing dot; a leading ``*.`` or ``.`` on an entry, a scheme,
a port or a path pasted with it are tolerated and dropped. IP literals match only exactly.

Pure; standard library only: no Django, no httpx.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx

__all__ = ["DomainFilter", "domain_matches", "host_of", "normalise_domain"]


def normalise_domain(entry: str) -> str:
    """The canonical form of a domain-list entry or a host ("" when it has no usable host)."""
    text = (entry or "").strip().lower()
    if not text:
        return ""
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    text = text.rsplit("@", 1)[-1]
    if text.startswith("["):  # IPv6 literal, maybe with a port
        return text[1:].split("]", 1)[0]
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    text = text.removeprefix("*.").lstrip(".").rstrip(".")
    if not text:
        return ""
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text


def host_of(url: str) -> str:
    """The normalised host of a URL, or "" when it has none (or does not parse)."""
    try:
        raw = httpx.URL(url).raw_host.decode("ascii")
    except Exception:  # noqa: BLE001 - any unparsable URL simply has no host
        return ""
    return normalise_domain(raw) if raw else ""


def domain_matches(host: str, domain: str) -> bool:
    """True when ``host`` is ``domain`` or one of its subdomains (both already normalised)."""
    if not host or not domain:
        return False
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True)
class DomainFilter:
    """Allowed / excluded / blocked domains, fixed at construction.

    ``allowed`` empty means every domain is allowed; otherwise a host must match one entry.
    ``excluded`` (a user's per-run preference) and ``blocked`` (the administrator's list) both
    refuse a host; they are kept apart only so messages and settings can tell them apart.
    """

    allowed: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, allowed: Iterable[str] = (), excluded: Iterable[str] = (), blocked: Iterable[str] = ()
    ) -> DomainFilter:
        def clean(entries: Iterable[str]) -> tuple[str, ...]:
            if isinstance(entries, str):
                entries = [entries]
            return tuple(dict.fromkeys(d for d in (normalise_domain(e) for e in entries or ()) if d))

        return cls(clean(allowed), clean(excluded), clean(blocked))

    @property
    def active(self) -> bool:
        return bool(self.allowed or self.excluded or self.blocked)

    def reason(self, host: str) -> str | None:
        """Why ``host`` is refused ("blocked", "excluded", "not allowed"), or None."""
        host = normalise_domain(host)
        if not host:
            return "no host"
        if any(domain_matches(host, d) for d in self.blocked):
            return "blocked"
        if any(domain_matches(host, d) for d in self.excluded):
            return "excluded"
        if self.allowed and not any(domain_matches(host, d) for d in self.allowed):
            return "not allowed"
        return None

    def permits(self, host: str) -> bool:
        return self.reason(host) is None

    def permits_url(self, url: str) -> bool:
        return self.permits(host_of(url))
