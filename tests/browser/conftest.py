"""Browser-test fixtures: a live Daphne server against the scripted upstream, and headless Chromium.

Session scope (started once, torn down at the end):

* ``upstream`` — :class:`chat.testing.scripted.ScriptedUpstream` in a thread, with ``SCRIPTS`` below
  (a three-model panel paced so a run takes ~3–6 s, a slow model to stop, an analyst, a writer
  and ``sim/xss`` whose answer is full of XSS payloads split across small chunks);
* ``research_web`` — local web servers for web research (see ``ResearchWeb``): pages, a fake SearXNG
  and a loopback target; the upstream's research models and the server's search and fetch
  settings point at them;
* ``fusion_server`` — a temporary file-based SQLite database (migrated with ``manage.py migrate``)
  and ``python -m daphne`` as a subprocess on a free port, pointed at the upstream; its log goes
  to ``test-artifacts/browser-daphne.log``;
* ``browser`` (package scope, see the fixture for why) — Debian's Chromium (``/usr/bin/chromium``)
  through Playwright's sync API. When it is missing the browser tests are skipped locally, but fail
  when ``CI=true``.

Per test, ``app`` hands out fresh browser contexts and pages. Every page is watched: uncaught page
errors, console errors and Content-Security-Policy violations fail the test (see
``BrowserWatch.assert_clean``); so do elements that look like injected markup appearing inside the
turns at any moment (a MutationObserver installed before any page script runs), and a traceback in
the server's log while the test ran.

The server is a separate process with its own database: these tests never use pytest-django's
``db`` fixture; they look at stored state through the app's own ``/c/<id>/state.json``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from chat.testing.scripted import ScriptedUpstream
from tests.daphne import free_port, start_daphne, stop_process, wait_until_healthy
from tests.webserver import LocalWebServer, _Handler, _Server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# Debian's Chromium (Playwright cannot download its own browsers here); FUSION_CHROMIUM overrides it.
CHROMIUM = os.environ.get("FUSION_CHROMIUM", "").strip() or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").strip().lower() == "true"

# Without Playwright the browser modules are not collected here (requirements-dev.txt installs
# it); under CI that is a failure, not a skip.
try:
    import playwright.sync_api  # noqa: F401
except ImportError:  # pragma: no cover
    if IN_CI:
        raise
    collect_ignore_glob = ["test_*.py"]

# --------------------------------------------------------------------------- the scripted models

PANEL = ["sim/atlas", "sim/borealis", "sim/cirrus"]
STYLES = {"sim/atlas": "structured", "sim/borealis": "narrative", "sim/cirrus": "concise", "sim/slow": "narrative"}
SLOW_MODEL = "sim/slow"
XSS_MODEL = "sim/xss"
ANALYST = "sim/analyst"
WRITER = "sim/writer"
EXFIL_HOST = "127.0.0.1:1"
BIG_CODE_MODEL = "sim/bigcode"
BIG_CODE = (
    "Here is the whole module.\n\n```python\n"
    + "".join(
        f"def function_{i}(alpha, beta):\n    return {{'value': alpha * {i} + beta, \"name\": 'f{i}'}}\n"
        for i in range(1700)
    )
    + "```\n\nThat is all of it.\n"
)

# Every payload appears inline (inside a paragraph) and as a block of its own; chunk_chars=3 splits
# each of them over many SSE chunks, so the unfinished tail holds half-written tags while streaming.
XSS_CONTENT = (
    "Here is a script tag <script>window.__pwned=1</script> in the middle of a sentence.\n\n"
    'An image with an error handler <img src=x onerror="window.__pwned=1"> sits in this sentence.\n\n'
    "A link nobody should follow: [click](javascript:window.__pwned=1) right in the answer.\n\n"
    "A tracking pixel ![x](http://127.0.0.1:1/exfil.png) hides in this paragraph as well.\n\n"
    "<script>window.__pwned=1</script>\n\n"
    '<img src=x onerror="window.__pwned=1">\n\n'
    '<svg onload="window.__pwned=1"><circle r="5"/></svg>\n\n'
    '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>\n\n'
    "[mixed case](JaVaScRiPt:window.__pwned=1) and [encoded](jav&#x09;ascript:window.__pwned=1) links.\n\n"
    "![second](http://127.0.0.1:1/exfil2.png)\n\n"
    "That is the whole answer, with `<script>` shown as code."
)

WRITER2_ANSWER = "## Second take\n\nThe second writer fuses the same answers in its own words: keep it simple.\n"
SCRIPTS: dict[str, dict[str, Any]] = {
    # ~750 characters each at 45–70 tokens/s: the panel streams for ~3 s, side by side.
    "sim/atlas": {"ttft_ms": 250, "tokens_per_s": 70, "chunk_chars": 12, "style": "structured"},
    "sim/borealis": {"ttft_ms": 350, "tokens_per_s": 60, "chunk_chars": 12, "style": "narrative"},
    "sim/cirrus": {"ttft_ms": 450, "tokens_per_s": 40, "chunk_chars": 10, "style": "concise"},
    # ~20 s for its answer: always still streaming when a test stops it.
    SLOW_MODEL: {"ttft_ms": 200, "tokens_per_s": 8, "chunk_chars": 6, "style": "narrative"},
    ANALYST: {"ttft_ms": 200, "tokens_per_s": 800, "chunk_chars": 64},
    WRITER: {"ttft_ms": 200, "tokens_per_s": 150, "chunk_chars": 16},
    # A second writer with its own answer, so two versions of a turn read differently.
    "sim/writer2": {"ttft_ms": 150, "tokens_per_s": 300, "chunk_chars": 16, "content": WRITER2_ANSWER},
    XSS_MODEL: {"ttft_ms": 150, "tokens_per_s": 60, "chunk_chars": 3, "content": XSS_CONTENT},
    # A 126 KB code block: over a megabyte of highlighted HTML, far past the server's frame limit.
    BIG_CODE_MODEL: {"ttft_ms": 100, "chunk_chars": 8000, "content": BIG_CODE},
}

# --------------------------------------------------------------------------- in-page instrumentation

# Runs before any page script on every document of every context (Playwright init script).
# Reports, through exposed bindings, CSP violations and any dangerous element or attribute that
# appears inside the turns at any moment (live streaming included, not only the final DOM).
INIT_SCRIPT = r"""
(() => {
  const report = (kind, detail) => {
    try { window.__qaReport && window.__qaReport(kind, String(detail)); } catch (e) {}
  };
  document.addEventListener("securitypolicyviolation", (e) => {
    report("csp", `${e.violatedDirective} blocked ${e.blockedURI || "(inline)"} at ${e.sourceFile || ""}:${e.lineNumber || 0}`);
  });
  const BAD_TAGS = new Set(["SCRIPT", "IMG", "IFRAME", "FRAME", "OBJECT", "EMBED", "SVG", "MATH", "FORM", "STYLE", "LINK", "META", "BASE"]);
  const checkNode = (node) => {
    if (!node || node.nodeType !== 1 || !node.closest("[data-turns]")) return;
    const tag = node.tagName.toUpperCase();
    // The app's own icons: aria-hidden SVG built with createElementNS, never inside answer text.
    const appIcon = tag === "SVG" && node.getAttribute("aria-hidden") === "true" && !node.closest(".prose");
    if (BAD_TAGS.has(tag) && !appIcon) report("markup", node.outerHTML.slice(0, 200));
    for (const attr of node.attributes || []) {
      const name = attr.name.toLowerCase();
      const value = attr.value.replace(/[\s\u0000-\u001f]+/g, "").toLowerCase();
      const badUrl = ["href", "src", "action", "formaction", "xlink:href"].includes(name) &&
        (value.startsWith("javascript:") || value.startsWith("vbscript:") || value.startsWith("data:text"));
      if (name.startsWith("on") || name === "srcdoc" || badUrl) {
        report("markup", `${name}="${attr.value.slice(0, 80)}" on <${node.tagName.toLowerCase()}>`);
      }
    }
  };
  const checkTree = (node) => {
    if (!node || node.nodeType !== 1) return;
    checkNode(node);
    for (const child of node.querySelectorAll("*")) checkNode(child);
  };
  const observer = new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") checkNode(r.target);
      for (const n of r.addedNodes || []) checkTree(n);
    }
  });
  observer.observe(document, { subtree: true, childList: true, attributes: true });
})();
"""

# Console errors Chromium may log that say nothing about the app (none are expected today).
BENIGN_CONSOLE = [
    # A reload or navigation closing a websocket that was still connecting.
    re.compile(r"WebSocket is closed before the connection is established"),
]


@dataclass
class BrowserWatch:
    """Everything noteworthy the pages of one test did."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    injected_markup: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.csp_violations.append(f"console: {text}")
        elif not any(p.search(text) for p in BENIGN_CONSOLE):
            location = msg.location or {}
            self.console_errors.append(f"{text} ({location.get('url', '')}:{location.get('lineNumber', '')})")

    def on_binding(self, source: Any, kind: str, detail: str) -> None:
        if kind == "csp":
            self.csp_violations.append(f"event: {detail}")
        else:
            self.injected_markup.append(detail)

    def attach(self, page: Any) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(f"{exc.name}: {exc.message}\n{exc.stack or ''}"))

    def problems(self) -> list[str]:
        out = []
        for title, items in (
            ("uncaught page errors", self.page_errors),
            ("console errors", self.console_errors),
            ("CSP violations", self.csp_violations),
            ("injected markup inside the turns", self.injected_markup),
        ):
            if items:
                out.append(f"{title}:\n  " + "\n  ".join(items))
        return out

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "The browser reported problems:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- session: upstream, server, browser


