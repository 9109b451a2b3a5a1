"""Evaluations end to end in a browser (issue 13): make one from a task file, see the estimate,
start it, watch the progress to the end, read the report and its charts, open a task.

The judge is ``sim/judge`` (chat/testing/scripted_judge.py), which the shared upstream of the
other browser tests does not list: this module starts a Daphne of its own, on its own SQLite
database, against an upstream with the demo models, paced fast. Screenshots of the report and
of a task's drill-down go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from chat.testing.scripted import DEMO_SCRIPTS, ScriptedUpstream
from tests.daphne import free_port, start_daphne, stop_process, wait_until_healthy

from .conftest import ARTIFACTS, ROOT, App, LiveServer

pytestmark = pytest.mark.browser

FAST = {"ttft_ms": 60, "tokens_per_s": 900, "chunk_chars": 48, "keepalive_ms": 0}
SCRIPTS = {
    model: {**DEMO_SCRIPTS[model], **FAST}
    for model in ("sim/atlas", "sim/borealis", "sim/cirrus", "sim/analyst", "sim/writer", "sim/judge")
}
TASKS = [
    {
        "id": "balcony-tomatoes",
        "problem": "How should I water tomatoes growing in pots on a sunny balcony?",
        "domain": "Gardening",
        "criteria": [
            {"id": "morning", "requirement": "Recommends watering deeply in the morning", "weight": 2},
            {"id": "soil", "requirement": "Mentions checking the soil moisture before watering", "weight": 1},
            {"id": "leaves", "requirement": "Recommends spraying the leaves at midday", "weight": -1},
        ],
    },
    {
        "id": "rust/backend?",
        "problem": "Is Rust a good choice for a small team's backend services?",
        "domain": "Software",
        "criteria": [
            {"id": "safety", "requirement": "Discusses memory safety and the borrow checker", "weight": 1},
            {"id": "hiring", "requirement": "Considers hiring and the learning curve for the team", "weight": 1},
        ],
    },
]
CONFIGS = ["solo:sim/atlas", "panel:sim/atlas,sim/borealis,sim/cirrus;analyst=sim/analyst;writer=sim/writer"]


@pytest.fixture(scope="module")
def eval_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    upstream = ScriptedUpstream(SCRIPTS, time_scale=1.0).start_in_thread()
    ARTIFACTS.mkdir(exist_ok=True)
    db_path = tmp_path_factory.mktemp("eval-db") / "fusion.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
        "DATABASE_URL": f"sqlite:///{db_path}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": "",
        "OPENROUTER_BASE_URL": upstream.base_url,
        "OPENROUTER_API_KEY": "test",
        "FUSION_ALLOW_SERVER_KEY": "true",
        "FUSION_PROVIDERS": "",
        "FUSION_DEFAULT_PANEL": "sim/atlas,sim/borealis,sim/cirrus",
        "FUSION_DEFAULT_ANALYST": "sim/analyst",
        "FUSION_DEFAULT_WRITER": "sim/writer",
        "FUSION_DEMO": "false",
        "FUSION_SIGNUP": "open",
        "FUSION_LOGIN_RATE_PER_MIN": "6000",
        "FUSION_LOGIN_BURST": "1000",
        "REDIS_URL": "",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if migrate.returncode != 0:
        upstream.stop()
        pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)
    log_path = ARTIFACTS / "browser-eval-daphne.log"
    log = log_path.open("wb")
    port = free_port()
    process = start_daphne(port, env, log)
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, upstream=upstream)
    try:
        wait_until_healthy(server.url, process, name="Daphne", log_tail=server.log_tail)
        yield server
    finally:
        stop_process(process)
        log.close()
        upstream.stop()


@pytest.fixture
def app(browser: Any, eval_server: LiveServer, request: pytest.FixtureRequest) -> Iterator[App]:
    """The shared fixture's handle, on this module's server: page errors, CSP violations and
    server tracebacks still fail the test (tests/browser/conftest.py's hooks)."""
    handle = App(browser, eval_server, request.node.name)
    request.node._browser_app = handle
    yield handle
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for i, context in enumerate(handle.contexts):
            for j, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(ARTIFACTS / f"browser-FAILED-{request.node.name}-{i}{j}.png"))
                except Exception:
                    pass
        report.sections.append(("daphne log (tail)", eval_server.log_tail()))
    handle.close()


