"""Limits and sessions as a user meets them in the browser.

* A huge answer (126 KB of code) and a reload mid-run: the server sends nothing bigger than its
  frame limit (the snapshot arrives as ``chunk`` frames the page joins), the answer shows whole,
  and the page does not fall into a reconnect loop.
* Signing out in another tab: the conversation page's socket is closed within seconds and the
  page says the session ended instead of reconnecting.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import BIG_CODE_MODEL, SLOW_MODEL, App
from .test_chatroom import card, send_from_home, set_panel, token, turn


pytestmark = pytest.mark.browser

FRAME_LIMIT = 256 * 1024  # FUSION_MAX_WS_FRAME_BYTES' default, which the test server uses


class SocketLog:
    """Every websocket a page opens and the size and kind of every frame it receives."""

    def __init__(self, page: Any) -> None:
        self.sockets: list[Any] = []
        self.sizes: list[int] = []
        self.chunks = 0
        self.closes: list[float] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: Any) -> None:
        self.sockets.append(ws)
        ws.on("framereceived", self._frame)
        ws.on("close", lambda _ws: self.closes.append(time.monotonic()))

    def _frame(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        self.sizes.append(len(text.encode()))
        self.chunks += text.startswith('{"type":"chunk"')


def test_a_huge_answer_and_a_reload_mid_run_stay_under_the_frame_limit_without_a_reconnect_loop(app: App) -> None:
    page = app.page
    log = SocketLog(page)
    app.signup()
    set_panel(page, [BIG_CODE_MODEL, SLOW_MODEL])
    send_from_home(page, f"Show me the whole module [{token()}]")
    big = card(page, 0)
    expect(big.locator(".card-head .pill")).to_have_text("done", timeout=20_000)
    expect(big.locator("pre")).to_contain_text("function_1699")
    # The slow member is still answering: the reconnect snapshot holds the whole big answer.
    page.reload()
    expect(card(page, 1).locator(".card-head .pill")).to_have_text("streaming", timeout=10_000)
    expect(card(page, 0).locator("pre")).to_contain_text("function_1699")
    page.wait_for_timeout(1500)
    assert log.chunks >= 2, "the snapshot should have come in pieces"
    assert max(log.sizes) <= FRAME_LIMIT, f"a frame of {max(log.sizes)} bytes"
    assert len(log.sockets) == 2, f"{len(log.sockets)} sockets for two page loads"
    card(page, 0).scroll_into_view_if_needed()
    app.screenshot(page, "security-01-huge-answer-after-reload")
    page.keyboard.press("Escape")  # stop the slow member
    expect(turn(page, 0).locator("section.fused")).to_have_attribute("aria-busy", "false", timeout=20_000)
    app.assert_clean()


def test_signing_out_in_another_tab_ends_the_conversation_socket(app: App) -> None:
    page = app.page
    log = SocketLog(page)
    app.signup()
    send_from_home(page, f"Is the sky blue? [{token()}]")
    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "open", timeout=10_000)
    other = app.new_page(page.context)
    other.goto("/")
    other.get_by_role("button", name="Sign out").click()
    other.wait_for_url("**/accounts/login/")
    signed_out = time.monotonic()
    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "failed", timeout=6_000)
    assert log.closes and log.closes[-1] - signed_out < 5
    expect(page.locator("[data-notices]")).to_contain_text("Your session ended")
    page.wait_for_timeout(2000)
    assert len(log.sockets) == 1, "the page reconnected after its session ended"
    app.screenshot(page, "security-02-session-ended")
    app.assert_clean()
