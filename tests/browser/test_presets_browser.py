"""Presets end to end (issue 4, "Browser test" / "Done when"): build, share, copy, run, revoke.

User A builds a three-member panel in the preset editor (one member with a label, a temperature
and a system prompt), saves it and makes a share link. User B, in a browser context of their own,
stores their own OpenRouter key in Settings → Keys, opens the link, sees exactly that panel and
its estimated cost, copies it, picks the copy in the composer of a new conversation and runs a
prompt to the fused answer. A then stops sharing, and the link answers B with a plain 404.

About "runs it with their own key": the scripted upstream records every request's headers with
the Authorization value redacted and a SHA-256 prefix of the key beside it, so the test checks
that every call of B's run carried B's key. Also: the Keys page shows B's key only by its last
four characters, and the key appears in no HTTP response body, no websocket frame B's browser
received, and not in the server's log.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from .conftest import ANALYST, WRITER, App
from .test_chatroom import card, requests_with, stored_state, token, turn, wait_run_done


pytestmark = pytest.mark.browser

SYSTEM_PROMPT = "You are a careful planner. Answer in numbered steps & keep <it> short."
# What the preset's panel must look like wherever it is shown: (label or model id, model id).
MEMBERS = [("Planner", "sim/atlas"), ("sim/cirrus", "sim/cirrus"), ("sim/borealis", "sim/borealis")]


class BodyRecorder:
    """Every HTTP response body and websocket frame one browser context received, as text."""

    def __init__(self, app: App, context: Any) -> None:
        self.app = app
        self.texts: list[tuple[str, str]] = []
        self.unread: list[str] = []
        context.on("response", self._on_response)
        context.on("page", self._on_page)

    def _on_response(self, response: Any) -> None:
        if not response.url.startswith(self.app.url + "/") or response.request.resource_type in ("image", "font"):
            return
        try:
            self.texts.append((response.url, response.text()))
        except Exception:  # redirects have no body
            if not 300 <= response.status < 400:
                self.unread.append(response.url)

    def _on_page(self, page: Page) -> None:
        page.on(
            "websocket", lambda ws: ws.on("framereceived", lambda payload: self.texts.append((ws.url, str(payload))))
        )

    def containing(self, secret: str) -> list[str]:
        return [url for url, text in self.texts if secret in text]


def fill_member(
    page: Page, index: int, *, model: str, label: str = "", temperature: str = "", system_prompt: str = ""
) -> None:
    page.locator(f"#id_members-{index}-model").fill(model)
    page.locator(f"#id_members-{index}-label").fill(label)
    page.locator(f"#id_members-{index}-temperature").fill(temperature)
    page.locator(f"#id_members-{index}-system_prompt").fill(system_prompt)


def expect_panel(page: Page) -> None:
    """The read-only panel (presets/_config.html) is exactly MEMBERS, analyst and writer."""
    members = page.locator("ol.pz-members > li.pz-member")
    expect(members).to_have_count(len(MEMBERS))
    expect(members.locator(".pz-member-name")).to_have_text([name for name, _ in MEMBERS])
    # Only the labelled member names its model separately.
    expect(members.locator("code.pz-model")).to_have_text(["sim/atlas"])
    expect(members.nth(0).locator(".pz-params dd")).to_have_text(["0.3", "default", "default"])
    expect(members.nth(0).locator(".pz-prompt pre")).to_have_text(SYSTEM_PROMPT)
    expect(members.locator(".pz-prompt")).to_have_count(1)
    roles = page.locator("section[aria-labelledby=pz-roles-title] dl.pz-dl")
    expect(roles.locator("dd").nth(0)).to_have_text(ANALYST)
    expect(roles.locator("dd").nth(1)).to_have_text(WRITER)


def test_preset_built_shared_copied_run_with_own_key_and_revoked(app: App) -> None:
    name = f"Garden council {token()}"

    # ---------------------------------------------------------------- A builds and shares a preset
    page_a = app.page
    owner = app.signup(page_a)
    page_a.get_by_role("link", name="Presets", exact=True).click()
    page_a.wait_for_url(f"{app.url}/presets/")
    page_a.get_by_role("link", name="New preset").click()
    page_a.wait_for_url(f"{app.url}/presets/new")

    page_a.locator("#id_name").fill(name)
    page_a.locator("#id_description").fill("Three voices for garden questions.")
    rows = page_a.locator("[data-member-rows] > [data-member-row]")
    expect(rows).to_have_count(3)  # the server's default panel: atlas, borealis, cirrus
    # Remove the second row, add one at the end: the editor renumbers the formset's rows.
    page_a.get_by_role("button", name="Remove member 2").click()
    expect(rows).to_have_count(2)
    page_a.locator("[data-add-member]").click()
    expect(rows).to_have_count(3)
    expect(rows.locator("[data-member-number]")).to_have_text(["1", "2", "3"])
    expect(page_a.locator("[data-member-count]")).to_have_text("3")
    fill_member(page_a, 0, model="sim/atlas", label="Planner", temperature="0.3", system_prompt=SYSTEM_PROMPT)
    fill_member(page_a, 1, model="sim/cirrus")
    fill_member(page_a, 2, model="sim/borealis")
    page_a.locator("#id_analyst").fill(ANALYST)
    page_a.locator("#id_writer").fill(WRITER)
    page_a.keyboard.press("Escape")  # close any model-picker suggestions
    app.screenshot(page_a, "presets-01-editor", full_page=True)
    page_a.get_by_role("button", name="Create preset").click()

    page_a.wait_for_url(re.compile(r"/presets/\d+/$"))
    expect(page_a.locator("h2.pz-title")).to_contain_text(name)
    expect_panel(page_a)
    page_a.get_by_role("button", name="Create a share link").click()
    share_input = page_a.locator("#share-url")
    expect(share_input).to_have_value(re.compile(rf"^{re.escape(app.url)}/p/s/[\w-]{{20,}}/$"))
    share_url = share_input.input_value()
    app.screenshot(page_a, "presets-02-owner-share-link")

    # ---------------------------------------------------------------- B stores their own key
    context_b = app.new_context()
    bodies = BodyRecorder(app, context_b)
    page_b = context_b.new_page()
    app.signup(page_b)
    bob_key = f"sk-or-v1-qa-bob-{secrets.token_hex(12)}"
    last4 = bob_key[-4:]
    page_b.get_by_role("link", name="Keys", exact=True).click()
    page_b.wait_for_url(f"{app.url}/settings/keys")
    openrouter = page_b.locator('li.st-card[data-provider="openrouter"]')
    expect(openrouter.locator(".st-pill")).to_have_text("Using the server's key")
    openrouter.locator("#key-openrouter").fill(bob_key)
    openrouter.get_by_role("button", name="Save key").click()
    page_b.wait_for_url(f"{app.url}/settings/keys")
    expect(openrouter.locator(".st-pill")).to_have_text(f"Your key …{last4}")
    expect(openrouter.locator("#key-openrouter")).to_have_value("")
    expect(openrouter.locator("#key-openrouter")).to_have_attribute("placeholder", f"Replace the key ending …{last4}")
    assert bob_key not in page_b.content()
    app.screenshot(page_b, "presets-03-own-key")

    # ---------------------------------------------------------------- B opens the link: exactly the panel
    response = page_b.goto(share_url)
    assert response is not None and response.status == 200
    expect(page_b.locator(".pz-owner")).to_have_text(owner)
    expect(page_b.locator("h2.pz-title")).to_have_text(name)
    expect(page_b.locator(".pz-notice")).to_contain_text("Read-only.")
    expect_panel(page_b)
    expect(page_b.locator(".pz-cost")).to_have_text(re.compile(r"^\$\d[\d.]*(–\$\d[\d.]*)?$"))
    expect(page_b.locator(".pz-estimate")).to_contain_text("(5 model calls: the panel, the analyst and the writer)")
    # Nothing of A's but the display name: no edit or share controls, no link to A's preset.
    expect(page_b.locator("#share-url, a[href*='/edit'], form[action*='/unshare']")).to_have_count(0)
    app.screenshot(page_b, "presets-04-shared-page", full_page=True)

    # ---------------------------------------------------------------- B copies it
    page_b.get_by_role("button", name="Copy to my presets").click()
    page_b.wait_for_url(re.compile(r"/presets/\d+/$"))
    expect(page_b.locator(".pz-title .pz-badge")).to_have_text("Copied from a link")
    expect_panel(page_b)
    copy_id = re.search(r"/presets/(\d+)/$", page_b.url).group(1)
    assert copy_id != re.search(r"/presets/(\d+)/$", page_a.url).group(1), "B's copy is a new preset, not A's"
    expect(page_b.locator("#share-url")).to_have_count(0)  # the copy is not shared

    # ---------------------------------------------------------------- B runs it in a new conversation
    page_b.locator(".new-conv button").click()
    page_b.wait_for_url(re.compile(r"/c/\d+/$"))
    expect(page_b.locator("[data-empty]")).to_be_visible()
    chooser = page_b.locator("#preset-choice")
    expect(chooser.locator("optgroup[label='Your presets'] option")).to_have_text([name])
    chooser.select_option(copy_id)
    expect(page_b.locator("[data-panel-summary]")).to_have_text(
        f"{name}: 3 models (Planner, cirrus, borealis) · analyst: analyst · writer: writer"
    )
    expect(page_b.locator("[data-estimate]")).to_have_text(re.compile(r"^≈ \$\d"))
    marker = token()
    prompt = f"How do I keep balcony tomatoes healthy? [{marker}]"
    page_b.locator("#prompt").fill(prompt)
    page_b.locator("#prompt").press("Enter")
    expect(turn(page_b, 0).locator(".card")).to_have_count(3)
    expect(turn(page_b, 0).locator(".card .card-model")).to_have_text(["Planner", "cirrus", "borealis"])
    wait_run_done(page_b)
    fused = turn(page_b, 0).locator("section.fused")
    expect(fused.locator(".fused-body h2")).to_have_text("Answer")
    for slot in range(3):
        expect(card(page_b, slot).locator(".card-head .pill")).to_have_text("done")
    fused.scroll_into_view_if_needed()
    app.screenshot(page_b, "presets-05-run-done")

    # The run used the copied preset's whole config: the label, the temperature, the system prompt.
    stored = stored_state(page_b)
    assert len(stored) == 1 and stored[0]["status"] == "complete"
    assert [m["model"] for m in stored[0]["members"]] == [model for _, model in MEMBERS]
    planner = requests_with(app, "sim/atlas", marker)
    assert len(planner) == 1
    assert planner[0]["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert planner[0]["params"].get("temperature") == 0.3
    for model in ("sim/cirrus", "sim/borealis"):
        calls = requests_with(app, model, marker)
        assert len(calls) == 1 and SYSTEM_PROMPT not in str(calls[0]["messages"]), model
        assert "temperature" not in calls[0]["params"] or calls[0]["params"]["temperature"] != 0.3, model
    assert requests_with(app, ANALYST, marker) and requests_with(app, WRITER, marker)
    # Every call of B's run carried B's own key (the upstream records a digest, never the key).
    digest = hashlib.sha256(bob_key.encode()).hexdigest()[:16]
    run_calls = [
        r for m in ("sim/atlas", "sim/cirrus", "sim/borealis", ANALYST, WRITER) for r in requests_with(app, m, marker)
    ]
    assert run_calls and all(r["headers"].get("authorization-sha256") == digest for r in run_calls)

    # B's key: on no page, in no response or websocket frame B received, and not in the server log.
    assert bodies.texts, "no response bodies were recorded"
    assert not bodies.containing(bob_key), f"B's key appeared in: {bodies.containing(bob_key)}"
    assert any(f"…{last4}" in text for _, text in bodies.texts)
    assert bob_key not in app.server.log_path.read_text(errors="replace")
    assert not bodies.unread, f"response bodies that could not be checked: {bodies.unread}"

    # ---------------------------------------------------------------- A revokes: the link is gone
    page_a.get_by_role("button", name="Stop sharing").click()
    page_a.wait_for_url(re.compile(r"/presets/\d+/$"))
    expect(page_a.get_by_role("button", name="Create a share link")).to_be_visible()
    expect(page_a.locator("#share-url")).to_have_count(0)
    console_before = len(app.watch.console_errors)
    response = page_b.goto(share_url)
    assert response is not None and response.status == 404
    expect(page_b.locator("body")).to_contain_text("Not Found")
    expect(page_b.locator("body")).not_to_contain_text(name)
    app.screenshot(page_b, "presets-06-revoked-404")
    # Chromium logs the expected 404 of that document as a console error; nothing else may be there.
    expected_404 = re.compile(r"status of 404")
    new_errors = app.watch.console_errors[console_before:]
    assert all(expected_404.search(e) for e in new_errors), new_errors
    del app.watch.console_errors[console_before:]

    # B's copy is theirs: still listed, still runnable from the chooser.
    page_b.goto("/presets/")
    expect(page_b.locator(f'li.pz-card[data-preset="{copy_id}"] .pz-card-title')).to_have_text(name)