@pytest.fixture(scope="session", autouse=True)
def _chromium_available() -> str:
    """Skip the browser tests without Chromium or Playwright — except under CI, where that fails."""
    problem = None
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problem = f"{CHROMIUM} is missing (apt-get install chromium, or `make browser`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if problem:
        if IN_CI:
            pytest.fail(f"Browser tests cannot run under CI: {problem}.", pytrace=False)
        pytest.skip(f"Browser tests skipped: {problem}.")
    return CHROMIUM


@pytest.fixture(scope="session")
def upstream(research_web: ResearchWeb) -> Iterator[ScriptedUpstream]:
    # The research models' scripts name URLs of the local web servers, known only once they run.
    up = ScriptedUpstream({**SCRIPTS, **research_scripts(research_web)}, time_scale=1.0).start_in_thread()
    try:
        yield up
    finally:
        up.stop()


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    upstream: ScriptedUpstream

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="session")
def fusion_server(
    upstream: ScriptedUpstream, research_web: ResearchWeb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    ARTIFACTS.mkdir(exist_ok=True)
    db_path = tmp_path_factory.mktemp("browser-db") / "fusion.sqlite3"
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
        "DATABASE_URL": f"sqlite:///{db_path}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": "",
        "OPENROUTER_BASE_URL": upstream.base_url,
        "OPENROUTER_API_KEY": "test",
        # Test users have no provider key of their own (Settings → Keys): let them use the server's.
        "FUSION_ALLOW_SERVER_KEY": "true",
        "FUSION_PROVIDERS": "",
        "FUSION_DEFAULT_PANEL": ",".join(PANEL),
        "FUSION_DEFAULT_ANALYST": ANALYST,
        "FUSION_DEFAULT_WRITER": WRITER,
        "FUSION_DEMO": "false",
        # Web research (issue 5): a fake SearXNG, and web_fetch may reach the page server only —
        # not the loopback server behind its redirect, nor the metadata address.
        "FUSION_SEARCH_BACKEND": "searxng",
        "FUSION_SEARCH_URL": research_web.search.base_url,
        "FUSION_FETCH_TRUSTED_HOSTS": research_web.trusted_host,
        # A test server with DJANGO_DEBUG=false: say the trusted host is meant (settings refuse it otherwise).
        "FUSION_FETCH_TRUSTED_HOSTS_I_KNOW": "true",
        # Tests sign up through the form; with the server's key allowed the default would be invite.
        "FUSION_SIGNUP": "open",
        # Every test signs in from 127.0.0.1: the per-address sign-in bucket must not get in the way.
        "FUSION_LOGIN_RATE_PER_MIN": "6000",
        "FUSION_LOGIN_BURST": "1000",
        "REDIS_URL": "",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if migrate.returncode != 0:
        pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)

    log_path = ARTIFACTS / "browser-daphne.log"
    log = log_path.open("wb")
    process = start_daphne(port, env, log)
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, upstream=upstream)
    try:
        wait_until_healthy(server.url, process, name="Daphne", log_tail=server.log_tail)
        yield server
    finally:
        stop_process(process)
        log.close()


