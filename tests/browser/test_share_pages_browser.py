"""Share links and empty keys as a visitor sees them (issue 10, item 13).

A imports a preset from OpenRouter's server-tool shape and shares it. A signed-out visitor who
opens the link gets the sign-in page with a notice saying why, signs in as B and lands on the
shared preset. A stops sharing: B's reload gets the app's own 404 page, which says the link was
revoked or never existed and to ask for a new one. B then saves an empty key in Settings → Keys
and is told, next to the field, why nothing was saved.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest
from playwright.sync_api import expect

from .conftest import ANALYST, PANEL, WRITER, App


pytestmark = pytest.mark.browser

SERVER_TOOL_REQUEST = {
    "model": WRITER,
    "tools": [{"type": "openrouter:fusion", "parameters": {"analysis_models": PANEL[:2], "model": ANALYST}}],
}


def test_share_links_signed_out_revoked_and_an_empty_key(app: App) -> None:
    # ---------------------------------------------------------------- A imports the server-tool shape
    page_a = app.page
    app.signup(page_a)
    page_a.goto("/presets/import")
    page_a.locator("#id_text").fill(json.dumps(SERVER_TOOL_REQUEST))
    name = f"Shared {secrets.token_hex(3)}"
    page_a.locator("#id_name").fill(name)
    page_a.get_by_role("button", name="Import").click()
    page_a.wait_for_url(re.compile(r"/presets/\d+/$"))
    roles = page_a.locator("section[aria-labelledby=pz-roles-title] dl.pz-dl dd")
    expect(roles.nth(0)).to_have_text(ANALYST)  # the tool's model
    expect(roles.nth(1)).to_have_text(WRITER)  # the request's model
    page_a.get_by_role("button", name="Create a share link").click()
    share_url = page_a.locator("#share-url").input_value()

    # ---------------------------------------------------------------- B, a visitor, signs up elsewhere
    username, password = f"qa_{secrets.token_hex(5)}", f"Fusion-{secrets.token_urlsafe(12)}-9"
    signup = app.new_page()
    signup.goto("/accounts/signup/")
    signup.locator("#id_username").fill(username)
    signup.locator("#id_password1").fill(password)
    signup.locator("#id_password2").fill(password)
    signup.get_by_role("button", name="Create account").click()
    signup.wait_for_url(f"{app.url}/")

    # ---------------------------------------------------------------- signed out: told to sign in
    page_b = app.new_page()
    response = page_b.goto(share_url)
    assert response is not None and response.status == 200
    notice = page_b.locator("[data-share-sign-in]")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Sign in to see this shared preset.")
    expect(page_b.locator("body")).not_to_contain_text(name)
    app.screenshot(page_b, "share-01-signed-out-sign-in")
    page_b.locator("#id_username").fill(username)
    page_b.locator("#id_password").fill(password)
    page_b.get_by_role("button", name="Sign in").click()
    page_b.wait_for_url(share_url)
    expect(page_b.locator(".pz-title")).to_have_text(name)

    # ---------------------------------------------------------------- revoked: the app's 404 page
    page_a.get_by_role("button", name="Stop sharing").click()
    page_a.wait_for_url(re.compile(r"/presets/\d+/$"))
    console_before = len(app.watch.console_errors)
    response = page_b.reload()
    assert response is not None and response.status == 404
    missing = page_b.locator("[data-share-missing]")
    expect(missing.get_by_role("heading", name="This share link does not work")).to_be_visible()
    expect(missing).to_contain_text("revoked")
    expect(missing).to_contain_text("Ask the person who shared it for a new link.")
    expect(page_b.locator("nav, aside").first).to_be_visible()  # the app's frame, with its sidebar
    expect(page_b.locator("body")).not_to_contain_text(name)
    app.screenshot(page_b, "share-02-revoked-404", full_page=True)
    # Chromium logs the expected 404 of that document as a console error; nothing else may be there.
    new_errors = app.watch.console_errors[console_before:]
    assert all(re.search(r"status of 404", e) for e in new_errors), new_errors
    del app.watch.console_errors[console_before:]

    # ---------------------------------------------------------------- an empty key says why
    page_b.goto("/settings/keys")
    card = page_b.locator('li.st-card[data-provider="openrouter"]')
    card.get_by_role("button", name="Save key").click()
    error = card.locator("#key-error-openrouter")
    expect(error).to_have_text("Nothing was saved: the key field was empty. Paste your OpenRouter API key, then save.")
    field = card.locator("#key-openrouter")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    # Next to the field: directly below it, inside the same card.
    field_box, error_box = field.bounding_box(), error.bounding_box()
    assert field_box and error_box and 0 <= error_box["y"] - (field_box["y"] + field_box["height"]) < 24
    expect(card.locator(".st-pill")).not_to_contain_text("Your key")  # nothing was stored
    app.screenshot(page_b, "share-03-empty-key")
    new_errors = app.watch.console_errors[console_before:]
    assert all(re.search(r"status of (400|404)", e) for e in new_errors), new_errors
    del app.watch.console_errors[console_before:]
    app.assert_clean()
