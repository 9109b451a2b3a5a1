"""The chatroom end to end: headless Chromium against a live Daphne and the scripted upstream.

Each test signs up a new user through the UI, so tests share nothing but the server. Expected
texts come from the scripted upstream (deterministic answers) and from the app's stored state
(``/c/<id>/state.json``), never from mocks. Screenshots go to ``test-artifacts/browser-*.png``.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.testing.scripted import generate_answer, last_user_text

from .conftest import (
    ANALYST,
    EXFIL_HOST,
    PANEL,
    SLOW_MODEL,
    STYLES,
    WRITER,
    XSS_MODEL,
    App,
    wait_until,
)


pytestmark = pytest.mark.browser

RUN_TIMEOUT = 30_000  # ms; a run takes ~3–6 s

# ----------------------------------------------------------------------------- helpers


def token() -> str:
    return secrets.token_hex(4)


def conversation_id(page: Page) -> int:
    match = re.search(r"/c/(\d+)/", page.url)
    assert match, f"not on a conversation page: {page.url}"
    return int(match.group(1))


def stored_state(page: Page) -> list[dict[str, Any]]:
    """The turns as the server stored them (the page's own history endpoint)."""
    response = page.request.get(f"/c/{conversation_id(page)}/state.json")
    assert response.ok, response.status
    return response.json()["turns"]


def set_panel(page: Page, members: list[str]) -> None:
    """Edit the panel in the composer's panel editor (the <details> above the prompt)."""
    settings = page.locator("[data-panel-settings]")
    if settings.get_attribute("open") is None:
        settings.locator("summary").click()
    page.locator("textarea[name=members]").fill("\n".join(members))
    expect(page.locator("[data-panel-summary]")).to_contain_text(f"{len(members)} models")


def send_from_home(page: Page, prompt: str) -> int:
    """Type the first prompt on the home page and press Enter; returns the new conversation id."""
    box = page.locator("#prompt")
    box.fill(prompt)
    box.press("Enter")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    return conversation_id(page)


def turn(page: Page, index: int):
    return page.locator("[data-turns] > article.turn").nth(index)


def card(page: Page, slot: int, turn_index: int = 0):
    return turn(page, turn_index).locator(f'.card[data-slot="{slot}"]')


def wait_run_done(page: Page, turn_index: int = 0, timeout: int = RUN_TIMEOUT) -> None:
    fused = turn(page, turn_index).locator("section.fused")
    expect(fused.locator(".fused-head .pill")).to_have_text("done", timeout=timeout)
    expect(fused).to_have_attribute("aria-busy", "false")
    expect(page.locator("[data-composer] [data-send]")).to_be_visible()


def norm(text: str) -> str:
    return " ".join(text.split())


def expected_answer(app: App, model: str, marker: str) -> str:
    """What the scripted upstream streamed to *model* for the request whose prompt has *marker*."""
    requests = [r for r in list(app.upstream.requests_for(model)) if marker in last_user_text(r["messages"] or [])]
    assert len(requests) == 1, f"{model}: {len(requests)} requests carry {marker}"
    return generate_answer(model, last_user_text(requests[0]["messages"]), STYLES[model])


def requests_with(app: App, model: str, marker: str) -> list[dict[str, Any]]:
    return [r for r in list(app.upstream.requests_for(model)) if marker in json.dumps(r["messages"])]


def block_texts(locator) -> list[str]:
    """The text of each rendered block (paragraph, list item, heading) of an answer."""
    leaves = "p, li:not(:has(p, ul, ol)), h1, h2, h3, h4, h5, h6, pre"  # a loose list's <li><p> counts once
    return [norm(t) for t in locator.locator(leaves).all_inner_texts()]


def assert_no_duplicate_blocks(locator, what: str) -> None:
    texts = [t for t in block_texts(locator) if len(t) > 20]
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    assert not dupes, f"{what}: duplicated paragraphs {dupes}"


# JS: are at least `cards` member cards streaming, each with at least `chars` characters on screen?
STREAMING_WITH_TEXT = """({cards, chars}) => [...document.querySelectorAll("[data-turns] .card")].filter((c) =>
    c.querySelector(".card-head .pill-streaming") &&
    (c.querySelector(".blocks").textContent + c.querySelector(".tail").textContent).trim().length >= chars
  ).length >= cards"""


def wait_streaming(page: Page, cards: int, chars: int = 1, timeout: int = 10_000) -> None:
    page.wait_for_function(STREAMING_WITH_TEXT, arg={"cards": cards, "chars": chars}, timeout=timeout)


# ----------------------------------------------------------------------------- 1. the whole flow


def test_signup_send_stream_analysis_fused_totals(app: App) -> None:
    page = app.page
    username = app.signup()

    # Landed on the app: the empty home page, signed in as the new user.
    expect(page.locator(".topbar-title")).to_have_text("New conversation")
    expect(page.locator(".account-name")).to_have_text(username)
    expect(page.locator("[data-panel-summary]")).to_contain_text("3 models (atlas, borealis, cirrus)")

    marker = token()
    prompt = f"How should a small team adopt code review? [{marker}]"
    send_from_home(page, prompt)

    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "open")
    expect(turn(page, 0).locator(".prompt-bubble")).to_have_text(prompt)
    cards = turn(page, 0).locator(".card")
    expect(cards).to_have_count(3)
    for slot, model in enumerate(PANEL):
        expect(card(page, slot).locator(".card-model")).to_have_attribute("title", model)
    # Three columns: the cards sit on one row, left to right in slot order.
    expect(turn(page, 0).locator(".panel-row")).to_have_attribute("data-cols", "3")
    # A box is read at one instant; while the first deltas arrive a card can be mid-update
    # (no box for that instant), so read until the three are there.
    boxes: list[Any] = []
    for _ in range(40):
        boxes = [card(page, slot).bounding_box() for slot in range(3)]
        if all(b is not None for b in boxes):
            break
        page.wait_for_timeout(50)
    assert all(b is not None for b in boxes), boxes
    assert max(b["y"] for b in boxes) - min(b["y"] for b in boxes) < 2, boxes
    for left, right in zip(boxes, boxes[1:]):
        assert left["x"] + left["width"] <= right["x"] + 1, boxes

    # Side by side and at the same time: at one instant at least two cards stream text.
    wait_streaming(page, cards=2, chars=120)
    fused = turn(page, 0).locator("section.fused")
    expect(fused.locator(".fused-head .pill")).to_have_text("waiting")
    expect(fused.locator(".fused-body .placeholder")).to_have_text(
        "The fused answer appears here once the panel has answered."
    )
    expect(turn(page, 0).locator('[data-action="stop"]')).to_be_visible()
    expect(page.locator("[data-composer] [data-stop]")).to_be_visible()
    app.screenshot(page, "01-streaming")

    # Then the structured analysis ...
    analysis = turn(page, 0).locator("details.analysis")
    expect(analysis).to_be_visible(timeout=RUN_TIMEOUT)
    titles = analysis.locator(".an-section .an-title")
    expect(titles.first).to_contain_text("Consensus")
    consensus = analysis.locator("ul.an-check > li")
    expect(consensus.first).to_contain_text("All 3 responses address")
    table = analysis.locator("table.an-table")
    expect(table.locator("thead th")).to_have_count(4)  # topic + one column per member
    expect(table.locator("thead .mtag")).to_have_text(["atlas", "borealis", "cirrus"])
    expect(table.locator("tbody tr th").first).to_have_text("What to emphasise first")
    expect(table.locator("tbody td:not(.is-empty)")).to_have_count(3)
    section_names = [norm(t) for t in titles.all_inner_texts()]
    for name in ("Consensus", "Contradictions", "Unique insights", "Blind spots"):
        assert any(t.startswith(name) for t in section_names), section_names

    # ... then the fused answer, and the run's totals.
    wait_run_done(page)
    expect(fused.locator(".fused-body h2")).to_have_text("Answer")
    expect(fused.locator(".fused-body")).to_contain_text("comes down to a few points")
    expect(fused.locator(".fused-writer")).to_have_text("by writer")
    for slot in range(3):
        expect(card(page, slot).locator(".card-head .pill")).to_have_text("done")
        expect(card(page, slot).locator(".card-foot .metrics dt")).to_have_text(["TTFT", "Time", "Tokens", "Cost"])

    totals = fused.locator("dl.totals")
    expect(totals.locator("dt")).to_have_text(["Wall time", "Tokens", "Cost"])
    wall, tokens, cost = (norm(t) for t in totals.locator("dd").all_inner_texts())
    wall_match = re.fullmatch(r"([\d.]+) (s|ms)", wall)
    assert wall_match, wall
    seconds = float(wall_match.group(1)) / (1000 if wall_match.group(2) == "ms" else 1)
    assert 2 <= seconds <= 30, f"wall time {wall}"
    stored = stored_state(page)
    assert len(stored) == 1 and stored[0]["status"] == "complete"
    usage = stored[0]["usage"]
    assert int(tokens.replace(",", "")) == usage["total_tokens"] > 0
    assert re.fullmatch(r"\$\d[\d.e-]*", cost) and usage["cost"] > 0, cost

    # The fused answer on the page is the stored one, and the panel answers are what was streamed.
    assert "comes down to a few points" in stored[0]["final"]["content"]
    for slot, model in enumerate(PANEL):
        assert stored[0]["members"][slot]["content"] == expected_answer(app, model, marker)

    analysis.scroll_into_view_if_needed()
    app.screenshot(page, "02-analysis")
    fused.scroll_into_view_if_needed()
    app.screenshot(page, "03-fused-totals")


