"""Reading a run live (issue 10, items 9–13): the server going away, the streaming tail, the
"Rewrite with" control, the mobile layout and the analysis' member tags.

The browser fixture's Daphne is shared by every test, so "the server going away" is simulated at
the page's websocket with Playwright's ``page.route_web_socket``: frames are forwarded to the real
server until the test cuts the connection; new connections are then closed at once (the server is
down) or answered by the test itself (the server came back after a restart). Screenshots go to
``test-artifacts/browser-*.png``.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from playwright.sync_api import Page, Route, WebSocketRoute, expect

from .conftest import SLOW_MODEL, App
from .test_chatroom import card, send_from_home, set_panel, turn, wait_run_done, wait_streaming


pytestmark = pytest.mark.browser

WS_PATH = re.compile(r"/ws/conversations/\d+/$")


class FlakyServer:
    """The page's websocket through the test: live (forwarded), down, or answered by the test."""

    def __init__(self, page: Page) -> None:
        self.mode = "live"
        self.routes: list[WebSocketRoute] = []
        page.route_web_socket(WS_PATH, self._connect)

    def _connect(self, ws: WebSocketRoute) -> None:
        if self.mode == "down":
            ws.close(code=4000, reason="server down")
            return
        if self.mode == "restarted":
            # The new process runs nothing: the snapshot is empty, and pings are answered.
            def answer(message: str | bytes) -> None:
                frame = json.loads(message)
                if frame.get("type") == "subscribe":
                    ws.send(json.dumps({"type": "snapshot", "runs": []}))
                elif frame.get("type") == "ping":
                    ws.send(json.dumps({"type": "pong"}))

            ws.on_message(answer)
            self.routes.append(ws)
            return
        ws.connect_to_server()
        self.routes.append(ws)

    def go_down(self) -> None:
        self.mode = "down"
        for ws in self.routes:
            ws.close(code=1012, reason="service restart")
        self.routes.clear()


def interrupted_state(real: dict[str, Any], keep_chars: int) -> dict[str, Any]:
    """``state.json`` as the restarted server has it: the run interrupted, text at its last checkpoint."""
    for t in real["turns"]:
        t["status"] = "interrupted"
        t["phase"] = "done"
        t["error"] = {"kind": "interrupted", "message": "The server restarted during this run."}
        for m in t["members"]:
            if m["status"] in ("waiting", "thinking", "streaming", "searching"):
                m["status"] = "stopped"
                m["error"] = {"kind": "interrupted", "message": "The server restarted while this member was answering."}
                m["content"] = m["content"][:keep_chars]
                m["html"] = f"<p>{html.escape(m['content'])}</p>"
                m["blocks_html"], m["consumed"] = "", 0
    return real


def test_server_going_away_is_visible_and_nothing_shown_is_taken_away(app: App) -> None:
    page = app.page
    app.signup()
    server = FlakyServer(page)
    set_panel(page, [SLOW_MODEL, "sim/cirrus"])
    send_from_home(page, "Explain how tides work, slowly.")
    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "open")
    wait_streaming(page, cards=1, chars=40)

    # Sending while a run is going (and connected): the usual "A run is going" notice.
    box = page.locator("#prompt")
    box.fill("A second question")
    box.press("Enter")
    notices = page.locator("[data-composer] [data-notices]")
    expect(notices).to_contain_text("A run is going")

    server.go_down()
    banner = page.locator("[data-conn-banner]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Lost the connection to the server")

    # Frozen: the elapsed timer stops, nothing pulses, no blinking cursor.
    totals = turn(page, 0).locator(".totals")
    expect(totals).to_contain_text("Elapsed")
    frozen = totals.inner_text()
    page.wait_for_timeout(2200)
    assert totals.inner_text() == frozen, "the elapsed time kept counting while disconnected"
    animations = page.evaluate(
        """() => [...document.querySelectorAll("[data-turns] .pill, [data-turns] .tail *")]
            .flatMap((el) => [getComputedStyle(el, "::before").animationName, getComputedStyle(el, "::after").animationName])
            .filter((n) => n && n !== "none")"""
    )
    assert animations == [], f"still animated while disconnected: {animations}"

    # A send is refused as "not connected", and the prompt stays in the box.
    box.press("Enter")
    expect(notices).to_contain_text("Not connected to the server")
    expect(box).to_have_value("A second question")
    app.screenshot(page, "live-disconnected-banner")

    shown = card(page, 0).locator(".card-body").inner_text()
    assert len(shown) > 15

    # The server comes back after a restart: the run was interrupted, its stored text ends at
    # the last checkpoint, before what the page showed.
    def state_json(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json=interrupted_state(response.json(), keep_chars=10))

    page.route(re.compile(r"/c/\d+/state\.json$"), state_json)
    server.mode = "restarted"
    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "open", timeout=20_000)
    expect(banner).to_be_hidden()

    expect(card(page, 0).locator(".card-head .pill")).to_have_text("interrupted")
    # Stale notices are gone: neither "not connected" nor "A run is going" is true any more.
    expect(notices.locator(".notice")).to_have_count(0)
    # Nothing the reader saw was taken away; what the server lost is marked as such.
    body = card(page, 0).locator(".card-body")
    expect(body.locator(".lost-text")).to_be_visible()
    kept = body.locator(".blocks").inner_text() + body.locator(".lost-body").inner_text()
    assert re.sub(r"\s+", "", kept).startswith(re.sub(r"\s+", "", shown)), (shown, kept)
    app.screenshot(page, "live-reconnected-interrupted")


