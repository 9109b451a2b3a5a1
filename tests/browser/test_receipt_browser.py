"""A turn's totals and receipt in the browser: after a rewrite the footer shows what every run of
the turn cost, and the receipt lists each call (model, role, tokens, cost, kept), all from the
server's ledger (``/c/<id>/state.json``). Screenshot: test-artifacts/browser-receipt*.png."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import App
from .test_chatroom import RUN_TIMEOUT, send_from_home, stored_state, token, turn, wait_run_done


pytestmark = pytest.mark.browser


def test_after_a_rewrite_the_footer_and_the_receipt_count_every_run_of_the_turn(app: App) -> None:
    page = app.page
    app.signup()
    send_from_home(page, f"How should a small team adopt code review? [{token()}]")
    wait_run_done(page)
    fused = turn(page, 0).locator("section.fused")
    first = stored_state(page)[0]["receipt"]
    assert first["runs"] == 1 and first["calls"] == 5  # three members, the analyst, the writer
    expect(fused.locator("details.receipt > summary")).to_contain_text(f"5 calls in 1 run, {first['cost_text']}")

    fused.locator("[data-action=regenerate]").click()
    expect(fused.locator("dl.totals")).to_contain_text("Turn cost", timeout=RUN_TIMEOUT)
    wait_run_done(page)
    receipt = stored_state(page)[0]["receipt"]
    assert receipt["runs"] == 2 and receipt["calls"] == 6  # the rewrite called the writer only
    totals = fused.locator("dl.totals")
    expect(totals).to_contain_text(f"Turn cost{receipt['cost_text']}")

    details = fused.locator("details.receipt")
    details.locator("summary").click()
    rows = details.locator("tbody tr")
    expect(rows).to_have_count(6)
    expect(rows.nth(4)).to_contain_text("Writer")
    expect(rows.nth(4)).to_contain_text("not kept")  # the first writer's answer was replaced
    expect(rows.nth(5)).to_contain_text("kept")
    expect(rows.nth(0)).to_contain_text(receipt["lines"][0]["cost_text"])
    # The analyst's and the writer's own time to first token, tokens and cost.
    own = details.locator(".receipt-own")
    writer = receipt["writer"]
    expect(own).to_contain_text("Analyst")
    expect(own).to_contain_text(f"{writer['cost_text']}")
    expect(details.locator("tfoot")).to_contain_text(receipt["cost_text"])

    # Reloaded, the page shows the same numbers from the stored state.
    page.reload()
    wait_run_done(page)
    expect(turn(page, 0).locator("dl.totals")).to_contain_text(f"Turn cost{receipt['cost_text']}")
    turn(page, 0).locator("details.receipt summary").click()
    turn(page, 0).locator("details.receipt").scroll_into_view_if_needed()
    app.screenshot(page, "receipt")
    app.assert_clean()
