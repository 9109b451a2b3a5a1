"""Address checks for the SSRF-safe fetcher: which hosts and IP addresses a fetch may reach.

Everything here is pure and synchronous except ``resolve``. The rules:

* A host is parsed into exactly one of: an IP literal (IPv6 in brackets, or IPv4 in *any* of
  the spellings ``inet_aton`` accepts — ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1`` —
  normalised to dotted quad), or a DNS name of plain LDH labels. Anything else (percent signs,
  IPv6 zone ids, ``1.2.3.4.5``) is not a host we fetch.
* An address may be reached only if it is globally routable: IPv4 must be ``is_global`` and
  outside an explicit deny list (loopback, RFC 1918, CGNAT, link-local, documentation,
  benchmarking, multicast, reserved, broadcast, 0/8, cloud metadata); IPv6 must lie in global
  unicast 2000::/3 outside Teredo, 6to4 with a non-public embedded IPv4, documentation and the
  other special blocks — or be NAT64 64:ff9b::/96 whose embedded IPv4 is itself public.
  IPv4-mapped, IPv4-compatible and IPv4-translated forms are refused outright.
* A few names are refused before any DNS query (``localhost`` and ``*.localhost``, cloud
  metadata names); the address check would catch them anyway.

Standard library only: no Django, no httpx.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

__all__ = [
    "BLOCKED_PRIVATE",
    "HostError",
    "IPAddress",
    "address_block_reason",
    "host_block_reason",
    "is_public_address",
    "normalise_host",
    "parse_ipv4_loose",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The error string a fetch reports for every non-public destination (the detail goes to logs).
BLOCKED_PRIVATE = "blocked: private address"

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# IPv4 blocks that are never fetched, named for log lines. ``is_global`` covers most; the list
# makes the policy explicit and independent of the Python version's IANA tables.
_V4_DENY: list[tuple[ipaddress.IPv4Network, str]] = [
    (_V4("0.0.0.0/8"), "this-network"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "cgnat"),  # includes Alibaba Cloud metadata 100.100.100.200
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),  # includes cloud metadata 169.254.169.254
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "ietf-protocol"),  # includes Oracle Cloud metadata 192.0.0.192
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.31.196.0/24"), "as112"),
    (_V4("192.52.193.0/24"), "amt"),
    (_V4("192.88.99.0/24"), "6to4-relay"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("192.175.48.0/24"), "as112"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),  # includes broadcast 255.255.255.255
    (_V4("168.63.129.16/32"), "metadata"),  # Azure WireServer: a public address, host-local service
]

_V6_GLOBAL_UNICAST = _V6("2000::/3")
_V6_NAT64 = _V6("64:ff9b::/96")  # well-known NAT64 prefix: allowed if the embedded IPv4 is public
_V6_6TO4 = _V6("2002::/16")  # 6to4: allowed only if the embedded IPv4 is public
_V6_DENY: list[tuple[ipaddress.IPv6Network, str]] = [
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::ffff:0:0/96"), "ipv4-mapped"),
    (_V6("::/96"), "ipv4-compatible"),
    (_V6("::ffff:0:0:0/96"), "ipv4-translated"),
    (_V6("64:ff9b:1::/48"), "nat64-local"),
    (_V6("100::/64"), "discard"),
    (_V6("2001::/32"), "teredo"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:10::/28"), "orchid"),
    (_V6("2001:20::/28"), "orchid"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("5f00::/16"), "srv6"),
    (_V6("fc00::/7"), "unique-local"),  # includes AWS metadata fd00:ec2::254
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
]

# Names refused before DNS. Lower-case, no trailing dot; a name also matches its subdomains.
_BLOCKED_NAMES = ("localhost", "metadata.google.internal", "metadata.goog", "instance-data.ec2.internal")

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_PART = re.compile(r"^(?:0[x][0-9a-f]*|[0-9]+)$")


class HostError(ValueError):
    """The URL's host is not something we will connect to, syntactically."""


# =========================================================================== host parsing


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a lenient resolver (``inet_aton``, browsers) would read from ``host``.

    Accepts 1–4 dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``); the
    last part fills the remaining bytes: ``127.1`` → 127.0.0.1, ``2130706433`` → 127.0.0.1,
    ``0x7f.1`` → 127.0.0.1, ``0177.0.0.1`` → 127.0.0.1. None when ``host`` is not such a form.
    """
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]  # one trailing dot (a fully qualified spelling), no more
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not part:
            return None
        try:
            if part.startswith("0x"):
                value = int(part[2:], 16) if len(part) > 2 else 0
            elif len(part) > 1 and part.startswith("0"):
                value = int(part[1:], 8)
            elif part.isdigit():
                value = int(part, 10)
            else:
                return None
        except ValueError:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def normalise_host(host: str) -> tuple[str, IPAddress | None]:
    """``(host, ip)``: the canonical host text and, for IP literals, the address.

    Names come back lower-case without a trailing dot, IP literals in canonical form (IPv4
    dotted quad whatever the spelling; IPv6 compressed, without brackets). Raises HostError for
    anything that is neither a clean IP literal nor a plain DNS name.
    """
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise HostError("empty host")
    if ":" in text:
        if "%" in text:
            raise HostError("IPv6 zone ids are not allowed")
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise HostError("invalid IPv6 address") from None
        return str(ip6), ip6
    if text.endswith("."):
        text = text[:-1]
    labels = text.split(".")
    # Like the URL standard: a host whose last label is numeric is an IPv4 address or invalid.
    if _NUMERIC_PART.match(labels[-1]):
        ip4 = parse_ipv4_loose(text)
        if ip4 is None:
            raise HostError("invalid IPv4 address")
        return str(ip4), ip4
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise HostError("invalid host name")
    return text, None


def host_block_reason(host: str) -> str | None:
    """Why a (normalised) host *name* is refused before DNS, or None."""
    for name in _BLOCKED_NAMES:
        if host == name or host.endswith("." + name):
            return f"reserved name {name}"
    return None


# =========================================================================== address checks


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, why in _V4_DENY:
        if ip in network:
            return why
    if not ip.is_global:
        return "not global"
    return None


def address_block_reason(ip: IPAddress | str) -> str | None:
    """Why ``ip`` must not be connected to (a short tag for logs), or None when it is public."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return "not an address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_reason(ip)
    if ip.scope_id:
        return "scoped"
    if ip in _V6_NAT64:
        inner = _v4_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return f"nat64 of {inner}" if inner else None
    for network, why in _V6_DENY:
        if ip in network:
            return why
    if ip not in _V6_GLOBAL_UNICAST:
        return "not global unicast"
    if ip in _V6_6TO4:
        inner = _v4_reason(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
        return f"6to4 of {inner}" if inner else None
    if ip.ipv4_mapped is not None or ip.teredo is not None:  # belt and braces; denied above
        return "embedded ipv4"
    return None


def is_public_address(ip: IPAddress | str) -> bool:
    """True when ``ip`` is globally routable and not a special-purpose or metadata address."""
    return address_block_reason(ip) is None


# =========================================================================== resolution


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order, without duplicates.

    One call, one ``getaddrinfo``: the caller checks these addresses and then connects only to
    them, so a second DNS answer can never change where the connection goes.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            address = f"{address}%{sockaddr[3]}"  # scoped: refused by the check
        if address not in seen:
            seen.append(address)
    return seen
