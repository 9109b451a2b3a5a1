"""Web research end to end (issue 5, "Done when"): search, read two pages, cite; SSRF refused.

The server runs with a search backend (a fake SearXNG on a local web server, see
``conftest.ResearchWeb``) and trusts, for web_fetch, only the page server's 127.0.0.1:P. The user
imports a preset with web tools on (the import page) whose panel is:

* ``sim/researcher`` ("Researcher") — searches, fetches the two results, answers with Markdown
  citations and a Sources list;
* ``sim/prober`` ("Prober") — fetches ``http://169.254.169.254/latest/meta-data/`` and a page-server
  URL that redirects into loopback (127.0.0.2:P, another local server on the trusted port), then
  answers without them;
* writer ``sim/scribe``, whose fused answer cites both pages.

In the browser: the member cards list the search and the two page reads (and the refused fetches
with "blocked: private address"), the answers carry safe cited links, the run's sources list the
two pages; after a reload the same is rendered from history. On the servers: the search backend
got the query, the pages were read, the redirect was followed no further than its first hop, and
the loopback server never saw a request.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import ANALYST, METADATA_URL, PAGES, PROBER, RESEARCHER, SCRIBE, App, ResearchWeb
from .test_chatroom import card, requests_with, stored_state, token, turn, wait_run_done


pytestmark = pytest.mark.browser

QUERY = "balcony tomatoes sun and water"
BLOCKED = "Fetch failed: blocked: private address"


def import_preset(page: Page, name: str) -> None:
    """Create the research preset through Presets → Import JSON (pasted text)."""
    preset = {
        "format": "fusion-preset/1",
        "name": name,
        "description": "Two members with web tools: one researches, one probes the fetcher.",
        "config": {
            "members": [{"model": RESEARCHER, "label": "Researcher"}, {"model": PROBER, "label": "Prober"}],
            "analyst": {"model": ANALYST},
            "writer": {"model": SCRIBE},
            "research": {"web_tools": True, "max_tool_calls": 4},
        },
    }
    page.goto("/presets/")
    page.get_by_role("link", name="Import JSON").click()
    page.wait_for_url("**/presets/import")
    page.locator("#id_text").fill(json.dumps(preset, indent=2))
    page.get_by_role("button", name="Import").click()
    page.wait_for_url(re.compile(r"/presets/\d+/$"))
    research = page.locator("section[aria-labelledby=pz-research-title] dd")
    expect(research.first).to_have_text("on, up to 4 tool calls")


def expect_research_cards(page: Page, web: ResearchWeb) -> None:
    """The member cards: tool calls, cited links, per-member sources (live or from history)."""
    sun, water = (web.page_url(path) for path in PAGES)
    host = web.trusted_host

    researcher = card(page, 0)
    expect(researcher.locator(".card-model")).to_have_text("Researcher")
    calls = researcher.locator("ol.tool-calls > li.tool-call")
    expect(calls).to_have_count(3)
    expect(calls.locator(".tool-label")).to_have_text([QUERY, f"{host}/guides/sunlight", f"{host}/guides/watering"])
    expect(researcher.locator("li.tool-call.is-done")).to_have_count(3)
    expect(calls.nth(0)).to_have_attribute("data-tool", "web_search")
    expect(calls.nth(0).locator(".tool-outcome")).to_have_text(f"Searched “{QUERY}” — 2 results")
    for i in (1, 2):
        expect(calls.nth(i)).to_have_attribute("data-tool", "web_fetch")
        expect(calls.nth(i).locator(".tool-outcome")).to_have_text(
            re.compile(r"^Fetched 127\.0\.0\.1 \([\d,]+ chars\)$")
        )
    # Cited inline and in its Sources section, as safe links.
    for url in (sun, water):
        links = researcher.locator(f'.card-body a[href="{url}"]')
        expect(links).to_have_count(2)
        for link in links.all():
            assert "noopener" in (link.get_attribute("rel") or "").split()
    own_sources = researcher.locator("details.card-sources")
    expect(own_sources.locator("summary")).to_have_text("Sources (2)")
    expect(own_sources.locator("a.source-link")).to_have_count(2)

    prober = card(page, 1)
    expect(prober.locator(".card-model")).to_have_text("Prober")
    refused = prober.locator("ol.tool-calls > li.tool-call")
    expect(refused).to_have_count(2)
    expect(refused.locator(".tool-label")).to_have_text(["169.254.169.254/latest/meta-data/", f"{host}/redirect"])
    expect(prober.locator("li.tool-call.is-failed")).to_have_count(2)
    expect(refused.locator(".tool-outcome")).to_have_text([BLOCKED, BLOCKED])
    expect(refused.locator(".tool-outcome[role=note]")).to_have_count(2)
    expect(prober.locator("details.card-sources")).to_be_hidden()
    expect(prober.locator(".card-body")).to_contain_text("Both pages I tried to read were refused")


def expect_fused_with_sources(page: Page, web: ResearchWeb) -> None:
    sun, water = (web.page_url(path) for path in PAGES)
    fused = turn(page, 0).locator("section.fused")
    expect(fused.locator(".fused-body h2")).to_have_text("Answer")
    cited = fused.locator(".fused-body a[href]")
    expect(cited).to_have_count(2)
    assert [a.get_attribute("href") for a in cited.all()] == [sun, water]
    for link in cited.all():
        assert "noopener" in (link.get_attribute("rel") or "").split(), link.get_attribute("rel")
    sources = fused.locator("section.run-sources")
    expect(sources.locator(".run-sources-title")).to_have_text("Sources (2)")
    items = sources.locator("ol.source-list > li")
    expect(items).to_have_count(2)
    expect(items.locator("a.source-link")).to_have_count(2)
    assert [a.get_attribute("href") for a in items.locator("a.source-link").all()] == [sun, water]
    expect(items.locator(".source-title")).to_have_text([title for title, _ in PAGES.values()])
    for link in items.locator("a.source-link").all():
        assert "noopener" in (link.get_attribute("rel") or "").split()
    expect(items.locator(".source-members .mtag")).to_have_text(["Researcher", "Researcher"])


def test_member_searches_reads_two_pages_cites_them_and_ssrf_is_refused(app: App, research_web: ResearchWeb) -> None:
    web = research_web
    page = app.page
    app.signup()
    name = f"Deep research {token()}"
    import_preset(page, name)

    redirects_before = len(web.pages.requests_to("/redirect"))
    page_hits_before = {path: len(web.pages.requests_to(path)) for path in PAGES}
    searches_before = len(web.search.requests_to("/search"))

    page.locator(".new-conv button").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    page.locator("#preset-choice").select_option(label=name)
    expect(page.locator("[data-panel-summary]")).to_contain_text(f"{name}: 2 models (Researcher, Prober)")
    marker = token()
    page.locator("#prompt").fill(f"How much sun and water do balcony tomatoes need? [{marker}]")
    page.locator("#prompt").press("Enter")

    # Live: the researcher's tool calls appear in its card while it works.
    expect(card(page, 0).locator("ol.tool-calls > li.tool-call").first).to_be_visible(timeout=15_000)
    app.screenshot(page, "research-01-live")
    wait_run_done(page)

    expect_research_cards(page, web)
    card(page, 0).scroll_into_view_if_needed()
    app.screenshot(page, "research-02-member-cards")
    expect_fused_with_sources(page, web)
    totals = turn(page, 0).locator("section.fused dl.totals")
    expect(totals).to_contain_text("Searches1")
    # Four web_fetch calls: two pages read, two refused (the figure counts calls, not pages read).
    expect(totals.locator("div[title^='web_fetch calls']")).to_have_text("Fetches4")
    turn(page, 0).locator("section.fused").scroll_into_view_if_needed()
    app.screenshot(page, "research-03-fused-and-sources")

    # The servers: one search with the member's query, both pages read, the redirect's first hop
    # answered, and nothing ever reached the loopback server behind it.
    searches = web.search.requests_to("/search")[searches_before:]
    assert [(r.query.get("q"), r.query.get("format")) for r in searches] == [([QUERY], ["json"])]
    for path in PAGES:
        assert len(web.pages.requests_to(path)) == page_hits_before[path] + 1, path
    assert len(web.pages.requests_to("/redirect")) == redirects_before + 1
    assert web.loopback.paths() == [], f"a request reached the loopback server: {web.loopback.paths()}"
    # The browser itself went nowhere outside the app (links are not followed).
    foreign = [u for u in app.watch.requests if not u.startswith(app.url + "/")]
    assert not foreign, foreign

    # What the model was told: short tool errors it can read, no page content from the targets.
    prober_calls = requests_with(app, PROBER, marker)
    assert len(prober_calls) == 2
    tool_results = [m["content"] for m in prober_calls[1]["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 2
    for result in tool_results:
        assert result.startswith("Error: web_fetch of ") and result.endswith("failed: blocked: private address"), result
    assert METADATA_URL in tool_results[0]
    assert "SECRET-LOOPBACK-CONTENT" not in json.dumps(prober_calls)

    # Stored: per-member sources and the run's, deduplicated.
    stored = stored_state(page)[0]
    assert stored["status"] == "complete"
    assert [s["url"] for s in stored["members"][0]["sources"]] == [web.page_url(p) for p in PAGES]
    assert stored["members"][1]["sources"] == []

    # From history, after a reload: the same cards, links and sources.
    page.reload()
    wait_run_done(page)
    expect_research_cards(page, web)
    expect_fused_with_sources(page, web)
    card(page, 1).scroll_into_view_if_needed()
    app.screenshot(page, "research-04-refused-after-reload")