# Package scope, not session: Playwright's sync API leaves its event loop marked as running in the
# main thread until it stops, and pytest-asyncio's tests elsewhere in the suite (collected after
# these) cannot start a loop while it does. So Chromium closes once the browser tests are done.
@pytest.fixture(scope="package")
def browser(_chromium_available: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=_chromium_available, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


# --------------------------------------------------------------------------- per test: contexts and pages


class App:
    """One test's handle on the browser: fresh contexts, watched pages, screenshots, sign-up."""

    def __init__(self, browser: Any, server: LiveServer, test_name: str) -> None:
        self.browser = browser
        self.server = server
        self.upstream = server.upstream
        self.url = server.url
        self.watch = BrowserWatch()
        self.contexts: list[Any] = []
        self.test_name = test_name
        self._page: Any = None
        self._log_offset = server.log_path.stat().st_size if server.log_path.exists() else 0

    def new_context(self, **options: Any) -> Any:
        options.setdefault("viewport", {"width": 1440, "height": 900})
        context = self.browser.new_context(base_url=self.url, **options)
        context.set_default_timeout(15_000)
        context.set_default_navigation_timeout(15_000)
        context.expose_binding("__qaReport", self.watch.on_binding)
        context.add_init_script(INIT_SCRIPT)
        context.on("page", self.watch.attach)
        context.on("request", lambda request: self.watch.requests.append(request.url))
        self.contexts.append(context)
        return context

    def new_page(self, context: Any = None) -> Any:
        return (context or self.new_context()).new_page()

    @property
    def page(self) -> Any:
        """The test's first page, in its own fresh context."""
        if self._page is None:
            self._page = self.new_page()
        return self._page

    def screenshot(self, page: Any, name: str, **options: Any) -> Path:
        path = ARTIFACTS / f"browser-{name}.png"
        page.screenshot(path=str(path), **options)
        return path

    def signup(self, page: Any = None) -> str:
        """Create a new account through the sign-up form; returns the username (signed in)."""
        page = page or self.page
        username = f"qa_{secrets.token_hex(5)}"
        password = f"Fusion-{secrets.token_urlsafe(12)}-9"
        page.goto("/accounts/signup/")
        page.locator("#id_username").fill(username)
        page.locator("#id_password1").fill(password)
        page.locator("#id_password2").fill(password)
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(f"{self.url}/")
        return username

    def server_tracebacks(self) -> str:
        """Tracebacks the server logged since this test started (its log is shared by all tests)."""
        with self.server.log_path.open("rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        return text if "Traceback (most recent call last)" in text else ""

    def assert_clean(self) -> None:
        self.watch.assert_clean()
        tracebacks = self.server_tracebacks()
        assert not tracebacks, f"The server logged a traceback during the test:\n{tracebacks[-4000:]}"

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Exception:  # the browser may already be gone after a crash
                pass


@pytest.fixture
def app(browser: Any, fusion_server: LiveServer, request: pytest.FixtureRequest) -> Iterator[App]:
    if fusion_server.process.poll() is not None:
        pytest.fail(f"Daphne is not running (exit {fusion_server.process.returncode}):\n{fusion_server.log_tail()}")
    handle = App(browser, fusion_server, request.node.name)
    request.node._browser_app = handle
    yield handle
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for i, context in enumerate(handle.contexts):
            for j, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(ARTIFACTS / f"browser-FAILED-{request.node.name}-{i}{j}.png"))
                except Exception:
                    pass
        report.sections.append(("daphne log (tail)", fusion_server.log_tail()))
    handle.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After a browser test's body passed: fail it on page errors, CSP violations, server tracebacks."""
    result = yield
    handle = getattr(item, "_browser_app", None)
    if handle is not None:
        handle.assert_clean()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def wait_until(predicate: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition") -> Any:
    """Poll a Python-side condition (upstream bookkeeping, which the page cannot see)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- web research (issue 5)

# The research panel: a member that searches, reads two pages and cites them; one that tries the
# cloud metadata address and a redirect into loopback; a writer that cites the pages it was given.
RESEARCHER = "sim/researcher"
PROBER = "sim/prober"
SCRIBE = "sim/scribe"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"

PAGES = {
    "/guides/sunlight": (
        "How much sun balcony tomatoes need",
        "Tomatoes in containers need at least six hours of direct sunlight a day. A south-facing "
        "balcony is ideal; on a shaded one, choose cherry varieties, which ripen with less light.",
    ),
    "/guides/watering": (
        "Watering container tomatoes",
        "Water container tomatoes deeply in the morning so the roots follow the water down. Leaves "
        "that stay dry overnight keep blight away; in a heat wave, water a second time at noon.",
    ),
}


class BoundWebServer(LocalWebServer):
    """A LocalWebServer on a chosen address and port (LocalWebServer binds 127.0.0.1:<free port>)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.bind_host, self.bind_port = host, port

    def start(self) -> BoundWebServer:
        self._httpd = _Server((self.bind_host, self.bind_port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.bind_host}:{self.port}"


@dataclass
class ResearchWeb:
    """The local web of the research tests (session scope, shared by the server and the tests).

    * ``pages`` — 127.0.0.1:P, the only host:port web_fetch trusts (``trusted_host``): the two
      guides, and LocalWebServer's ``/redirect?to=``;
    * ``search`` — a fake SearXNG (``GET /search?q=…&format=json``) whose results are the guides;
    * ``loopback`` — another loopback address on the *same* port, 127.0.0.2:P, as the redirect
      target. Trust is per host, and a port listed in FUSION_FETCH_TRUSTED_HOSTS is allowed for every
      host, so on P only the address check stands between a redirect and this server (on any
      other port the fetch would be refused as "blocked: port" before the address check is reached).
      Its request log must stay empty.
    """

    pages: LocalWebServer
    search: LocalWebServer
    loopback: LocalWebServer

    @property
    def trusted_host(self) -> str:
        return f"127.0.0.1:{self.pages.port}"

    def page_url(self, path: str) -> str:
        return self.pages.url(path)

    @property
    def loopback_target(self) -> str:
        return self.loopback.url("/internal/admin")

    @property
    def redirect_url(self) -> str:
        return self.pages.url("/redirect?to=" + quote(self.loopback_target, safe=""))

    def stop(self) -> None:
        for server in (self.pages, self.search, self.loopback):
            server.stop()


def _page_html(title: str, text: str) -> bytes:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body><article><h1>{title}</h1><p>{text}</p></article></body></html>"
    ).encode()


@pytest.fixture(scope="session")
def research_web() -> Iterator[ResearchWeb]:
    pages = loopback = None
    for _ in range(20):  # the page server's port must also be free on 127.0.0.2
        pages = LocalWebServer().start()
        try:
            loopback = BoundWebServer("127.0.0.2", pages.port).start()
            break
        except OSError:
            pages.stop()
    if loopback is None or pages is None:
        pytest.fail("Could not find a port free on both 127.0.0.1 and 127.0.0.2.", pytrace=False)
    for path, (title, text) in PAGES.items():
        pages.add_body(path, _page_html(title, text), "text/html; charset=utf-8")
    loopback.add_body("/internal/admin", _page_html("Internal admin", "SECRET-LOOPBACK-CONTENT"), "text/html")
    search = LocalWebServer().start()
    results = [{"url": pages.url(path), "title": title, "content": text[:80]} for path, (title, text) in PAGES.items()]
    search.add_json("/search", {"query": "", "results": results})
    web = ResearchWeb(pages=pages, search=search, loopback=loopback)
    try:
        yield web
    finally:
        web.stop()


def research_scripts(web: ResearchWeb) -> dict[str, dict[str, Any]]:
    """Scripts of the research models (chat/testing/scripted.py, "Tool use"), with the servers' URLs."""
    sun, water = (web.page_url(path) for path in PAGES)
    return {
        RESEARCHER: {
            "ttft_ms": 150,
            "tokens_per_s": 300,
            "chunk_chars": 24,
            "steps": [
                {"tool_calls": [{"name": "web_search", "arguments": {"query": "balcony tomatoes sun and water"}}]},
                {
                    "tool_calls": [
                        {"name": "web_fetch", "arguments": {"url": "{url0}"}},
                        {"name": "web_fetch", "arguments": {"url": "{url1}"}},
                    ]
                },
                {
                    "content": "Balcony tomatoes need **six hours** of direct sun ([sunlight guide]({url0})) and a "
                    "deep watering every morning ([watering guide]({url1})).",
                    "cite": True,
                },
            ],
        },
        PROBER: {
            "ttft_ms": 150,
            "tokens_per_s": 300,
            "chunk_chars": 24,
            "steps": [
                {
                    "tool_calls": [
                        {"name": "web_fetch", "arguments": {"url": METADATA_URL}},
                        {"name": "web_fetch", "arguments": {"url": web.redirect_url}},
                    ]
                },
                {
                    "content": "Both pages I tried to read were refused, so this answer is from memory: "
                    "give tomatoes plenty of sun and water them evenly."
                },
            ],
        },
        SCRIBE: {
            "ttft_ms": 150,
            "tokens_per_s": 300,
            "chunk_chars": 24,
            "content": f"## Answer\n\nGive balcony tomatoes at least six hours of direct sun "
            f"([How much sun balcony tomatoes need]({sun})) and water them deeply in the morning "
            f"([Watering container tomatoes]({water})).",
        },
    }
