"""The SSRF-safe fetcher and web_fetch, against local servers on 127.0.0.1.

The servers are trusted explicitly (``FetchPolicy(trusted_hosts={"127.0.0.1"}, allowed_ports=...)``);
the default policy trusts nothing. A second server on another port stands for "somewhere a
redirect must never reach": its request log has to stay empty.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpcore
import pytest

from chat.fusion.tools import FetchPolicy, Fetcher, WebTools, netguard
from chat.fusion.tools.domains import DomainFilter
from chat.fusion.tools.fetch import PinnedNetworkBackend
from chat.fusion.tools.text import UNTRUSTED_NOTE, clean_untrusted, wrap_page_content
from tests.tls import tls_pair
from tests.webserver import HIDDEN_INJECTION, LocalWebServer


@pytest.fixture
def server():
    with LocalWebServer() as s:
        yield s


@pytest.fixture
def other():
    """A server no test fetch may ever reach."""
    with LocalWebServer() as s:
        yield s


def trusted(server: LocalWebServer, **kwargs) -> FetchPolicy:
    return FetchPolicy(trusted_hosts={"127.0.0.1"}, allowed_ports={server.port}, **kwargs)


def fetcher(server: LocalWebServer, **kwargs) -> Fetcher:
    return Fetcher(trusted(server, **kwargs))


class NoNetwork(httpcore.AsyncNetworkBackend):
    """A connector that fails the test if anything tries to connect."""

    def __init__(self):
        self.attempts = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.attempts.append((host, port))
        raise AssertionError(f"unexpected connection to {host}:{port}")


class Redirecting(httpcore.AsyncNetworkBackend):
    """Records where the fetcher connects, then really connects to a local server instead."""

    def __init__(self, port: int):
        self.port = port
        self.connects: list[tuple[str, int]] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        return await self._real.connect_tcp("127.0.0.1", self.port, timeout=timeout)


async def no_dns(host, port):
    raise AssertionError(f"unexpected DNS lookup of {host}")


# --------------------------------------------------------------------------- happy paths


async def test_article_is_extracted(server):
    result = await fetcher(server).fetch(server.url("/article"))
    assert result.ok, result.error
    assert result.error is None
    assert result.title == "Growing Tomatoes on a Balcony"
    assert result.final_url == server.url("/article")
    assert "six hours of direct sunlight" in result.text
    assert "high-potassium fertiliser" in result.text
    assert "<p>" not in result.text
    assert result.status == 200 and result.content_type.startswith("text/html")
    assert not result.truncated
    request = server.requests_to("/article")[0]
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert "gzip" in request.headers["accept-encoding"]
    assert "cookie" not in request.headers


async def test_gzip_article_is_decoded(server):
    result = await fetcher(server).fetch(server.url("/article.gz"))
    assert result.ok, result.error
    assert "six hours of direct sunlight" in result.text


async def test_plain_and_json_bodies(server):
    plain = await fetcher(server).fetch(server.url("/plain"))
    assert plain.ok and plain.text == "Just some plain text.\nSecond line."
    data = await fetcher(server).fetch(server.url("/json"))
    assert data.ok and '"answer": 42' in data.text


async def test_text_is_truncated_to_max_chars(server):
    result = await fetcher(server, max_chars=120).fetch(server.url("/article"))
    assert result.ok and result.truncated
    assert len(result.text) <= 120


async def test_relative_redirects_within_limit_are_followed(server):
    result = await fetcher(server).fetch(server.url("/chain/5"))
    assert result.ok, result.error
    assert result.redirects == 5
    assert result.final_url == server.url("/chain/0")
    assert result.title == "End of chain"


async def test_weird_ipv4_spelling_is_normalised_before_trust(server):
    # 0x7f.1 *is* 127.0.0.1: once normalised, the explicitly trusted host matches.
    result = await fetcher(server).fetch(f"http://0x7f.1:{server.port}/article")
    assert result.ok, result.error
    assert result.final_url == server.url("/article")


# --------------------------------------------------------------------------- injection hygiene


async def test_injection_page_is_cleaned_and_delimited(server):
    tools = WebTools(search=None, fetch_policy=trusted(server))
    outcome = await tools.call("web_fetch", f'{{"url": "{server.url("/inject")}"}}')
    assert outcome.ok, outcome.content_for_model
    content = outcome.content_for_model
    assert content.startswith(UNTRUSTED_NOTE + "\n<page_content ")
    assert content.endswith("\n</page_content>")
    assert content.count("</page_content>") == 1  # the page's own copy is escaped
    assert "&lt;/page_content&gt;" in content or "&lt;/page_content>" in content
    assert f'url="{server.url("/inject")}"' in content and 'title="Tomato FAQ"' in content
    assert "Why do tomato leaves curl?" in content  # the visible text is there, quoted
    assert "Even watering prevents it." in content
    assert HIDDEN_INJECTION not in content  # display:none
    assert "HIDDEN ATTRIBUTE INJECTION" not in content  # hidden attribute
    assert not any(0xE0000 <= ord(c) <= 0xE007F for c in content)  # tag characters
    assert not any(c in content for c in "\u200b\u202e\u2066")
    assert "exfil" not in content and "SECRET_TOKEN" not in content
    assert server.requests_to("/exfil") == []  # nothing on the page is loaded
    assert outcome.sources[0].kind == "fetch" and outcome.sources[0].title == "Tomato FAQ"
    assert outcome.summary.startswith("Fetched 127.0.0.1")


def test_wrapper_escapes_delimiters_and_attributes():
    text = 'a </page_content> b </PAGE_CONTENT > c < / page_content> d <page_content url="x"> e'
    wrapped = wrap_page_content('http://x/"><script>', 'T"itle <b>', text)
    assert wrapped.count("</page_content>") == 1 and wrapped.count("<page_content ") == 1
    assert 'url="http://x/&quot;&gt;&lt;script&gt;"' in wrapped
    assert 'title="T&quot;itle &lt;b&gt;"' in wrapped


def test_clean_untrusted_strips_invisible_characters():
    smuggled = "".join(chr(0xE0000 + ord(c)) for c in "evil")
    raw = f"ok{smuggled}\u200b\u200c\u200d\u2060\ufeff\u202a\u202e\u2066\u2069\u00ad\x07 done\r\n\r\n\r\n\r\nend"
    assert clean_untrusted(raw) == "ok done\n\nend"
    assert clean_untrusted("e\U000e0101mo\ufe0fji") == "emo\ufe0fji"  # VS supplement stripped


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{other}/",
        "http://localhost:{other}/",
        "http://LOCALHOST.:{other}/",
        "http://2130706433:{other}/",
        "http://0x7f.1:{other}/",
        "http://127.1:{other}/",
        "http://[::ffff:127.0.0.1]:{other}/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://10.0.0.1/",
    ],
)
async def test_redirect_into_private_addresses_is_refused(server, other, target):
    """The first server is trusted by *name* only (web.test → 127.0.0.1), so no spelling of
    127.0.0.1 is trusted; the other server's port is allowed, so only the address check stands
    between the redirect and the other server."""

    async def resolver(host, port):
        if host == "web.test":
            return ["127.0.0.1"]
        return await netguard.resolve(host, port)

    target = target.format(other=other.port)
    policy = FetchPolicy(trusted_hosts={"web.test"}, allowed_ports={server.port, other.port, 80})
    result = await Fetcher(policy, resolver=resolver).fetch(f"http://web.test:{server.port}/redirect?to={target}")
    assert not result.ok
    assert result.error == "blocked: private address"
    assert result.redirects == 1
    assert other.paths() == []
    assert server.paths() == ["/redirect"]
    assert server.requests[0].headers["host"] == f"web.test:{server.port}"


async def test_redirect_to_leading_zero_octets_is_refused(server, other):
    # httpx will not even parse 0177.0.0.1 (netguard reads it as 127.0.0.1; see test_netguard).
    result = await fetcher(server).fetch(server.url(f"/redirect?to=http://0177.0.0.1:{other.port}/"))
    assert (result.ok, result.error) == (False, "bad url")
    assert other.paths() == []


async def test_redirect_to_another_local_port_is_refused(server, other):
    result = await fetcher(server).fetch(server.url(f"/redirect?to=http://127.0.0.1:{other.port}/article"))
    assert (result.ok, result.error) == (False, "blocked: port")
    assert result.final_url == f"http://127.0.0.1:{other.port}/article"  # the hop that was refused
    assert other.paths() == []


@pytest.mark.parametrize("to", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/_x"])
async def test_redirect_to_other_schemes_is_refused(server, to):
    result = await fetcher(server).fetch(server.url(f"/redirect?to={to}"))
    assert (result.ok, result.error) == (False, "blocked: scheme")


async def test_seven_redirects_are_too_many(server):
    result = await fetcher(server).fetch(server.url("/chain/7"))
    assert (result.ok, result.error) == (False, "too many redirects")
    assert result.redirects == 5
    # 1 request + 5 followed redirects; the 6th Location (/chain/1) was never requested.
    assert server.paths() == ["/chain/7", "/chain/6", "/chain/5", "/chain/4", "/chain/3", "/chain/2"]


async def test_max_redirects_is_configurable(server):
    result = await fetcher(server, max_redirects=0).fetch(server.url("/chain/1"))
    assert result.error == "too many redirects"
    assert server.paths() == ["/chain/1"]


# --------------------------------------------------------------------------- limits


async def test_gzip_bomb_stops_at_the_cap(server):
    started = time.monotonic()
    result = await fetcher(server, max_bytes=1_000_000).fetch(server.url("/gzip-bomb?mb=64"))
    assert (result.ok, result.error) == (False, "too large")
    assert time.monotonic() - started < 5


async def test_gzip_bomb_within_cap_is_read(server):
    result = await fetcher(server, max_bytes=3 * 1024 * 1024).fetch(server.url("/gzip-bomb?mb=2"))
    assert result.ok, result.error  # two megabytes of spaces: empty text, but not an error
    assert result.text == ""


async def test_plain_body_over_the_cap_is_too_large(server):
    result = await fetcher(server, max_bytes=500_000).fetch(server.url("/big?mb=2"))
    assert (result.ok, result.error) == (False, "too large")


async def test_slow_drip_times_out(server):
    started = time.monotonic()
    result = await fetcher(server, timeout=1.0).fetch(server.url("/slow"))
    assert (result.ok, result.error) == (False, "timed out")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/binary", "/octet", "/nul"])
async def test_binary_content_is_refused(server, path):
    result = await fetcher(server).fetch(server.url(path))
    assert (result.ok, result.error) == (False, "not text")


async def test_http_errors_are_reported(server):
    assert (await fetcher(server).fetch(server.url("/status/404"))).error == "http 404"
    assert (await fetcher(server).fetch(server.url("/status/503"))).error == "http 503"


async def test_connection_refused_is_a_clean_error(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = FetchPolicy(trusted_hosts={"127.0.0.1"}, allowed_ports={port})
    result = await Fetcher(policy).fetch(f"http://127.0.0.1:{port}/")
    assert (result.ok, result.error) == (False, "connection failed")


# --------------------------------------------------------------------------- refused before connecting


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1/", "blocked: private address"),
        ("http://2130706433/", "blocked: private address"),
        ("http://0x7f.1/", "blocked: private address"),
        ("http://0177.0.0.1/", "bad url"),  # httpx itself refuses leading-zero dotted quads
        ("http://127.1/", "blocked: private address"),
        ("http://[::1]/", "blocked: private address"),
        ("http://[::ffff:7f00:1]/", "blocked: private address"),
        ("http://[64:ff9b::7f00:1]/", "blocked: private address"),
        ("http://169.254.169.254/latest/meta-data/", "blocked: private address"),
        ("http://[fd00:ec2::254]/", "blocked: private address"),
        ("http://localhost/", "blocked: private address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "blocked: private address"),
        ("http://93.184.216.34:8080/", "blocked: port"),
        ("http://93.184.216.34:22/", "blocked: port"),
        ("file:///etc/passwd", "blocked: scheme"),
        ("ftp://example.com/", "blocked: scheme"),
        ("javascript:alert(1)", "blocked: scheme"),
        ("http://user:pass@example.com/", "bad url"),
        ("http://1.2.3.4.5/", "bad url"),
        ("http://%31%32%37.0.0.1/", "bad url"),
        ("http://[fe80::1%25eth0]/", "bad url"),
        ("not a url", "blocked: scheme"),
        ("http://" + "a" * 5000 + ".com/", "bad url"),
    ],
)
async def test_default_policy_refuses_without_any_network(url, error):
    network = NoNetwork()
    result = await Fetcher(FetchPolicy(), network_backend=network, resolver=no_dns).fetch(url)
    assert (result.ok, result.error) == (False, error)
    assert network.attempts == []


async def test_default_policy_does_not_trust_the_local_server(server):
    policy = FetchPolicy(allowed_ports={server.port})  # port open, but 127.0.0.1 is not trusted
    result = await Fetcher(policy).fetch(server.url("/article"))
    assert result.error == "blocked: private address"
    assert server.paths() == []


async def test_names_resolving_to_private_addresses_are_refused():
    async def resolver(host, port):
        return {"mixed.example": ["93.184.216.34", "10.0.0.5"], "rebind.example": ["127.0.0.1"]}[host]

    network = NoNetwork()
    for host in ("mixed.example", "rebind.example"):
        result = await Fetcher(FetchPolicy(), network_backend=network, resolver=resolver).fetch(f"http://{host}/")
        assert result.error == "blocked: private address"
    assert network.attempts == []


async def test_dns_failure_is_reported():
    async def resolver(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = await Fetcher(FetchPolicy(), network_backend=NoNetwork(), resolver=resolver).fetch("http://nx.example/")
    assert (result.ok, result.error) == (False, "dns failed")


async def test_blocked_and_excluded_domains_refuse_before_dns():
    network = NoNetwork()
    fetch = Fetcher(FetchPolicy(), network_backend=network, resolver=no_dns)
    domains = DomainFilter.build(blocked=["evil.com"], excluded=["example.com"])
    for url in ("https://evil.com/", "https://a.b.evil.com/x", "https://example.com/", "https://www.example.com/"):
        result = await fetch.fetch(url, domains=domains)
        assert result.error == "blocked: domain", url
    assert network.attempts == []


async def test_allowed_domains_refuse_everything_else_before_connecting(server):
    domains = DomainFilter.build(allowed=["example.org"])
    result = await fetcher(server).fetch(server.url("/article"), domains=domains)
    assert result.error == "blocked: domain"
    assert server.paths() == []


async def test_redirect_out_of_allowed_domains_is_refused_before_dns(server):
    fetch = Fetcher(trusted(server), resolver=no_dns)
    domains = DomainFilter.build(allowed=["127.0.0.1"])
    ok = await fetch.fetch(server.url("/article"), domains=domains)
    assert ok.ok, ok.error
    evil = f"http://evil.example:{server.port}/"
    refused = await fetch.fetch(server.url(f"/redirect?to={evil}"), domains=domains)
    assert (refused.ok, refused.error) == (False, "blocked: domain")
    assert refused.final_url == evil


async def test_webtools_domain_lists_apply_to_fetch(server):
    tools = WebTools(search=None, fetch_policy=trusted(server), blocked_domains=["127.0.0.1"])
    outcome = await tools.call("web_fetch", {"url": server.url("/article")})
    assert not outcome.ok and "blocked: domain" in outcome.content_for_model
    assert outcome.summary == "Fetch failed: blocked: domain"
    assert server.paths() == []


# --------------------------------------------------------------------------- DNS pinning


async def test_connection_goes_to_the_checked_address_not_a_later_dns_answer(server, monkeypatch):
    """First DNS answer public, every later one 127.0.0.1 (a rebinding attack): the connection
    must go to the first, and the name must be resolved only once, redirects included."""
    answers: list[str] = []

    async def getaddrinfo(host, port, **kwargs):
        address = "93.184.216.34" if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    network = Redirecting(server.port)
    fetch = Fetcher(FetchPolicy(), network_backend=network)  # the default policy: trusts nothing

    result = await fetch.fetch("http://pinned.example/redirect?to=http://pinned.example/article")
    assert result.ok, result.error
    assert answers == ["93.184.216.34"]  # resolved once for the whole fetch
    assert network.connects and set(network.connects) == {("93.184.216.34", 80)}
    assert [r.headers["host"] for r in server.requests] == ["pinned.example", "pinned.example"]
    assert result.final_url == "http://pinned.example/article"

    # A new fetch resolves afresh: the answer is now 127.0.0.1, and nothing connects.
    network.connects.clear()
    again = await fetch.fetch("http://pinned.example/article")
    assert again.error == "blocked: private address"
    assert network.connects == []


async def test_redirect_to_a_second_name_is_resolved_and_checked(server):
    async def resolver(host, port):
        return {"first.example": ["93.184.216.34"], "second.example": ["169.254.169.254"]}[host]

    network = Redirecting(server.port)
    fetch = Fetcher(FetchPolicy(), network_backend=network, resolver=resolver)
    result = await fetch.fetch("http://first.example/redirect?to=http://second.example/")
    assert result.error == "blocked: private address"
    assert network.connects == [("93.184.216.34", 80)]


async def test_pinned_backend_refuses_unpinned_hosts():
    network = NoNetwork()
    backend = PinnedNetworkBackend(network)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("unpinned.example", 80)
    assert network.attempts == []
    backend.pin("Pinned.Example.", ["93.184.216.34"])
    with pytest.raises(AssertionError):  # reaches the inner connector with the pinned address
        await backend.connect_tcp("pinned.example", 80)
    assert network.attempts == [("93.184.216.34", 80)]


async def test_pinned_backend_tries_each_checked_address_in_order(server):
    class FirstFails(Redirecting):
        async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            self.connects.append((host, port))
            if host == "2606:4700::1":
                raise httpcore.ConnectError("network unreachable")
            return await self._real.connect_tcp("127.0.0.1", self.port, timeout=timeout)

    async def resolver(host, port):
        return ["2606:4700::1", "93.184.216.34"]

    network = FirstFails(server.port)
    result = await Fetcher(FetchPolicy(), network_backend=network, resolver=resolver).fetch("http://dual.example/plain")
    assert result.ok, result.error
    assert network.connects == [("2606:4700::1", 80), ("93.184.216.34", 80)]


# --------------------------------------------------------------------------- WebTools.call


@pytest.mark.parametrize(
    "arguments",
    ["{not json", "[1, 2]", '"just a string"', "", "null", '{"url": 42}', '{"url": ""}', '{"href": "x"}'],
)
async def test_web_fetch_bad_arguments_are_tool_errors(arguments):
    tools = WebTools(
        search=None,
        fetch_policy=FetchPolicy(),
        fetcher=Fetcher(FetchPolicy(), network_backend=NoNetwork(), resolver=no_dns),
    )
    outcome = await tools.call("web_fetch", arguments)
    assert not outcome.ok
    assert outcome.content_for_model.startswith("Error: ")
    assert outcome.sources == []


async def test_unknown_and_unavailable_tools_are_tool_errors():
    tools = WebTools(search=None, fetch_policy=FetchPolicy())
    assert tools.available == ["web_fetch"]
    assert [s["function"]["name"] for s in tools.tool_schemas()] == ["web_fetch"]
    unknown = await tools.call("rm_rf", "{}")
    assert not unknown.ok and "unknown tool" in unknown.content_for_model
    unavailable = await tools.call("web_search", '{"query": "x"}')
    assert not unavailable.ok and "not available" in unavailable.content_for_model
    tools.available.append("web_search")  # a copy: cannot widen the tools
    assert tools.available == ["web_fetch"]


async def test_a_crashing_fetcher_does_not_raise():
    class Broken(Fetcher):
        async def fetch(self, url, *, domains=None):
            raise RuntimeError("boom")

    tools = WebTools(search=None, fetch_policy=FetchPolicy(), fetcher=Broken())
    outcome = await tools.call("web_fetch", '{"url": "https://example.com/"}')
    assert not outcome.ok and "RuntimeError" in outcome.content_for_model


async def test_fetches_are_cached_per_run(server):
    tools = WebTools(search=None, fetch_policy=trusted(server))
    first = await tools.call("web_fetch", {"url": server.url("/article")})
    second = await tools.call("web_fetch", {"url": server.url("/article")})
    assert first.ok and second.content_for_model == first.content_for_model
    assert server.paths() == ["/article"]


# --------------------------------------------------------------------------- TLS through the pin


async def test_https_through_the_pin_uses_the_name_for_sni_and_verification(tmp_path):
    server_ctx, client_ctx = tls_pair(tmp_path, "pinned.example")

    async def resolver(host, port):
        return ["93.184.216.34"]

    with LocalWebServer(ssl_context=server_ctx) as tls:
        network = Redirecting(tls.port)
        fetch = Fetcher(FetchPolicy(), network_backend=network, resolver=resolver, ssl_context=client_ctx)
        result = await fetch.fetch("https://pinned.example/article")
        assert result.ok, result.error
        assert "six hours of direct sunlight" in result.text
        assert network.connects == [("93.184.216.34", 443)]  # TCP to the checked address …
        assert tls.sni == ["pinned.example"]  # … TLS for the name
        assert tls.requests[0].headers["host"] == "pinned.example"

        # A certificate for another name fails verification, pin or no pin.
        wrong = await Fetcher(
            FetchPolicy(), network_backend=Redirecting(tls.port), resolver=resolver, ssl_context=client_ctx
        ).fetch("https://other.example/article")
        assert (wrong.ok, wrong.error) == (False, "connection failed")
        assert len(tls.requests) == 1


async def test_a_trusted_endpoint_trusts_that_port_only(server, other):
    # "127.0.0.1:P" in FUSION_FETCH_TRUSTED_HOSTS must not open 127.0.0.1's other ports: a
    # redirect from the trusted test server to another local service is refused.
    policy = FetchPolicy(trusted_endpoints={("127.0.0.1", server.port)}, allowed_ports={80, 443, other.port})
    page = await Fetcher(policy).fetch(server.url("/article"))
    assert page.ok, page.error
    hop = await Fetcher(policy).fetch(server.url(f"/redirect?to=http://127.0.0.1:{other.port}/article"))
    assert not hop.ok and hop.error == netguard.BLOCKED_PRIVATE
    assert other.requests == []


class TestExtractionFallbacks:
    ARTICLE = (
        "<html><head><title>T</title></head><body><nav>Home | About | Login</nav><article>"
        + "<p>Water boils at 100 degrees Celsius at sea level, and lower in the mountains. </p>" * 6
        + "</article></body></html>"
    )

    def test_readability_reads_the_page_when_trafilatura_finds_nothing(self, monkeypatch):
        import trafilatura

        from chat.fusion.tools import text

        monkeypatch.setattr(trafilatura, "bare_extraction", lambda *a, **k: None)
        calls = []
        real = text._readability_text
        monkeypatch.setattr(text, "_readability_text", lambda tree, url: calls.append(url) or real(tree, url))
        result = text.extract_html(self.ARTICLE, "http://example.org/a")
        assert calls == ["http://example.org/a"]
        assert "Water boils at 100 degrees Celsius" in result.text

    def test_the_plain_walk_is_the_last_resort(self, monkeypatch):
        import trafilatura

        from chat.fusion.tools import text

        monkeypatch.setattr(trafilatura, "bare_extraction", lambda *a, **k: None)
        monkeypatch.setattr(text, "_readability_text", lambda tree, url: "")
        assert "Water boils" in text.extract_html(self.ARTICLE).text