# JS: what the streaming tails look like, sampled on every change until the run ends.
# Samples every card on each change of the page: its streaming tail (window.__tails) and, when
# it shows finished blocks beside a tail, both texts (window.__bodies).
TAIL_RECORDER = """
(() => {
  window.__tails = [];
  window.__bodies = [];
  const sample = () => {
    for (const t of document.querySelectorAll("[data-turns] .card .tail")) {
      if (!t.textContent.trim()) continue;
      const card = t.closest(".card");
      window.__tails.push({
        text: t.textContent,
        shown: t.innerText,
        tags: [...t.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()),
        headVisible: (() => {
          const head = card.querySelector(".card-head").getBoundingClientRect();
          return head.height > 0 && head.bottom > 0 && head.top < innerHeight;
        })(),
      });
      const blocks = card.querySelector(".blocks");
      if (blocks && blocks.textContent.trim()) {
        window.__bodies.push({ blocks: blocks.innerText, tail: t.textContent });
      }
    }
  };
  new MutationObserver(sample).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


def test_streaming_tail_renders_emphasis_bullets_and_headings_safely(app: App) -> None:
    page = app.page
    app.signup()
    page.add_init_script(TAIL_RECORDER)
    # sim/atlas writes in the "structured" style: a heading, then "- **Point.** …" bullets.
    set_panel(page, ["sim/atlas", "sim/cirrus"])
    send_from_home(page, "How do I plan a garden?")
    wait_run_done(page)
    samples = page.evaluate("window.__tails")
    assert samples, "no streaming tail was seen"

    bold = [s for s in samples if "**" in s["text"] and "strong" in s["tags"]]
    assert bold, "a tail with **bold** was never shown in bold"
    bullets = [s for s in samples if re.search(r"(^|\n)- ", s["text"]) and "li" in s["tags"]]
    assert bullets, "a tail with '- ' bullets was never shown as a list"
    for s in samples:
        # The raw markers are never what the reader sees, and the tail's text is the streamed text.
        assert "**" not in s["shown"], f"raw Markdown on screen: {s['shown'][:120]!r}"
        assert not set(s["tags"]) - {
            "p",
            "ul",
            "ol",
            "li",
            "strong",
            "em",
            "code",
            "pre",
            "span",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
        }
        assert s["headVisible"], "the card's header scrolled out of view while it streamed"


def test_a_finished_block_is_shown_once_while_its_html_catches_up_with_its_text(app: App) -> None:
    # A delta's text is sent at once and the HTML of the blocks it finished follows in a later
    # frame (the render worker): meanwhile the block's text is in the tail, and once its HTML
    # is in, it is no longer in the tail. At no moment is a paragraph shown twice.
    page = app.page
    app.signup()
    page.add_init_script(TAIL_RECORDER)
    set_panel(page, ["sim/atlas", "sim/cirrus"])
    send_from_home(page, "How do I plan a garden?")
    wait_streaming(page, cards=1, chars=150)
    app.screenshot(page, "live-streaming-blocks-and-tail")
    wait_run_done(page)
    samples = page.evaluate("window.__bodies")
    assert samples, "no card showed finished blocks and a tail at the same time"
    for s in samples:
        shown = [line.strip() for line in s["blocks"].splitlines() if len(line.strip()) > 24]
        tail = " ".join(s["tail"].split())
        twice = [line for line in shown if " ".join(line.split()) in tail]
        assert not twice, f"shown as a block and in the tail: {twice[0][:80]!r}"


def test_rewrite_with_an_unknown_model_says_so_next_to_the_field_and_clears_when_fixed(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, ["sim/atlas", "sim/cirrus"])
    send_from_home(page, "Which houseplants survive a dark flat?")
    wait_run_done(page)

    fused = turn(page, 0).locator("section.fused")
    field = fused.locator("[data-regen-input]")
    field.fill("sim/nope")
    fused.get_by_role("button", name="Rewrite").click()
    error = fused.locator(".regen-error")
    # The default provider here is the local scripted server, not OpenRouter: the message says so.
    expect(error).to_contain_text("Unknown model 'sim/nope'")
    expect(error).to_contain_text("the default provider (127.0.0.1:")
    assert "OpenRouter" not in error.inner_text()
    expect(page.locator("[data-composer] [data-notices] .notice")).to_have_count(0)
    expect(field).to_have_attribute("aria-invalid", "true")
    app.screenshot(page, "live-rewrite-error")

    # The field is the model picker; fixing the id takes the error away, and the rewrite runs.
    field.fill("")
    field.press_sequentially("sim/wri", delay=20)
    expect(error).to_have_count(0)
    option = page.locator(".mp-list [role=option]", has_text="sim/writer").first
    expect(option).to_be_visible()
    option.click()
    expect(field).to_have_value("sim/writer")
    fused.get_by_role("button", name="Rewrite").click()
    wait_run_done(page)
    expect(fused.locator(".regen-error")).to_have_count(0)


def test_mobile_finished_run_shows_the_fused_answer_without_overlap_and_with_big_tap_targets(app: App) -> None:
    page = app.new_page(app.new_context(viewport={"width": 390, "height": 844}, has_touch=True))
    app.signup(page)
    set_panel(page, ["sim/atlas", "sim/borealis", "sim/cirrus"])
    send_from_home(page, "Should a small team adopt microservices?")
    wait_run_done(page)
    page.wait_for_timeout(300)

    fused = turn(page, 0).locator("section.fused")
    box = fused.bounding_box()
    assert box and 0 <= box["y"] < 844 / 2, f"the fused answer is not in view when the run ends: {box}"

    # The estimate and the preset chooser do not overlap.
    estimate = page.locator("[data-composer] [data-estimate]").bounding_box()
    chooser = page.locator("[data-composer] .preset-chooser").bounding_box()
    assert estimate and chooser
    overlap_x = min(estimate["x"] + estimate["width"], chooser["x"] + chooser["width"]) - max(
        estimate["x"], chooser["x"]
    )
    overlap_y = min(estimate["y"] + estimate["height"], chooser["y"] + chooser["height"]) - max(
        estimate["y"], chooser["y"]
    )
    assert overlap_x <= 0 or overlap_y <= 0, (estimate, chooser)

    # Nothing widens the page; the contradictions table scrolls inside its own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    table = turn(page, 0).locator(".an-table")
    if table.count():
        right = page.evaluate("(t) => t.getBoundingClientRect().right", table.element_handle())
        assert right <= 390

    # Tap targets of at least 40 px.
    small = page.evaluate(
        """() => [...document.querySelectorAll("[data-turns] button, [data-turns] summary, [data-turns] .mtag, [data-composer] button, [data-composer] select")]
            .filter((el) => el.offsetParent !== null)
            .map((el) => [el.textContent.trim().slice(0, 30) || el.getAttribute("aria-label"), el.getBoundingClientRect().height])
            .filter(([, h]) => h < 40)"""
    )
    assert small == [], f"tap targets under 40 px: {small}"
    app.screenshot(page, "live-mobile-finished-run")
    app.screenshot(page, "live-mobile-finished-run-full", full_page=False)


def test_a_member_tag_in_the_analysis_expands_that_members_card(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, ["sim/atlas", "sim/borealis", "sim/cirrus"])
    send_from_home(page, "How should I learn to cook?")
    wait_run_done(page)
    expect(turn(page, 0).locator("section.panel")).to_have_class(re.compile(r"is-compact"))
    tag = turn(page, 0).locator(".analysis .mtag[data-slot]").first
    slot = tag.get_attribute("data-slot")
    body = turn(page, 0).locator(f'.card[data-slot="{slot}"] .card-body')
    assert page.evaluate("(b) => b.scrollHeight > b.clientHeight + 4", body.element_handle()), "the card was not folded"
    tag.click()
    expect(turn(page, 0).locator(f'.card[data-slot="{slot}"]')).to_have_class(re.compile(r"is-expanded"))
    assert page.evaluate("(b) => b.scrollHeight <= b.clientHeight + 4", body.element_handle()), (
        "the card is still folded"
    )
