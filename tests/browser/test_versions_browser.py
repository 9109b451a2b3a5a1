"""Versions of a turn, recovery after Stop all, stops that are not failures, and "/" as a fresh
composer (issue 10, items 5–8), in Chromium against the scripted upstream."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from .conftest import SLOW_MODEL, WRITER, App
from .test_chatroom import (
    RUN_TIMEOUT,
    card,
    conversation_id,
    requests_with,
    send_from_home,
    set_panel,
    stored_state,
    token,
    turn,
    wait_run_done,
)


pytestmark = pytest.mark.browser


def test_stop_all_then_retry_one_member_reruns_only_it_and_re_fusing_is_a_choice(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, [SLOW_MODEL, "sim/atlas", "sim/cirrus"])
    marker = token()
    send_from_home(page, f"Is a four-day week worth trying? [{marker}]")
    page.wait_for_function(
        "() => document.querySelector('[data-turns] .card[data-slot=\"0\"] .card-body').textContent.trim().length > 5"
    )
    turn(page, 0).get_by_role("button", name="Stop all").click()

    fused = turn(page, 0).locator("section.fused")
    expect(fused.locator(".fused-head .pill")).to_have_text("stopped")
    # Stopped is not failed: neutral, no "Failed" in red.
    totals = fused.locator("dl.totals")
    expect(totals).to_contain_text("Stopped")
    expect(totals.locator(".is-bad")).to_have_count(0)
    expect(totals).not_to_contain_text("Failed")
    recover = fused.locator(".recover")
    expect(recover.get_by_role("button", name="Retry all stopped")).to_be_visible()
    expect(recover.get_by_role("button", name="Resend prompt")).to_be_visible()
    expect(recover).not_to_contain_text("null")
    stored = stored_state(page)[0]
    stopped = [m["slot"] for m in stored["members"] if m["status"] != "complete"]
    assert 2 in stopped, stored["members"]  # cirrus is the slowest of the quick ones

    # Retry on cirrus re-runs cirrus only: not the slow model, not atlas, no analyst, no writer.
    asked = {m: len(requests_with(app, m, marker)) for m in (SLOW_MODEL, "sim/atlas", "sim/analyst", WRITER)}
    card(page, 2).get_by_role("button", name="Retry sim/cirrus").click()
    expect(card(page, 2).locator(".card-head .pill")).to_have_text("done", timeout=RUN_TIMEOUT)
    refuse = fused.get_by_role("button", name="Re-fuse with this answer")
    expect(refuse).to_be_visible(timeout=RUN_TIMEOUT)
    assert {m: len(requests_with(app, m, marker)) for m in asked} == asked
    assert len(requests_with(app, "sim/cirrus", marker)) == 2
    expect(fused.locator(".versions .version-count")).to_have_text("2/2")

    # Re-fusing is what the user chose: analyst and writer now run on the answers there are.
    expect(fused.locator(".fused-head .pill")).to_have_text("not fused")
    refuse.click()
    expect(fused.locator(".versions .version-count")).to_have_text("3/3", timeout=RUN_TIMEOUT)
    wait_run_done(page)
    assert len(requests_with(app, WRITER, marker)) == 1
    assert len(requests_with(app, SLOW_MODEL, marker)) == 1
    expect(fused.locator(".versions .version-count")).to_have_text("3/3")
    expect(turn(page, 0).locator("details.analysis .versions .version-count")).to_have_text("3/3")
    fused.scroll_into_view_if_needed()
    app.screenshot(page, "versions-switcher")

    # Every version stays reachable: back to the stopped original, and forward again.
    fused.get_by_role("button", name="Previous version of the fused answer").click()
    expect(fused.locator(".versions .version-count")).to_have_text("2/3")
    expect(fused.get_by_role("button", name="Re-fuse with this answer")).to_be_visible()
    fused.get_by_role("button", name="Previous version of the fused answer").click()
    expect(fused.locator(".versions .version-count")).to_have_text("1/3")
    expect(fused.locator(".fused-head .pill")).to_have_text("stopped")
    expect(fused.locator(".version-what")).to_have_text("original")
    app.screenshot(page, "versions-switcher-original")
    fused.get_by_role("button", name="Next version of the fused answer").click()
    fused.get_by_role("button", name="Next version of the fused answer").click()
    expect(fused.locator(".fused-head .pill")).to_have_text("done")

    # After a reload the versions are still there, the newest shown.
    page.reload()
    fused = turn(page, 0).locator("section.fused")
    expect(fused.locator(".versions .version-count")).to_have_text("3/3")


def test_a_follow_up_builds_on_the_version_on_screen(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, ["sim/atlas", "sim/cirrus"])
    send_from_home(page, f"How do I keep basil alive? [{token()}]")
    wait_run_done(page)
    fused = turn(page, 0).locator("section.fused")
    fused.locator("[data-regen-input]").fill("sim/writer2")
    fused.get_by_role("button", name="Rewrite").click()
    expect(fused.locator(".versions .version-count")).to_have_text("2/2", timeout=RUN_TIMEOUT)
    wait_run_done(page)
    versions = stored_state(page)[0]["versions"]
    first, second = (v["final"]["content"] for v in versions)
    assert first and second and first != second
    expect(fused.locator(".version-what")).to_have_text("rewritten with writer2")
    # The rewrite kept the analysis: it has versions too.
    expect(turn(page, 0).locator("details.analysis .versions .version-count")).to_have_text("2/2")

    fused.get_by_role("button", name="Previous version of the fused answer").click()
    expect(fused.locator(".versions .version-count")).to_have_text("1/2")
    follow_up = token()
    box = page.locator("#prompt")
    box.fill(f"And in winter? [{follow_up}]")
    box.press("Enter")
    wait_run_done(page, turn_index=1)
    history = json.dumps(requests_with(app, "sim/cirrus", follow_up)[-1]["messages"])
    assert json.dumps(first[:200])[1:-1] in history
    assert json.dumps(second[:200])[1:-1] not in history


def test_fuse_now_skips_are_not_failures(app: App) -> None:
    page = app.page
    app.signup()
    set_panel(page, ["sim/atlas", SLOW_MODEL])
    send_from_home(page, f"Tea or coffee for a long night? [{token()}]")
    expect(card(page, 0).locator(".card-head .pill")).to_have_text("done", timeout=RUN_TIMEOUT)
    turn(page, 0).get_by_role("button", name="Fuse now").click()
    wait_run_done(page)
    expect(card(page, 1).locator(".card-head .pill")).to_have_text("skipped")
    totals = turn(page, 0).locator("section.fused dl.totals")
    expect(totals).to_contain_text("Skipped1: slow")
    expect(totals.locator(".is-bad")).to_have_count(0)
    expect(turn(page, 0).locator(".panel .section-meta")).to_contain_text("1 skipped")
    colour = card(page, 1).locator(".card-head .pill").evaluate("el => getComputedStyle(el).color")
    danger = page.evaluate("() => getComputedStyle(document.documentElement).getPropertyValue('--danger').trim()")
    assert colour != danger
    app.screenshot(page, "versions-fuse-now-skipped")


def test_home_opens_a_fresh_composer_not_the_last_conversation(app: App) -> None:
    page = app.page
    app.signup()
    send_from_home(page, f"What is a good first houseplant? [{token()}]")
    first = conversation_id(page)
    wait_run_done(page)

    page.goto(app.server.url + "/")
    expect(page.locator(".topbar-title")).to_have_text("New conversation")
    expect(page.locator("[data-turns] > article.turn")).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("")
    # The old conversation is one click away, in the sidebar: the user's choice.
    expect(page.locator(f'a[href="/c/{first}/"]')).to_be_visible()
    send_from_home(page, f"Unrelated: how do tides work? [{token()}]")
    assert conversation_id(page) != first
    wait_run_done(page)
    assert len(stored_state(page)) == 1
    assert re.search(r"/c/\d+/$", page.url)
