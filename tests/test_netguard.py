"""Address and host checks of the SSRF guard (chat/fusion/tools/netguard.py) and domain filters."""

from __future__ import annotations

import ipaddress

import pytest

from chat.fusion.tools import netguard
from chat.fusion.tools.domains import DomainFilter, domain_matches, host_of, normalise_domain

BLOCKED = [
    # IPv4
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.255.255",
    "169.254.0.1",
    "169.254.169.254",  # AWS / GCP / Azure metadata
    "100.64.0.1",
    "100.127.255.254",
    "100.100.100.200",  # Alibaba Cloud metadata
    "192.0.0.192",  # Oracle Cloud metadata
    "168.63.129.16",  # Azure WireServer
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",
    "192.88.99.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    # IPv6
    "::",
    "::1",
    "fe80::1",
    "febf::1",
    "fc00::1",
    "fd12:3456:789a::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "::ffff:8.8.8.8",  # IPv4-mapped, even of a public address: refused outright
    "::127.0.0.1",  # IPv4-compatible
    "::8.8.8.8",
    "::ffff:0:7f00:1",  # IPv4-translated
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::5db8:d822",  # local-use NAT64 prefix
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
    "3fff::1",
    "100::1",
    "2001:2::1",
    "2001:10::1",
    "fe80::1%1",  # scoped
]

PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "151.101.1.69",
    "2606:4700::1",
    "2a00:1450:4001:80b::200e",
    "2001:4860:4860::8888",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
]


@pytest.mark.parametrize("address", BLOCKED)
def test_special_addresses_are_refused(address):
    assert netguard.address_block_reason(address) is not None
    assert not netguard.is_public_address(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert netguard.address_block_reason(address) is None
    assert netguard.is_public_address(ipaddress.ip_address(address))


def test_garbage_is_not_an_address():
    assert netguard.address_block_reason("not-an-ip") == "not an address"


@pytest.mark.parametrize(
    "spelling",
    [
        "2130706433",  # decimal
        "0x7f000001",  # hex
        "017700000001",  # octal
        "0x7f.1",  # hex + short
        "0x7F.0.0.1",
        "0177.0.0.1",  # octal first octet
        "0177.0.0.01",
        "127.1",  # short form
        "127.0.1",
        "127.0.0.1.",  # trailing dot
        "127.000.000.001",
    ],
)
def test_loose_ipv4_spellings_of_loopback(spelling):
    assert netguard.parse_ipv4_loose(spelling) == ipaddress.IPv4Address("127.0.0.1")
    host, ip = netguard.normalise_host(spelling)
    assert host == "127.0.0.1" and ip == ipaddress.IPv4Address("127.0.0.1")
    assert netguard.address_block_reason(ip) == "loopback"


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("2852039166", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("10.1", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("1572395042", "93.184.216.34"),
    ],
)
def test_loose_ipv4_spellings_normalise(spelling, expected):
    assert netguard.normalise_host(spelling)[0] == expected


@pytest.mark.parametrize(
    "host",
    [
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.256",
        "0x100.1.1.1",
        "08.1.1.1",  # not valid octal
        "4294967296",  # > 32 bits
        "1.2.16777216",
        "fe80::1%eth0",  # zone ids are refused
        "[fe80::1%25eth0]",
        "%31%32%37.0.0.1",
        "exa mple.com",
        "a..b",
        "-leading.example",
        "",
        "[]",
        "[::zz]",
    ],
)
def test_invalid_hosts_raise(host):
    with pytest.raises(netguard.HostError):
        netguard.normalise_host(host)


def test_ipv6_literals_and_names_normalise():
    assert netguard.normalise_host("[::1]") == ("::1", ipaddress.IPv6Address("::1"))
    assert netguard.normalise_host("[0:0:0:0:0:ffff:7f00:1]")[0] == "::ffff:7f00:1"
    assert netguard.normalise_host("Example.COM.") == ("example.com", None)
    assert netguard.normalise_host("xn--bcher-kva.de") == ("xn--bcher-kva.de", None)
    assert netguard.normalise_host("0xg.example") == ("0xg.example", None)  # a name, not a number
    assert netguard.normalise_host("1e100.net") == ("1e100.net", None)


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST.", "api.localhost", "metadata.google.internal"])
def test_reserved_names_are_refused_before_dns(name):
    host, _ = netguard.normalise_host(name)
    assert netguard.host_block_reason(host) is not None


def test_ordinary_names_are_not_reserved():
    assert netguard.host_block_reason("example.com") is None
    assert netguard.host_block_reason("notlocalhost.com") is None


async def test_resolve_returns_unique_addresses(monkeypatch):
    import asyncio
    import socket

    async def fake_getaddrinfo(host, port, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", port, 0, 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 2)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    addresses = await netguard.resolve("example.com", 443)
    assert addresses == ["93.184.216.34", "2606:4700::1", "fe80::1%2"]
    assert netguard.address_block_reason(addresses[2]) is not None


# --------------------------------------------------------------------------- domains


def test_domain_matching_includes_subdomains_only():
    assert domain_matches("example.com", "example.com")
    assert domain_matches("a.example.com", "example.com")
    assert domain_matches("a.b.example.com", "example.com")
    assert not domain_matches("notexample.com", "example.com")
    assert not domain_matches("example.com.evil.org", "example.com")
    assert not domain_matches("com", "example.com")


def test_domain_entries_are_normalised():
    assert normalise_domain("https://WWW.Example.com:8443/path?q") == "www.example.com"
    assert normalise_domain("*.example.com") == "example.com"
    assert normalise_domain(".example.com.") == "example.com"
    assert normalise_domain("bücher.de") == "xn--bcher-kva.de"
    assert normalise_domain("  ") == ""
    assert host_of("https://user@a.Example.com:8080/x") == "a.example.com"
    assert host_of("http://[2606:4700::1]:8080/") == "2606:4700::1"
    assert host_of("not a url at all") == ""


def test_domain_filter_reasons():
    f = DomainFilter.build(
        allowed=["example.com", "docs.python.org"], excluded=["ads.example.com"], blocked=["evil.com"]
    )
    assert f.reason("example.com") is None
    assert f.reason("www.example.com") is None
    assert f.reason("docs.python.org") is None
    assert f.reason("python.org") == "not allowed"
    assert f.reason("notexample.com") == "not allowed"
    assert f.reason("x.ads.example.com") == "excluded"
    assert f.reason("evil.com") == "blocked"
    assert f.reason("") == "no host"
    open_filter = DomainFilter.build(excluded="example.com")  # a bare string is one entry
    assert open_filter.excluded == ("example.com",)
    assert open_filter.permits("notexample.com") and not open_filter.permits("a.example.com")
    assert open_filter.permits_url("https://other.org/page")
    assert not open_filter.permits_url("https://A.Example.COM/page")