def whole_page_screenshot(app: App, page: Page, name: str) -> None:
    """The page scrolls inside its main column, not the document: make the viewport as tall as
    that column's content for the shot, then put it back."""
    size = page.viewport_size or {"width": 1440, "height": 900}
    height = page.evaluate("() => document.querySelector('.thread').scrollHeight + 60")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 12000)})
    page.wait_for_timeout(150)  # layout and lazy images
    app.screenshot(page, name)
    page.set_viewport_size(size)


def images_loaded(page: Page) -> list[int]:
    """The natural widths of the report's charts (0 for an image that did not load)."""
    return page.eval_on_selector_all("img[data-ev-chart]", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_make_start_and_read_an_evaluation(app: App) -> None:
    page = app.page
    app.signup()
    page.get_by_role("link", name="Evaluations").click()
    expect(page.get_by_role("heading", name="Evaluations", level=2)).to_be_visible()
    page.get_by_role("link", name="New evaluation").click()

    # The form: a task file, two configurations, the judge, two passes.
    jsonl = "\n".join(json.dumps(t) for t in TASKS) + "\n"
    page.locator("#id_tasks").set_input_files(
        files=[{"name": "garden-and-code.jsonl", "mimeType": "application/json", "buffer": jsonl.encode()}]
    )
    page.locator("#id_name").fill("Balconies and backends")
    page.get_by_role("textbox", name="Configurations").fill("\n".join(CONFIGS))
    page.get_by_role("textbox", name="Judge model").fill("sim/judge")
    page.keyboard.press("Escape")  # the model picker's suggestions
    page.get_by_label("Judging passes").fill("2")
    expect(page.get_by_label("Guarded hosts")).to_have_value(re.compile(r"huggingface\.co"))
    page.get_by_role("button", name="Create evaluation").click()

    # Before starting: the estimate and the Start button; nothing has run.
    page.wait_for_url(re.compile(r"/evaluations/\d+$"))
    expect(page.locator(".ev-title")).to_contain_text("Balconies and backends")
    expect(page.locator("[data-ev-status]")).to_have_text("Not started")
    expect(page.locator("[data-ev-estimate]")).to_contain_text(re.compile(r"Estimated cost:\s*\$[\d.]+ – \$[\d.]+"))
    expect(page.locator("[data-ev-estimate]")).to_contain_text("judging about $")
    expect(page.locator("[data-ev-progress] tr[data-config]")).to_have_count(2)
    page.get_by_role("button", name="Start").click()

    # Live progress, polled while it runs, until the report is swapped in.
    expect(page.locator(".flash")).to_contain_text("Started.")
    expect(page.locator("[data-ev-status]")).to_have_text("Complete", timeout=90_000)
    expect(page.locator("#run-title")).to_have_text("Done", timeout=10_000)
    for row in page.locator("[data-ev-progress] tr[data-config]").all():
        expect(row.locator('[data-count="answered"]')).to_have_text("2")
        expect(row.locator('[data-count="judged"]')).to_have_text("4")
    expect(page.locator("[data-ev-announce]")).to_contain_text("complete")

    # The report: a row per configuration with a score, the paired difference against the baseline.
    rows = page.locator("[data-ev-report] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator(".ev-score")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(rows.nth(1).locator(".ev-score")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(rows.nth(0)).to_contain_text("baseline")
    expect(rows.nth(1)).to_contain_text("W/T/L")
    expect(page.locator("[data-ev-tasks] tbody tr")).to_have_count(2)
    expect(page.locator("[data-ev-domains]")).to_contain_text("Gardening")
    page.locator("img[data-ev-chart]").first.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img[data-ev-chart]')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert all(width > 0 for width in images_loaded(page))
    whole_page_screenshot(app, page, "eval-report")
    report_url = page.url

    # The dark theme: the charts are inverted to match, their colours kept apart.
    dark = app.new_page(app.new_context(color_scheme="dark", storage_state=page.context.storage_state()))
    dark.goto(report_url)
    dark.locator("img[data-ev-chart]").first.scroll_into_view_if_needed()
    dark.wait_for_function(
        "() => [...document.querySelectorAll('img[data-ev-chart]')].every(i => i.complete && i.naturalWidth > 0)"
    )
    whole_page_screenshot(app, dark, "eval-report-dark")

    # The exports answer as downloads of the same report.
    with page.expect_download() as download:
        page.get_by_role("link", name="Report JSON").click()
    exported = json.loads(download.value.path().read_text())
    assert [c["ref"] for c in exported["configurations"]] == CONFIGS

    # A task's drill-down: the rubric, then per configuration the verdicts pass by pass.
    page.locator("[data-ev-tasks] tbody tr").nth(1).get_by_role("link").click()
    page.wait_for_url(re.compile(r"/tasks/rust/backend%3F$"))
    expect(page.locator(".ev-title")).to_contain_text("rust/backend?")
    expect(page.locator("[data-ev-rubric] tbody tr")).to_have_count(2)
    page.go_back()
    page.locator("[data-ev-tasks] tbody tr").nth(0).get_by_role("link").click()
    page.wait_for_url(re.compile(r"/tasks/balcony-tomatoes$"))
    expect(page.locator("[data-ev-rubric]")).to_contain_text("penalty")
    results = page.locator("[data-result]")
    expect(results).to_have_count(2)
    for i in range(2):
        verdicts = results.nth(i).locator("[data-ev-verdicts]")
        expect(verdicts.locator("thead th")).to_have_text(["Criterion", "Pass 1", "Pass 2"])
        expect(verdicts.locator("tbody tr")).to_have_count(3)
        expect(verdicts.locator("td[data-verdict]")).to_have_count(6)
    expect(results.nth(0).locator(".ev-answer .prose")).not_to_be_empty()
    panel = results.nth(1)
    panel.get_by_text("The panel's answers (3)").click()
    expect(panel.locator(".ev-member")).to_have_count(3)
    panel.get_by_text("The analyst's comparison").click()
    expect(panel.locator(".ev-analysis")).to_be_visible()
    expect(panel.get_by_role("link", name="Open its conversation")).to_be_visible()
    whole_page_screenshot(app, page, "eval-drilldown")

    panel.get_by_role("link", name="Open its conversation").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))