# ----------------------------------------------------------------------------- 2. reload mid-run

# Installed before the reload: records every member card's (blocks, tail, status) after each DOM
# change, so the checks below see every intermediate state of the live stream.
CARD_RECORDER = """
(() => {
  window.__cardSamples = [];
  const sample = () => {
    for (const c of document.querySelectorAll("[data-turns] .card")) {
      const pill = c.querySelector(".card-head .pill");
      window.__cardSamples.push({
        slot: Number(c.dataset.slot),
        status: pill ? pill.textContent : "",
        blocks: c.querySelector(".blocks").textContent,
        tail: c.querySelector(".tail").textContent,
      });
    }
  };
  new MutationObserver(sample).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


def test_reload_mid_run_continues_without_gaps_or_duplicates(app: App) -> None:
    page = app.page
    app.signup()
    marker = token()
    prompt = f"What makes a reliable backup strategy? [{marker}]"
    disconnects_before = len(app.upstream.disconnects)
    send_from_home(page, prompt)

    # First deltas on screen, the run still in its panel phase: reload.
    wait_streaming(page, cards=1)
    assert turn(page, 0).locator("section.fused .fused-head .pill").inner_text() == "waiting"
    page.add_init_script(CARD_RECORDER)
    page.reload()

    # The reloaded page reconnects and the run goes on streaming.
    expect(page.locator("[data-conn]")).to_have_attribute("data-state", "open")
    expect(turn(page, 0).locator(".card")).to_have_count(3)
    wait_streaming(page, cards=1)
    app.screenshot(page, "04-after-reload-streaming")
    wait_run_done(page)
    samples = page.evaluate("window.__cardSamples")

    # The server kept every upstream stream open across the reload.
    assert not [m for m in app.upstream.disconnects[disconnects_before:] if m in PANEL]

    # Stored content is exactly what the upstream streamed, once.
    stored = stored_state(page)
    assert len(stored) == 1 and stored[0]["status"] == "complete"
    expected = {slot: expected_answer(app, model, marker) for slot, model in enumerate(PANEL)}
    for slot in range(3):
        assert stored[0]["members"][slot]["content"] == expected[slot]

    # A second, fresh load of the finished conversation renders from history: same text.
    fresh = app.new_page(page.context)
    fresh.goto(page.url)
    expect(fresh.locator("[data-turns] .card")).to_have_count(3)
    for slot in range(3):
        live_body = card(page, slot).locator(".card-body")
        history_body = card(fresh, slot).locator(".card-body")
        expect(card(fresh, slot).locator(".card-head .pill")).to_have_text("done")
        assert norm(live_body.inner_text()) == norm(history_body.inner_text()), f"slot {slot}"
        assert block_texts(live_body) == block_texts(history_body), f"slot {slot}"
        assert_no_duplicate_blocks(live_body, f"slot {slot} after reload")
        assert_no_duplicate_blocks(history_body, f"slot {slot} from history")

    # Every intermediate state after the reload: finished blocks are a prefix of the final text,
    # the unfinished tail is a piece of the answer — so nothing was shown twice or skipped.
    final_blocks = {slot: re.sub(r"\s+", "", card(fresh, slot).locator(".blocks").text_content()) for slot in range(3)}
    streamed_after_reload = set()
    for s in samples:
        slot = s["slot"]
        blocks = re.sub(r"\s+", "", s["blocks"])
        assert final_blocks[slot].startswith(blocks), f"slot {slot}: shown blocks are not a prefix of the answer: {s}"
        assert s["tail"] in expected[slot], f"slot {slot}: tail is not part of the answer: {s['tail']!r}"
        if s["status"] == "streaming" and (blocks or s["tail"]):
            streamed_after_reload.add(slot)
    assert streamed_after_reload, "no member was seen streaming after the reload"


# ----------------------------------------------------------------------------- 3. stop one member


def test_stop_one_member_others_complete_and_fuse(app: App) -> None:
    page = app.page
    app.signup()
    members = ["sim/atlas", SLOW_MODEL, "sim/cirrus"]
    set_panel(page, members)
    expect(page.locator("[data-panel-summary]")).to_contain_text("3 models (atlas, slow, cirrus)")
    marker = token()
    disconnects_before = len(app.upstream.disconnects)
    send_from_home(page, f"Should we rewrite the billing service? [{marker}]")

    slow = card(page, 1)
    expect(slow.locator(".card-model")).to_have_attribute("title", SLOW_MODEL)
    expect(slow.locator(".card-head .pill")).to_have_text("streaming", timeout=10_000)
    page.wait_for_function(
        "() => document.querySelector('[data-turns] .card[data-slot=\"1\"] .card-body').textContent.trim().length > 10"
    )
    slow.get_by_role("button", name=f"Stop {SLOW_MODEL}").click()

    expect(slow.locator(".card-head .pill")).to_have_text("stopped")
    expect(slow.locator(".card-error")).to_contain_text(re.compile(r"Stopped after [\d.]+ (s|ms)\."))
    expect(slow.get_by_role("button", name=f"Retry {SLOW_MODEL}")).to_be_visible()
    # The stop closed the upstream stream of that model, and only of that model.
    wait_until(
        lambda: SLOW_MODEL in app.upstream.disconnects[disconnects_before:], message="the slow model's disconnect"
    )
    others = [m for m in app.upstream.disconnects[disconnects_before:] if m != SLOW_MODEL]
    assert not others, others
    app.screenshot(page, "05-stopped-member")

    wait_run_done(page)
    for slot in (0, 2):
        expect(card(page, slot).locator(".card-head .pill")).to_have_text("done")
    expect(slow.locator(".card-head .pill")).to_have_text("stopped")
    fused = turn(page, 0).locator("section.fused")
    expect(fused.locator(".fused-body h2")).to_have_text("Answer")
    # A stop the user asked for is not a failure (issue 10, item 8).
    expect(fused.locator("dl.totals")).to_contain_text("Stopped1: slow")
    expect(fused.locator("dl.totals .is-bad")).to_have_count(0)

    # Analyst and writer worked from the two finished answers; the slow model was asked once.
    assert len(requests_with(app, SLOW_MODEL, marker)) == 1
    analyst_request = requests_with(app, ANALYST, marker)[-1]
    assert json.dumps(analyst_request["messages"]).count("<response label=") == 2
    stored = stored_state(page)[0]
    assert stored["status"] == "complete"
    assert [m["status"] for m in stored["members"]] == ["complete", "stopped", "complete"]
    partial = stored["members"][1]["content"]
    assert partial and expected_answer(app, SLOW_MODEL, marker).startswith(partial)
    assert len(partial) < len(expected_answer(app, SLOW_MODEL, marker))
    assert stored["failed_models"] == [SLOW_MODEL]
    app.screenshot(page, "06-stopped-member-fused")


# ----------------------------------------------------------------------------- 4. follow-up turn


def test_follow_up_turn_sees_first_prompt_and_fused_answer(app: App) -> None:
    page = app.page
    app.signup()
    marker = token()
    first_prompt = f"Which database fits a small web shop? [{marker}]"
    second_prompt = f"And how would we back it up? [{marker}-2]"
    send_from_home(page, first_prompt)
    wait_run_done(page, 0)
    first_fused = stored_state(page)[0]["final"]["content"]
    assert first_fused.startswith("## Answer")

    box = page.locator("#prompt")
    box.fill(second_prompt)
    box.press("Enter")
    expect(box).to_have_value("")
    expect(page.locator("[data-turns] > article.turn")).to_have_count(2)
    expect(turn(page, 1).locator(".prompt-bubble")).to_have_text(second_prompt)
    wait_run_done(page, 1)

    # Two turns on the page, each with its own panel and fused answer.
    expect(turn(page, 0).locator(".prompt-bubble")).to_have_text(first_prompt)
    for i in range(2):
        expect(turn(page, i).locator(".card .card-head .pill")).to_have_text(["done"] * 3)
        expect(turn(page, i).locator("section.fused .fused-body h2")).to_have_text("Answer")
    stored = stored_state(page)
    assert [t["turn"]["prompt"] for t in stored] == [first_prompt, second_prompt]
    assert [t["status"] for t in stored] == ["complete", "complete"]
    expect(turn(page, 1).locator("section.fused .fused-body")).to_contain_text(second_prompt.rstrip("?!. ")[:40])

    # Default follow-up mode ("fused"): every member's second request carries the first prompt and
    # the first fused answer, then the new prompt — not the member's own first answer.
    for slot, model in enumerate(PANEL):
        calls = requests_with(app, model, marker)
        assert len(calls) == 2, f"{model}: {len(calls)} requests"
        first_messages, second_messages = calls[0]["messages"], calls[1]["messages"]
        assert last_user_text(first_messages) == first_prompt
        assert not [m for m in first_messages if m["role"] == "assistant"]
        history = [m for m in second_messages if m["role"] in ("user", "assistant")]
        assert history[-3:] == [
            {"role": "user", "content": first_prompt},
            {"role": "assistant", "content": first_fused},
            {"role": "user", "content": second_prompt},
        ], f"{model}: {history}"
        own_first = stored[0]["members"][slot]["content"]
        assert own_first and not [m for m in second_messages if m.get("content") == own_first]

    # Both turns in the picture: the end of the first one and the second one's prompt and panel.
    turn(page, 1).locator(".prompt-bubble").evaluate("(el) => el.scrollIntoView({block: 'center'})")
    app.screenshot(page, "07-follow-up")


# ----------------------------------------------------------------------------- 5. XSS


def _assert_no_xss(page: Page, app: App, when: str) -> None:
    assert not page.evaluate("window.__pwned"), f"{when}: window.__pwned was set"
    areas = "[data-turns] :is(.card-body, .fused-body, .analysis, .reasoning)"
    for selector in ("script", "[onerror]", "[onload]", "img", "iframe", "svg", "object", "embed", "[srcdoc]"):
        assert page.locator(f"{areas} {selector}").count() == 0, f"{when}: {selector} inside an answer area"
    assert page.locator('a[href^="javascript:" i]').count() == 0, f"{when}: javascript: link"
    assert page.locator('[href*="script:" i], [src*="script:" i]').count() == 0, f"{when}: script: URL"
    exfil = [u for u in app.watch.requests if EXFIL_HOST in u]
    assert not exfil, f"{when}: requests to {EXFIL_HOST}: {exfil}"
    foreign = [u for u in app.watch.requests if not u.startswith(app.url + "/")]
    assert not foreign, f"{when}: requests outside the app: {foreign}"

    xss = card(page, 0)
    expect(xss.locator(".card-head .pill")).to_have_text("done")
    body = xss.locator(".card-body")
    # The payloads are shown as text, the images as click-to-load links that load nothing.
    expect(body).to_contain_text("<script>window.__pwned=1</script>")
    expect(body).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(body.locator('a.remote-image[href="http://127.0.0.1:1/exfil.png"]')).to_have_count(1)
    for link in body.locator("a").all():
        href = link.get_attribute("href")
        assert href is None or re.match(r"(https?|mailto):", href), f"{when}: link to {href!r}"
        if href:
            assert link.get_attribute("rel") == "noopener noreferrer nofollow"


def test_xss_payloads_stay_text_live_and_from_history(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, [XSS_MODEL, "sim/atlas"])
    marker = token()
    send_from_home(page, f"Summarise this page for me [{marker}]")
    expect(card(page, 0).locator(".card-head .pill")).to_have_text("streaming", timeout=10_000)
    wait_run_done(page)
    assert requests_with(app, XSS_MODEL, marker), "the xss model was not asked"
    # The payloads reached the analyst and the writer too (their output is rendered as well).
    assert "<script>" in json.dumps(requests_with(app, WRITER, marker)[-1]["messages"])
    _assert_no_xss(page, app, "live")
    card(page, 0).scroll_into_view_if_needed()
    app.screenshot(page, "08-xss-live")

    page.reload()
    expect(page.locator("[data-turns] .card")).to_have_count(2)
    wait_run_done(page)
    _assert_no_xss(page, app, "after reload")


# ----------------------------------------------------------------------------- 6. sidebar, mobile


def test_sidebar_lists_conversation_and_reopens_finished_turn(app: App) -> None:
    page = app.page
    app.signup()
    marker = token()
    prompt = f"Tabs or spaces? [{marker}]"
    cid = send_from_home(page, prompt)
    expect(page.locator("[data-conv-title]")).to_have_text(prompt)
    wait_run_done(page)

    # Go elsewhere: a new, empty conversation.
    page.locator(".new-conv button").click()
    page.wait_for_url(lambda url: re.search(r"/c/(\d+)/$", url) is not None and f"/c/{cid}/" not in url)
    expect(page.locator("[data-empty]")).to_be_visible()
    expect(page.locator("[data-turns] > article.turn")).to_have_count(0)

    link = page.locator(".conv-nav .conv-link", has_text=prompt)
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", f"/c/{cid}/")
    link.click()
    page.wait_for_url(f"{app.url}/c/{cid}/")
    expect(page.locator(".conv-link[aria-current=page]")).to_have_text(prompt)
    expect(page.locator("[data-conv-title]")).to_have_text(prompt)

    # The finished turn, from history: prompt, three answers, analysis, fused answer, totals.
    expect(page.locator("[data-turns] > article.turn")).to_have_count(1)
    expect(turn(page, 0).locator(".prompt-bubble")).to_have_text(prompt)
    expect(turn(page, 0).locator(".card .card-head .pill")).to_have_text(["done"] * 3)
    expect(turn(page, 0).locator("details.analysis table.an-table")).to_have_count(1)
    wait_run_done(page)
    expect(turn(page, 0).locator("section.fused .fused-body h2")).to_have_text("Answer")
    expect(turn(page, 0).locator("section.fused dl.totals dt")).to_have_text(["Wall time", "Tokens", "Cost"])
    stored = stored_state(page)[0]
    assert norm(turn(page, 0).locator("section.fused .fused-body").inner_text()).startswith(
        "Answer Taking the answers together"
    )
    assert stored["final"]["content"].startswith("## Answer")

    # Mobile width: the same conversation fits 390 px, and the sidebar opens from the menu button.
    mobile = app.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        storage_state=page.context.storage_state(),
    )
    phone = mobile.new_page()
    phone.goto(f"/c/{cid}/")
    expect(phone.locator("[data-turns] .card .card-head .pill")).to_have_text(["done"] * 3)
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()
    overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the 390px screen"
    app.screenshot(phone, "09-mobile-390")
    phone.locator("[data-sidebar-toggle]").click()
    expect(phone.locator("[data-sidebar-toggle]")).to_have_attribute("aria-expanded", "true")
    phone.wait_for_function(
        """() => document.getElementById("sidebar").getBoundingClientRect().left >= 0 &&
                 document.getAnimations().every((a) => a.playState !== "running")"""
    )
    expect(phone.locator("#sidebar")).to_be_in_viewport(ratio=0.99)
    expect(phone.locator(".conv-nav .conv-link", has_text=prompt)).to_be_visible()
    app.screenshot(phone, "10-mobile-sidebar")
