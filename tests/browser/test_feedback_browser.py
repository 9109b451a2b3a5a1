"""Accepting a fused answer in the browser: Accept and Reject under the finished answer (pressed
state in aria-pressed), a note that appears once chosen, refused in place when too long, and
everything there again after a reload, as the server stored it (``/c/<id>/state.json``).
Screenshots: test-artifacts/browser-feedback.png and browser-feedback-mobile.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import App
from .test_chatroom import send_from_home, stored_state, token, turn, wait_run_done

pytestmark = pytest.mark.browser

NOTE = "Clear and right about sunsets. <b>not markup</b>"


def test_accept_with_a_note_then_reload_and_see_it_kept(app: App) -> None:
    page = app.page
    app.signup()
    send_from_home(page, f"Why is the sky blue at noon and red at dusk? [{token()}]")
    box = turn(page, 0).locator("section.fused [data-feedback]")
    expect(box).to_be_hidden()  # nothing to judge while the answer is written
    wait_run_done(page)

    accept = box.get_by_role("button", name="Accept")
    reject = box.get_by_role("button", name="Reject")
    note = box.get_by_label("Note", exact=True)
    status = box.get_by_role("status")
    expect(accept).to_have_attribute("aria-pressed", "false")
    expect(reject).to_have_attribute("aria-pressed", "false")
    expect(note).to_be_hidden()  # the note appears after choosing

    accept.click()
    expect(accept).to_have_attribute("aria-pressed", "true")
    expect(reject).to_have_attribute("aria-pressed", "false")
    expect(status).to_have_text("Accepted.")
    expect(note).to_be_visible()
    assert stored_state(page)[0]["feedback"] == {"accepted": True, "note": ""}

    # Too long: told next to the field, which is marked invalid; nothing changes on the server.
    console_before = len(app.watch.console_errors)
    note.fill("x" * 2001)
    box.get_by_role("button", name="Save").click()
    error = box.locator(".feedback-note .feedback-error")
    expect(error).to_have_text("The note is 2,001 characters; the limit is 2,000.")
    expect(note).to_have_attribute("aria-invalid", "true")
    expect(note).to_have_attribute("aria-describedby", re.compile(r"-error$"))
    assert stored_state(page)[0]["feedback"] == {"accepted": True, "note": ""}
    # Chromium logs the expected 400 as a console error; nothing else may be there.
    new_errors = app.watch.console_errors[console_before:]
    assert all(re.search(r"status of 400", e) for e in new_errors), new_errors
    del app.watch.console_errors[console_before:]

    note.fill(NOTE)
    expect(error).to_be_hidden()  # typing is fixing it
    box.get_by_role("button", name="Save").click()
    expect(status).to_have_text("Note saved.")
    expect(note).to_have_attribute("aria-invalid", "false")
    assert stored_state(page)[0]["feedback"] == {"accepted": True, "note": NOTE}

    # Reloaded: the verdict and the note are there again, the note as text.
    page.reload()
    wait_run_done(page)
    expect(accept).to_have_attribute("aria-pressed", "true")
    expect(reject).to_have_attribute("aria-pressed", "false")
    expect(note).to_have_value(NOTE)
    assert box.locator("b").count() == 0
    box.scroll_into_view_if_needed()
    app.screenshot(page, "feedback")

    # Changing the verdict keeps the note; pressing the pressed button takes the verdict back.
    reject.click()
    expect(reject).to_have_attribute("aria-pressed", "true")
    expect(accept).to_have_attribute("aria-pressed", "false")
    expect(status).to_have_text("Rejected.")
    assert stored_state(page)[0]["feedback"] == {"accepted": False, "note": NOTE}
    reject.click()
    expect(reject).to_have_attribute("aria-pressed", "false")
    expect(status).to_have_text("Taken back.")
    expect(note).to_be_hidden()
    assert stored_state(page)[0]["feedback"] is None
    page.reload()
    wait_run_done(page)
    expect(accept).to_have_attribute("aria-pressed", "false")
    expect(note).to_be_hidden()
    app.assert_clean()


def test_on_a_phone_the_controls_are_tap_sized(app: App) -> None:
    page = app.new_page(app.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True))
    app.signup(page)
    send_from_home(page, f"How do tides work? [{token()}]")
    wait_run_done(page)
    box = turn(page, 0).locator("section.fused [data-feedback]")
    box.get_by_role("button", name="Reject").tap()
    expect(box.get_by_role("button", name="Reject")).to_have_attribute("aria-pressed", "true")
    controls = [
        box.get_by_role("button", name="Accept"),
        box.get_by_role("button", name="Reject"),
        box.get_by_label("Note", exact=True),
        box.get_by_role("button", name="Save"),
    ]
    for control in controls:
        size = control.bounding_box()
        assert size is not None and size["height"] >= 40 and size["width"] >= 40, size
    box.scroll_into_view_if_needed()
    app.screenshot(page, "feedback-mobile")

    # The usage page counts it under the panel the conversation ran, at what the ledger says it cost.
    cost = stored_state(page)[0]["receipt"]["cost_text"]
    page.goto("/usage")
    table = page.locator("table[data-acceptance]")
    expect(table.locator("tbody tr")).to_have_count(1)
    cells = table.locator("tbody tr").first.locator("th, td").all_inner_texts()
    assert cells == ["Custom panel", "1", "0", "1", "0%", cost, "–"], cells
    table.scroll_into_view_if_needed()
    app.screenshot(page, "feedback-usage")
    app.assert_clean()