def test_a_bad_task_file_is_explained_next_to_the_field(app: App) -> None:
    page = app.page
    app.signup()
    page.goto("/evaluations/new")
    bad = "\n".join(
        [
            json.dumps(TASKS[0]),
            json.dumps({"id": "t2", "problem": "p", "criteria": [{"id": "a", "requirement": "r", "weight": "heavy"}]}),
            "{oops",
        ]
    )
    page.locator("#id_tasks").set_input_files(
        files=[{"name": "bad.jsonl", "mimeType": "application/json", "buffer": bad.encode()}]
    )
    page.get_by_role("textbox", name="Configurations").fill("solo:sim/atlas\npreset:nope")
    page.get_by_role("textbox", name="Judge model").fill("sim/judge")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Create evaluation").click()
    problems = page.locator("[data-task-problems] li")
    expect(problems).to_have_count(2)
    # The form comes back with 400, as an invalid form does; Chromium logs that status as an error.
    expected = "status of 400 (Bad Request) (" + app.url + "/evaluations/new"
    app.watch.console_errors = [e for e in app.watch.console_errors if expected not in e]
    expect(problems.nth(0)).to_have_text("line 2: criteria[0].weight must be a number")
    expect(problems.nth(1)).to_contain_text("line 3: not valid JSON")
    expect(page.get_by_role("textbox", name="Configurations")).to_have_value("solo:sim/atlas\npreset:nope")
    # The hints add a preset without typing it.
    page.locator('[data-config-ref="preset:quality"]').click()
    expect(page.get_by_role("textbox", name="Configurations")).to_have_value(
        "solo:sim/atlas\npreset:nope\npreset:quality\n"
    )
    # Tasks from feedback hide the file field.
    page.get_by_label("From my accepted and rejected answers").check()
    expect(page.locator("#id_tasks")).to_be_hidden()
    page.get_by_label("From a task file").check()
    expect(page.locator("#id_tasks")).to_be_visible()
    whole_page_screenshot(app, page, "eval-form-errors")
