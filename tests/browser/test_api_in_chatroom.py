"""An API run, opened in the chatroom: a token made on the settings page, a Chat Completions call
with a system message and an earlier turn (the official ``openai`` client), then the run in the
sidebar marked "API", with its panel, analysis and fused answer, and the earlier messages folded
above the prompt. Screenshot: test-artifacts/browser-api-run.png.
"""

from __future__ import annotations

import re

import openai
import pytest
from playwright.sync_api import expect

from .conftest import App

pytestmark = pytest.mark.browser


def test_an_api_run_is_a_conversation_in_the_sidebar(app: App) -> None:
    page = app.page
    app.signup(page)
    page.goto("/settings/api-tokens")
    page.get_by_label("Name").fill("laptop script")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-secret").input_value()

    api = openai.OpenAI(base_url=f"{app.url}/api/v1", api_key=secret, max_retries=0, timeout=60)
    done = api.chat.completions.create(
        model="fusion",
        messages=[
            {"role": "system", "content": "Answer for a curious ten-year-old."},
            {"role": "user", "content": "What is light?"},
            {"role": "assistant", "content": "Light is energy you can see."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
    )
    assert done.choices[0].message.content
    conversation = done.model_extra["fusion"]["conversation_url"]

    page.goto("/")
    link = page.locator(f'#sidebar a.conv-link[href="{conversation}"]')
    expect(link).to_contain_text("Why is the sky blue?")
    expect(link.locator(".conv-source")).to_have_text("API")
    link.click()
    page.wait_for_url(f"**{conversation}")
    context = page.locator(".turn-context")
    expect(context.locator("summary")).to_have_text("Sent with 3 earlier messages (API)")
    context.locator("summary").click()
    expect(context).to_contain_text("system: Answer for a curious ten-year-old.")
    expect(context).to_contain_text("assistant: Light is energy you can see.")
    expect(page.locator(".prompt-bubble")).to_have_text("Why is the sky blue?")
    expect(page.locator(".card-body")).to_have_count(3)
    for word in re.findall(r"[A-Za-z]{6,}", done.choices[0].message.content)[:5]:  # rendered, so words
        expect(page.locator(".fused-body")).to_contain_text(word)
    app.screenshot(page, "api-run", full_page=False)
