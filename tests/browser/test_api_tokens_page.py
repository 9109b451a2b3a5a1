"""Settings → API tokens in a browser: reached from the settings navigation, an empty name refused
next to the field, a token shown exactly once, then revoked after a second click to confirm.

The page is screenshotted to test-artifacts/api-tokens.png (and api-tokens-phone.png, narrow) with
a new token on show, an active and a revoked token listed, and the confirmation of a revoke open.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import ARTIFACTS, App

pytestmark = pytest.mark.browser

TOKEN_RE = re.compile(r"^fsn_[A-Za-z0-9]{40}$")


def test_a_token_is_made_shown_once_and_revoked(app: App) -> None:
    # Tall enough for the whole page at once: the app scrolls inside its main column.
    page = app.new_page(app.new_context(viewport={"width": 1280, "height": 1150}))
    app.signup(page)
    page.goto("/settings/keys")
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="API tokens").click()
    page.wait_for_url(re.compile(r"/settings/api-tokens$"))
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    expect(page.locator("[data-api-base-url]")).to_have_text(f"{app.url}/api/v1")

    # ---------------------------------------------------------------- an empty name: told why, in place
    console_before = len(app.watch.console_errors)
    page.get_by_role("button", name="Create token").click()
    name = page.get_by_label("Name")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_name_error")).to_have_text(re.compile("Give the token a name"))
    # Chromium logs the form's expected 400 as a console error; nothing else may be there.
    new_errors = app.watch.console_errors[console_before:]
    assert all(re.search(r"status of 400", e) for e in new_errors), new_errors
    del app.watch.console_errors[console_before:]

    # ---------------------------------------------------------------- made, and shown once
    name.fill("Old laptop")
    page.get_by_role("button", name="Create token").click()
    secret_field = page.locator("#new-token-secret")
    expect(secret_field).to_be_visible()
    expect(secret_field).to_be_focused()
    secret = secret_field.input_value()
    assert TOKEN_RE.match(secret), secret
    expect(page.locator("[data-new-token]")).to_contain_text("it will not be shown again")
    card = page.locator("li[data-token]", has_text="Old laptop")
    expect(card).to_contain_text(f"{secret[:10]}…")
    expect(card).to_contain_text("last used never")

    page.reload()
    expect(page.locator("#new-token-secret")).to_have_count(0)
    assert secret not in page.content()
    expect(card).to_have_attribute("data-status", "active")

    # ---------------------------------------------------------------- revoked, after a confirmation
    card.get_by_text("Revoke…").click()
    expect(card).to_contain_text("This cannot be undone.")
    card.get_by_role("button", name="Revoke this token").click()
    expect(page.locator(".flash")).to_contain_text("Revoked “Old laptop”")
    expect(card).to_have_attribute("data-status", "revoked")
    expect(card.locator(".st-pill")).to_have_text(re.compile(r"^Revoked \d"))
    expect(card.get_by_text("Revoke…")).to_have_count(0)

    # ---------------------------------------------------------------- the page with both states, for a look
    page.get_by_label("Name").fill("CI runner")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token-secret")).to_be_visible()
    page.locator("li[data-token]", has_text="CI runner").get_by_text("Revoke…").click()
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no hover colour on the buttons
    page.screenshot(path=str(ARTIFACTS / "api-tokens.png"))
    page.set_viewport_size({"width": 390, "height": 1500})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()  # slid away on a phone
    page.wait_for_timeout(400)  # the end of its transition
    page.screenshot(path=str(ARTIFACTS / "api-tokens-phone.png"))
