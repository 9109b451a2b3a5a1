"""The evaluation pages (chat/views/evaluations.py): the form and its errors per field, the
report with its exports and charts, live progress, start and stop, the drill-down into a task,
ownership of every URL, and model output that must stay inert.

Evaluations are made with the real service (``evaluation_create``) against the scripted
upstream's catalogue; answers and verdicts are written by hand, so every number on a page is
known in advance.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import presets
from chat.evals import runner
from chat.evals.configs import DRACO_GUARD_HOSTS
from chat.evals.evaluations import evaluation_create
from chat.evals.report import evaluation_report
from chat.evals.scoring import section_scores, task_score
from chat.evals.tasks import Task, load_tasks
from chat.models import (
    Conversation,
    EvalItem,
    EvalJudgement,
    Evaluation,
    EvaluationStatus,
    MemberResponse,
    Run,
    RunStatus,
    Turn,
)
from chat.testing.scripted import DEMO_SCRIPTS
from tests.conftest import serve_from

pytestmark = pytest.mark.django_db

# The second task's id is awkward on purpose: a slash, a question mark, a hash, a space.
ODD_ID = "law/t2?x=1#frag ment"
TASK_ROWS = [
    {
        "id": "t1",
        "problem": "Why is the sky blue?",
        "domain": "Physics",
        "criteria": [
            {"id": "c1", "requirement": "Mentions Rayleigh scattering", "weight": 2},
            {"id": "c2", "requirement": "Explains why shorter wavelengths scatter more", "weight": 1},
            {"id": "c3", "requirement": "Claims the sky reflects the ocean", "weight": -1},
        ],
    },
    {
        "id": ODD_ID,
        "problem": "May a landlord keep a deposit for normal wear and tear?",
        "domain": "Law",
        "criteria": [
            {"id": "k1", "requirement": "Says normal wear and tear is not deductible", "weight": 1},
            {"id": "k2", "requirement": "Advises documenting the condition at move-in", "weight": 1},
        ],
    },
]
TASKS_JSONL = "\n".join(json.dumps(row) for row in TASK_ROWS) + "\n"
SOLO = "solo:sim/atlas"
PANEL = "panel:sim/atlas,sim/borealis;analyst=sim/analyst;writer=sim/writer"
XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)> and [link](javascript:alert(2))'


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def upstream(settings: Any, scripted_thread: Any) -> Any:
    """The scripted upstream with the demo models (sim/judge included), as the app's OpenRouter."""
    return serve_from(settings, scripted_thread(DEMO_SCRIPTS))


@pytest.fixture
def alice_client(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob: Any) -> Client:
    c = Client()
    c.force_login(bob)
    return c


def make_evaluation(user: Any, *, refs: list[str] | None = None, **kwargs: Any) -> Evaluation:
    kwargs.setdefault("passes", 2)
    kwargs.setdefault("accept_threshold", 60)
    return evaluation_create(
        user=user,
        tasks=load_tasks(TASKS_JSONL, name="tasks.jsonl"),
        tasks_name="tasks.jsonl",
        config_refs=refs or [SOLO, PANEL],
        judge_model="sim/judge",
        **kwargs,
    )


def keys(evaluation: Evaluation) -> list[str]:
    return [c["key"] for c in evaluation.configs]


def answer(evaluation: Evaluation, key: str, task_id: str, text: str = "An answer.", **fields: Any) -> EvalItem:
    item = EvalItem.objects.get(evaluation=evaluation, config_key=key, task_id=task_id)
    values: dict[str, Any] = {"status": "answered", "answer": text, "cost_usd": Decimal("0.010"), "latency_ms": 1500}
    values.update(fields)
    for name, value in values.items():
        setattr(item, name, value)
    item.save()
    return item


def judge(item: EvalItem, pass_index: int, cost: str = "0.001", **verdicts: bool | None) -> EvalJudgement:
    task = Task.from_dict(next(t for t in item.evaluation.tasks if t["id"] == item.task_id))
    given = {cid: {"met": met, "reason": f"Pass {pass_index + 1} on {cid}."} for cid, met in verdicts.items()}
    return EvalJudgement.objects.create(
        item=item,
        pass_index=pass_index,
        verdicts=given,
        failures=[f"{cid}: no verdict" for cid, met in verdicts.items() if met is None],
        score=task_score(task, given),
        section_scores=section_scores(task, given),
        cost_usd=Decimal(cost),
    )


def fill(evaluation: Evaluation) -> dict[str, EvalItem]:
    """solo: t1 judged twice, the passes disagreeing on c2; the odd task refused.
    panel: both tasks answered and judged twice, t1's answer flagged by the guard."""
    solo, panel = keys(evaluation)
    solo_t1 = answer(evaluation, solo, "t1", "Rayleigh scattering.")
    judge(solo_t1, 0, c1=True, c2=True, c3=False)  # 3/3 → 100
    judge(solo_t1, 1, c1=True, c2=False, c3=False)  # 2/3 → 66.7
    answer(evaluation, solo, ODD_ID, "", status="refused", error="The model refused to answer.", latency_ms=None)
    flag = {
        "host": "huggingface.co",
        "url": "https://huggingface.co/datasets/perplexity-ai/draco",
        "where": "sim/atlas: web_fetch",
    }
    panel_t1 = answer(
        evaluation, panel, "t1", "Rayleigh scattering, by wavelength.", cost_usd=Decimal("0.05"), guard_flags=[flag]
    )
    judge(panel_t1, 0, c1=True, c2=True, c3=False)
    judge(panel_t1, 1, c1=True, c2=True, c3=None)  # a judge failure on c3
    panel_t2 = answer(evaluation, panel, ODD_ID, "Not for normal wear.", cost_usd=Decimal("0.04"))
    judge(panel_t2, 0, k1=True, k2=False)
    judge(panel_t2, 1, k1=True, k2=False)
    evaluation.status = EvaluationStatus.COMPLETE
    evaluation.save()
    return {"solo_t1": solo_t1, "panel_t1": panel_t1, "panel_t2": panel_t2}


def fusion_run(user: Any, item: EvalItem, *, member_text: str = "Atlas says Rayleigh.") -> Run:
    """A finished fusion run for *item*, written through the ORM: two members and an analysis."""
    conversation = Conversation.objects.create(user=user, title="Eval: t1", source="eval")
    turn = Turn.objects.create(conversation=conversation, index=0, prompt="Why is the sky blue?")
    run = Run.objects.create(
        user=user,
        conversation=conversation,
        turn=turn,
        client_run_id=f"eval-{item.pk}",
        status=RunStatus.COMPLETE,
        config={"members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}]},
        analysis={
            "consensus": ["Scattering explains the colour"],
            "contradictions": [
                {
                    "topic": "Sunsets",
                    "stances": [
                        {"model": "sim/atlas", "stance": "dust"},
                        {"model": "sim/borealis", "stance": "path length"},
                    ],
                }
            ],
            "partial_coverage": [{"models": ["sim/atlas"], "point": "Ozone absorption"}],
            "unique_insights": [{"model": "Response B", "insight": "Violet is absorbed high up"}],
            "blind_spots": ["Colour perception"],
        },
        label_map={"Response A": "sim/atlas", "Response B": "sim/borealis"},
        analyst_model="sim/analyst",
        writer_model="sim/writer",
        answer=item.answer,
        finished_at=timezone.now(),
    )
    MemberResponse.objects.create(run=run, slot=0, model="sim/atlas", status="complete", content=member_text)
    MemberResponse.objects.create(run=run, slot=1, model="sim/borealis", status="complete", content="Borealis too.")
    item.run_id, item.conversation_id = run.pk, conversation.pk
    item.save()
    return run


def text_of(response: Any) -> str:
    return response.content.decode()


def task_url(evaluation: Evaluation, task_id: str) -> str:
    return reverse("evaluation_task", args=[evaluation.pk, task_id])


def upload(name: str, data: str | bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data.encode() if isinstance(data, str) else data, content_type="application/json")


def form_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "source": "file",
        "tasks": upload("tasks.jsonl", TASKS_JSONL),
        "configs": f"{SOLO}\n{PANEL}\n",
        "judge": "sim/judge",
        "passes": "2",
        "threshold": "70",
        "concurrency": "4",
        "guard_hosts": "\n".join(DRACO_GUARD_HOSTS),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def field_errors(html: str, field: str) -> str:
    """The text of the form field *field*'s block (its label, input, help and errors)."""
    match = re.search(
        rf'<(?:div|fieldset) class="field[^"]*" data-field="{field}"[^>]*>(.*?)</(?:div|fieldset)>', html, re.S
    )
    assert match, f"no field {field}"
    return match.group(1)


# --------------------------------------------------------------------------- access


class TestAccess:
    def test_every_page_asks_a_visitor_to_sign_in(self, client: Client, alice: Any, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        for url in [reverse("evaluations"), reverse("evaluation_new"), *owned_urls(evaluation)]:
            for response in (client.get(url), client.post(url)):
                assert response.status_code == 302, url
                assert response["Location"].startswith(reverse("login")), url

    def test_someone_elses_evaluation_is_a_404_on_every_url(
        self, alice: Any, bob_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        for url in owned_urls(evaluation):
            statuses = {bob_client.get(url).status_code, bob_client.post(url).status_code}
            assert 404 in statuses and statuses <= {404, 405}, (url, statuses)
        assert Evaluation.objects.filter(pk=evaluation.pk).exists()  # the delete did nothing

    def test_a_missing_task_is_a_404(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        assert alice_client.get(task_url(evaluation, "no-such-task")).status_code == 404

    def test_the_list_shows_only_ones_own(self, alice: Any, bob: Any, alice_client: Client, upstream: Any) -> None:
        mine = make_evaluation(alice, name="Alice's comparison")
        make_evaluation(bob, name="Bob's comparison")
        html = text_of(alice_client.get(reverse("evaluations")))
        assert "Alice&#x27;s comparison" in html and "Bob&#x27;s" not in html
        assert reverse("evaluation_detail", args=[mine.pk]) in html
        assert "Not started" in html and ">2</td>" in html  # two tasks
        assert reverse("evaluation_new") in html

    def test_the_sidebar_links_to_evaluations(self, alice_client: Client) -> None:
        html = text_of(alice_client.get(reverse("usage")))
        assert f'href="{reverse("evaluations")}"' in html


def owned_urls(evaluation: Evaluation) -> list[str]:
    pk = evaluation.pk
    return [
        *(
            reverse(name, args=[pk])
            for name in (
                "evaluation_detail",
                "evaluation_progress",
                "evaluation_report_json",
                "evaluation_report_csv",
                "evaluation_chart_score_cost",
                "evaluation_chart_domains",
                "evaluation_start",
                "evaluation_stop",
                "evaluation_delete",
            )
        ),
        task_url(evaluation, "t1"),
        task_url(evaluation, ODD_ID),
    ]


# --------------------------------------------------------------------------- the form


class TestNewEvaluation:
    def test_the_form_offers_presets_and_the_guard(self, alice: Any, alice_client: Client) -> None:
        presets.preset_create(
            user=alice,
            name="My deep panel",
            config={
                "members": [{"model": "sim/atlas"}],
                "analyst": {"model": "sim/analyst"},
                "writer": {"model": "sim/writer"},
            },
        )
        html = text_of(alice_client.get(reverse("evaluation_new")))
        for builtin in presets.builtin_presets():
            assert f'data-config-ref="preset:{builtin.key}"' in html
        assert 'data-config-ref="preset:my-deep-panel"' in html and "My deep panel" in html
        guard = field_errors(html, "guard_hosts")
        assert all(host in guard for host in DRACO_GUARD_HOSTS)
        assert 'name="judge"' in html and "data-model-picker" in field_errors(html, "judge")
        assert 'value="3"' in field_errors(html, "passes") and 'value="70"' in field_errors(html, "threshold")
        assert 'value="4"' in field_errors(html, "concurrency")

    def test_it_makes_the_evaluation_and_starts_nothing(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        response = alice_client.post(
            reverse("evaluation_new"),
            form_data(
                name="Sky and law", baseline=SOLO, max_cost="1.50", web_tools="on", max_tool_calls="3", limit="1"
            ),
        )
        evaluation = Evaluation.objects.get(user=alice)
        assert response.status_code == 302 and response["Location"] == reverse(
            "evaluation_detail", args=[evaluation.pk]
        )
        assert evaluation.name == "Sky and law" and evaluation.tasks_name == "tasks.jsonl"
        assert [t["id"] for t in evaluation.tasks] == ["t1"]  # the limit
        assert [c["ref"] for c in evaluation.configs] == [SOLO, PANEL]
        assert (evaluation.judge_model, evaluation.passes, evaluation.accept_threshold) == ("sim/judge", 2, 70.0)
        assert evaluation.baseline == evaluation.configs[0]["key"] and evaluation.max_cost_usd == Decimal("1.5")
        assert evaluation.research["web_tools"] is True and evaluation.research["max_tool_calls"] == 3
        assert evaluation.guard_hosts == list(DRACO_GUARD_HOSTS)
        assert evaluation.status == EvaluationStatus.PENDING
        assert EvalItem.objects.filter(evaluation=evaluation, status="pending").count() == 2
        assert not runner.evaluation_is_running_here(evaluation.pk)

    def test_a_bad_file_lists_every_problem_by_line_next_to_the_file(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        bad = "\n".join(
            [
                json.dumps(TASK_ROWS[0]),
                json.dumps(
                    {"id": "t2", "problem": "p", "criteria": [{"id": "a", "requirement": "r", "weight": "heavy"}]}
                ),
                "{not json",
                json.dumps({"id": "t1", "problem": "", "criteria": [{"id": "a", "requirement": "r", "weight": -1}]}),
            ]
        )
        response = alice_client.post(
            reverse("evaluation_new"), form_data(tasks=upload("bad.jsonl", bad), name="Keep me")
        )
        assert response.status_code == 400
        html = text_of(response)
        block = field_errors(html, "tasks")
        assert "“bad.jsonl” was refused" in block
        problems = re.findall(r"<li>(line \d+: [^<]*)</li>", block)
        assert "line 2: criteria[0].weight must be a number" in problems
        assert any(p.startswith("line 3: not valid JSON") for p in problems)
        assert "line 4: problem must be a non-empty string" in problems
        assert any("line 4: duplicate task id" in p for p in problems)
        assert "line 4: needs at least one criterion with a positive weight" in problems
        assert 'value="Keep me"' in html  # what the user typed stays
        assert not Evaluation.objects.exists()

    def test_an_unknown_preset_is_shown_next_to_the_configurations(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        typed = f"{SOLO}\npreset:no-such-preset\n"
        response = alice_client.post(reverse("evaluation_new"), form_data(configs=typed, threshold="65"))
        assert response.status_code == 400
        html = text_of(response)
        assert "No preset &#x27;no-such-preset&#x27;" in field_errors(html, "configs")
        assert "preset:no-such-preset" in field_errors(html, "configs")  # the textarea keeps it
        assert 'value="65"' in field_errors(html, "threshold") and 'value="sim/judge"' in field_errors(html, "judge")
        assert "Choose the file again" in field_errors(html, "tasks")
        assert not Evaluation.objects.exists()

    @pytest.mark.parametrize("threshold", ["150", "-1", "lots"])
    def test_a_bad_threshold_is_shown_next_to_the_threshold(
        self, alice_client: Client, upstream: Any, threshold: str
    ) -> None:
        response = alice_client.post(reverse("evaluation_new"), form_data(threshold=threshold))
        assert response.status_code == 400
        assert "The acceptance threshold must be a score from 0 to 100." in field_errors(text_of(response), "threshold")
        assert not Evaluation.objects.exists()

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("judge", "", "Choose the judge model."),
            ("judge", "sim/nobody", "Unknown model &#x27;sim/nobody&#x27;"),
            ("passes", "11", "Passes must be from 1 to 10"),
            ("concurrency", "0", "Concurrency must be from 1 to 16"),
            ("max_cost", "-2", "The cost limit must be more than $0"),
            ("baseline", "solo:sim/cirrus", "The baseline must be one of the configurations"),
            ("guard_hosts", "https://example.com/x", "is not a domain"),
            ("max_tool_calls", "99", "max tool calls must be between 1 and"),
            ("configs", "", "Choose at least one configuration"),
            ("configs", "solo:sim/nobody", "Unknown model &#x27;sim/nobody&#x27;"),
            ("limit", "0", "The task limit must be a whole number"),
        ],
    )
    def test_each_setting_is_checked_next_to_its_field(
        self, alice_client: Client, upstream: Any, field: str, value: str, message: str
    ) -> None:
        response = alice_client.post(reverse("evaluation_new"), form_data(**{field: value}))
        assert response.status_code == 400
        assert message in field_errors(text_of(response), field)

    def test_no_file_is_asked_for(self, alice_client: Client) -> None:
        response = alice_client.post(reverse("evaluation_new"), form_data(tasks=None))
        assert response.status_code == 400
        assert "Choose a task file" in field_errors(text_of(response), "tasks")

    def test_a_file_over_the_limit_is_refused_with_its_size(
        self, alice_client: Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from chat.forms import evaluations as form_module

        monkeypatch.setattr(form_module, "MAX_TASK_FILE_BYTES", 100)
        response = alice_client.post(reverse("evaluation_new"), form_data())
        assert response.status_code == 400
        block = field_errors(text_of(response), "tasks")
        assert "task files are limited to" in block and "MiB" in block

    def test_tasks_from_my_accepted_and_rejected_answers(
        self, alice: Any, bob: Any, alice_client: Client, upstream: Any
    ) -> None:
        from chat.models import AnswerFeedback

        for user, prompt, accepted in [
            (alice, "How do I descale a kettle?", True),
            (alice, "Which bike lock is best?", False),
            (bob, "Bob's own question", True),
        ]:
            made = make_evaluation(user)
            run = fusion_run(user, answer(made, keys(made)[0], "t1"))
            Turn.objects.filter(pk=run.turn_id).update(prompt=prompt)
            AnswerFeedback.objects.create(user=user, run=run, accepted=accepted, note="" if accepted else "Too vague.")
        Evaluation.objects.all().delete()

        response = alice_client.post(
            reverse("evaluation_new"), form_data(source="feedback", tasks=None, name="Feedback")
        )
        assert response.status_code == 302
        evaluation = Evaluation.objects.get(user=alice)
        assert evaluation.tasks_name == "Accepted and rejected answers"
        assert sorted(t["problem"] for t in evaluation.tasks) == [
            "How do I descale a kettle?",
            "Which bike lock is best?",
        ]
        assert any("Too vague." in c["requirement"] for t in evaluation.tasks for c in t["criteria"])

    def test_without_feedback_it_says_what_to_do(self, alice_client: Client, upstream: Any) -> None:
        response = alice_client.post(reverse("evaluation_new"), form_data(source="feedback", tasks=None))
        assert response.status_code == 400
        assert "no accepted or rejected answers" in field_errors(text_of(response), "source")


# --------------------------------------------------------------------------- the report


class TestDetail:
    def test_before_it_starts_it_shows_the_estimate_and_start(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice, max_cost_usd="2.5")
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "Before you start" in html and "data-ev-estimate" in html
        assert re.search(r"Estimated cost:</span>\s*<strong>\$[\d.]+ – \$[\d.]+</strong>", html)
        assert "Answering $" in html and "judging about $" in html
        assert f'action="{reverse("evaluation_start", args=[evaluation.pk])}"' in html and ">Start</button>" in html
        assert 'name="max_cost"' in html and 'value="2.5"' in html
        assert "Stop</button>" not in html
        assert "No scores yet" in text_of(
            alice_client.get(reverse("evaluation_chart_score_cost", args=[evaluation.pk]))
        )

    def test_an_unpriced_judge_is_warned_about(
        self, alice: Any, alice_client: Client, settings: Any, scripted_thread: Any
    ) -> None:
        scripts = {
            **DEMO_SCRIPTS,
            "sim/judge": {**DEMO_SCRIPTS["sim/judge"], "pricing": {"prompt": None, "completion": None}},
        }
        serve_from(settings, scripted_thread(scripts))
        evaluation = make_evaluation(alice)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "No price is known for" in html and "<code>sim/judge</code>" in html

    def test_a_stopped_evaluation_shows_why_and_resume(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        evaluation.status, evaluation.stopped_reason = (
            EvaluationStatus.STOPPED,
            "The evaluation's cost limit of $1.00 is reached.",
        )
        evaluation.save()
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "The evaluation&#x27;s cost limit of $1.00 is reached." in html
        assert ">Resume</button>" in html and "What is left" in html

    def test_one_that_says_running_but_runs_nowhere_here_can_be_resumed(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        Evaluation.objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.RUNNING)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "this server is not running it" in html and ">Resume</button>" in html

    def test_the_report_table(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        report = evaluation_report(evaluation)
        solo, panel = report["configurations"]
        row = re.search(rf'<tr data-config="{panel["key"]}">(.*?)</tr>', html.split("data-ev-report")[1], re.S)
        assert row
        cells = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row.group(1)))
        assert f"{panel['score']:.1f}" in cells  # the score
        assert f"{panel['ci'][0]:.1f}–{panel['ci'][1]:.1f}" in cells  # its interval
        assert "2 / 0 / 0" in cells  # done / failed / refused
        assert "$0.09" in cells and "$0.0040" in cells  # answering, judging
        assert "1 / 2" in cells  # accepted: 100 on t1 (a pass with a judge failure has no score), 50 on the other
        assert "1.5 s / 1.5 s" in cells  # latency
        assert "+16.7" in cells and "W/T/L 1/0/0" in cells  # t1: 100 against solo's 83.3
        assert f"{solo['name']}: mean, 95 % CI, W/T/L" in html  # the baseline, named
        assert "1 flagged" in cells
        assert "Done" in html and "Stop</button>" not in html and ">Start</button>" not in html
        # The charts, each with alt text naming the configurations.
        for name in ("evaluation_chart_score_cost", "evaluation_chart_domains"):
            img = re.search(rf'<img src="{reverse(name, args=[evaluation.pk])}\?v=\d+"[^>]*alt="([^"]+)"', html)
            assert img and solo["name"] in img.group(1) or name == "evaluation_chart_domains"
        assert "Physics" in html and "Law" in html  # per domain
        assert reverse("evaluation_report_json", args=[evaluation.pk]) in html
        assert reverse("evaluation_report_csv", args=[evaluation.pk]) in html

    def test_the_task_list_links_every_task_and_marks_guard_flags(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        tasks = html.split("data-ev-tasks")[1]
        rows = re.findall(r"<tr( class=\"is-flagged\")? data-task>(.*?)</tr>", tasks, re.S)
        assert len(rows) == 2
        (flagged_t1, t1), (flagged_t2, t2) = rows
        assert flagged_t1 and "⚠ guarded host" in t1 and not flagged_t2
        assert 'href="/evaluations/%d/tasks/t1"' % evaluation.pk in t1
        assert f'href="/evaluations/{evaluation.pk}/tasks/law/t2%3Fx=1%23frag%20ment"' in t2
        assert "refused" in t2
        assert "(100/67)" in t1  # solo's passes
        assert "1 judge failure" in t1  # the panel's c3 in pass 2
        assert "1 answer touched a guarded host" in html

    def test_rubric_sections_get_a_table_of_their_own(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        manifest = {
            "tasks": [
                {
                    "id": "d1",
                    "domain": "Finance",
                    "problem": "Should I pay off my mortgage early?",
                    "rubric": {
                        "id": "r1",
                        "sections": [
                            {
                                "id": "s1",
                                "title": "Accuracy",
                                "criteria": [{"id": "a", "requirement": "Interest", "weight": 1}],
                            },
                            {
                                "id": "s2",
                                "title": "Completeness",
                                "criteria": [{"id": "b", "requirement": "Taxes", "weight": 1}],
                            },
                        ],
                    },
                }
            ]
        }
        evaluation = evaluation_create(
            user=alice,
            tasks=load_tasks(json.dumps(manifest)),
            config_refs=[SOLO],
            judge_model="sim/judge",
            passes=1,
        )
        judge(answer(evaluation, keys(evaluation)[0], "d1"), 0, a=True, b=False)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        sections = html.split("data-ev-sections")[1].split("</table>")[0]
        assert re.search(r"Accuracy</th>\s*<td[^>]*><strong>100.0</strong>", sections)
        assert re.search(r"Completeness</th>\s*<td[^>]*><strong>0.0</strong>", sections)
        drill = text_of(alice_client.get(task_url(evaluation, "d1")))
        assert '<th scope="col">Section</th>' in drill and "Completeness" in drill


class TestProgress:
    def test_it_counts_items_judgements_and_cost_per_configuration(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        solo, panel = keys(evaluation)
        item = answer(evaluation, solo, "t1", cost_usd=Decimal("0.02"))
        judge(item, 0, "0.003", c1=True, c2=True, c3=False)
        answer(evaluation, solo, ODD_ID, "", status="failed", cost_usd=Decimal("0.001"))
        EvalItem.objects.filter(evaluation=evaluation, config_key=panel, task_id="t1").update(status="running")
        Evaluation.objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.RUNNING)

        response = alice_client.get(reverse("evaluation_progress", args=[evaluation.pk]))
        assert response.status_code == 200 and response["Content-Type"] == "application/json"
        assert "no-cache" in response["Cache-Control"]
        data = response.json()
        assert (data["status"], data["running_here"], data["tasks"], data["passes"]) == ("running", False, 2, 2)
        by_key = {c["key"]: c for c in data["configurations"]}
        assert by_key[solo] | {"name": ""} == {
            "key": solo,
            "name": "",
            "answered": 1,
            "failed": 1,
            "refused": 0,
            "running": 0,
            "pending": 0,
            "judged": 1,
            "to_judge": 2,  # one task left to judge, twice
            "cost_usd": 0.024,
            "done": 3,
            "work": 4,
        }
        assert (by_key[panel]["running"], by_key[panel]["pending"], by_key[panel]["judged"]) == (1, 1, 0)
        assert data["cost_usd"] == 0.024

    def test_the_page_polls_while_running(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert f'data-progress-url="{reverse("evaluation_progress", args=[evaluation.pk])}"' in html
        assert 'data-status="pending"' in html and "js/evaluation.js" in html


class TestExports:
    def test_the_json_export_is_the_report(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        response = alice_client.get(reverse("evaluation_report_json", args=[evaluation.pk]))
        assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
        assert response["Content-Disposition"] == f'attachment; filename="evaluation-{evaluation.pk}-report.json"'
        assert json.loads(response.content) == json.loads(json.dumps(evaluation_report(evaluation)))

    def test_the_csv_export_has_a_row_per_configuration_and_task(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        response = alice_client.get(reverse("evaluation_report_csv", args=[evaluation.pk]))
        assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(response.content.decode())))
        assert [(r["config_key"], r["task_id"]) for r in rows] == [
            (k, t) for k in keys(evaluation) for t in ("t1", ODD_ID)
        ]
        assert rows[2]["guard_hosts"] == "huggingface.co" and rows[1]["status"] == "refused"


class TestCharts:
    def svg(self, client: Client, name: str, evaluation: Evaluation) -> ET.Element:
        response = client.get(reverse(name, args=[evaluation.pk]))
        assert response.status_code == 200
        assert response["Content-Type"].startswith("image/svg+xml")
        assert "no-cache" in response["Cache-Control"]
        csp = response["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script" not in csp  # no script at all, inline styles only
        return ET.fromstring(response.content)

    def test_both_charts_are_svg_with_the_configurations_in_the_legend(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        for name in ("evaluation_chart_score_cost", "evaluation_chart_domains"):
            root = self.svg(alice_client, name, evaluation)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
            texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
            assert "sim/atlas (solo)" in texts and "Panel: sim/atlas, sim/borealis" in texts
            assert "No scores yet" not in texts

    def test_an_evaluation_without_scores_says_so(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        for name in ("evaluation_chart_score_cost", "evaluation_chart_domains"):
            texts = " ".join(
                t.text or "" for t in self.svg(alice_client, name, evaluation).iter("{http://www.w3.org/2000/svg}text")
            )
            assert "No scores yet" in texts

    def test_a_name_with_markup_and_dollars_stays_text(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        name = '<script>alert(1)</script> costs $1 or $2 & "more"'
        preset = presets.preset_create(
            user=alice,
            name=name,
            config={
                "members": [{"model": "sim/atlas"}],
                "analyst": {"model": "sim/atlas"},
                "writer": {"model": "sim/atlas"},
            },
        )
        evaluation = make_evaluation(alice, refs=[f"preset:{preset.slug}", SOLO])
        key = keys(evaluation)[0]
        judge(answer(evaluation, key, "t1"), 0, c1=True, c2=False, c3=False)
        for chart in ("evaluation_chart_score_cost", "evaluation_chart_domains"):
            body = alice_client.get(reverse(chart, args=[evaluation.pk])).content.decode()
            assert "<script" not in body
            texts = [t.text or "" for t in ET.fromstring(body).iter("{http://www.w3.org/2000/svg}text")]
            assert any("costs $1 or $2" in t for t in texts)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; costs $1" in html


# --------------------------------------------------------------------------- start and stop


class TestStartStop:
    def test_start_runs_it_in_the_background_and_saves_the_limits(
        self, alice: Any, alice_client: Client, upstream: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        evaluation = make_evaluation(alice)
        started: list[Evaluation] = []
        monkeypatch.setattr(
            "chat.views.evaluations.evaluation_start_in_background",
            lambda *, evaluation: started.append(evaluation) or True,
        )
        response = alice_client.post(
            reverse("evaluation_start", args=[evaluation.pk]), {"max_cost": "3.25", "concurrency": "2"}, follow=True
        )
        assert [e.pk for e in started] == [evaluation.pk]
        evaluation.refresh_from_db()
        assert (evaluation.max_cost_usd, evaluation.concurrency) == (Decimal("3.25"), 2)
        assert "Started." in text_of(response)

    def test_a_bad_limit_starts_nothing_and_says_why(
        self, alice: Any, alice_client: Client, upstream: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        evaluation = make_evaluation(alice)
        monkeypatch.setattr(
            "chat.views.evaluations.evaluation_start_in_background", lambda **kw: pytest.fail("started")
        )
        response = alice_client.post(reverse("evaluation_start", args=[evaluation.pk]), {"max_cost": "-1"}, follow=True)
        assert "The cost limit must be more than $0" in text_of(response)

    def test_a_complete_evaluation_is_not_started_again(
        self, alice: Any, alice_client: Client, upstream: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        monkeypatch.setattr(
            "chat.views.evaluations.evaluation_start_in_background", lambda **kw: pytest.fail("started")
        )
        response = alice_client.post(reverse("evaluation_start", args=[evaluation.pk]), follow=True)
        assert "This evaluation is complete" in text_of(response)

    def test_stop_when_it_is_not_running_here(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        response = alice_client.post(reverse("evaluation_stop", args=[evaluation.pk]), follow=True)
        assert "It is not running on this server" in text_of(response)

    def test_stop_stops_the_runner_of_this_process(
        self, alice: Any, alice_client: Client, upstream: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        evaluation = make_evaluation(alice)
        the_runner = runner.EvaluationRunner(evaluation.pk)
        monkeypatch.setitem(runner._RUNNING, evaluation.pk, the_runner)
        html = text_of(alice_client.get(reverse("evaluation_detail", args=[evaluation.pk])))
        assert "Stop</button>" in html and ">Start</button>" not in html and 'data-running-here="1"' in html
        response = alice_client.post(reverse("evaluation_stop", args=[evaluation.pk]), follow=True)
        assert the_runner._stopping.is_set() and "Stopping" in text_of(response)
        assert alice_client.post(reverse("evaluation_delete", args=[evaluation.pk])).status_code == 302
        assert Evaluation.objects.filter(pk=evaluation.pk).exists()  # not while it runs

    def test_delete_asks_first_then_deletes(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice, name="Old one")
        page = alice_client.get(reverse("evaluation_delete", args=[evaluation.pk]))
        assert "Delete “Old one”?" in text_of(page)
        response = alice_client.post(reverse("evaluation_delete", args=[evaluation.pk]))
        assert response["Location"] == reverse("evaluations")
        assert not Evaluation.objects.filter(pk=evaluation.pk).exists()


@pytest.mark.django_db(transaction=True)
class TestStartRunsIt:
    async def test_start_in_the_servers_loop_answers_and_judges_every_task(
        self, alice: Any, settings: Any, scripted: Any
    ) -> None:
        """The async view starts the runner in the running loop; it runs to a complete report."""
        import asyncio

        from asgiref.sync import sync_to_async
        from django.test import AsyncClient

        serve_from(settings, await scripted(DEMO_SCRIPTS, time_scale=0.01))
        evaluation = await sync_to_async(make_evaluation)(alice)
        client = AsyncClient()
        await client.aforce_login(alice)
        response = await client.post(reverse("evaluation_start", args=[evaluation.pk]))
        assert response.status_code == 302
        for _ in range(600):
            if not runner.evaluation_is_running_here(evaluation.pk):
                break
            await asyncio.sleep(0.05)
        await sync_to_async(evaluation.refresh_from_db)()
        assert evaluation.status == EvaluationStatus.COMPLETE, evaluation.stopped_reason
        report = await sync_to_async(evaluation_report)(evaluation)
        for config in report["configurations"]:
            assert config["completed"] == 2 and config["score"] is not None
        progress = (await client.get(reverse("evaluation_progress", args=[evaluation.pk]))).json()
        assert all(c["judged"] == 4 and c["done"] == c["work"] for c in progress["configurations"])


# --------------------------------------------------------------------------- one task


class TestDrillDown:
    def test_it_shows_the_problem_the_rubric_and_a_verdict_per_pass(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        assert "Why is the sky blue?" in html
        rubric = html.split("data-ev-rubric")[1].split("</table>")[0]
        assert "Mentions Rayleigh scattering" in rubric and "Claims the sky reflects the ocean" in rubric
        assert ">-1" in rubric and "penalty" in rubric
        solo, panel = keys(evaluation)
        solo_part = html.split(f'data-result="{solo}"')[1].split("data-result=")[0]
        rows = dict(re.findall(r'<tr class="[^"]*" data-criterion="(c\d)"[^>]*>(.*?)</tr>', solo_part, re.S))
        assert re.findall(r'data-verdict="(\w+)"', rows["c1"]) == ["met", "met"]
        assert re.findall(r'data-verdict="(\w+)"', rows["c2"]) == ["met", "unmet"]
        assert "Pass 2 on c2." in rows["c2"]  # the judge's reason
        assert "Pass 1</th>" in solo_part and "Pass 2</th>" in solo_part
        assert "100.0" in solo_part and "66.7" in solo_part  # the score per pass

    def test_rows_whose_passes_disagree_are_highlighted(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        solo, panel = keys(evaluation)
        solo_part = html.split(f'data-result="{solo}"')[1].split("data-result=")[0]
        disagree = re.findall(r'<tr class="is-disagree[^"]*" data-criterion="(\w+)" data-disagree>', solo_part)
        assert disagree == ["c2"]
        assert "1 criterion where the passes disagree" in solo_part
        panel_part = html.split(f'data-result="{panel}"')[1]
        # A judge failure is not a disagreement, and it is shown as one.
        assert not re.findall(r"data-disagree>", panel_part)
        c3 = re.search(r'data-criterion="c3"[^>]*>(.*?)</tr>', panel_part, re.S)
        assert c3 and re.findall(r'data-verdict="(\w+)"', c3.group(1)) == ["unmet", "failure"]
        assert "judge failure" in c3.group(1) and "c3: no verdict" in panel_part

    def test_guard_flags_are_prominent(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        _, panel = keys(evaluation)
        panel_part = html.split(f'data-result="{panel}"')[1]
        guard = panel_part.split("data-guard-flags>")[1].split("</div>")[0]
        assert "touched a guarded host" in guard and "huggingface.co" in guard
        assert "https://huggingface.co/datasets/perplexity-ai/draco" in guard and "sim/atlas: web_fetch" in guard
        assert "<a " not in guard  # shown, not linked

    def test_an_odd_task_id_has_its_own_page(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        fill(evaluation)
        response = alice_client.get(task_url(evaluation, ODD_ID))
        assert response.status_code == 200
        html = text_of(response)
        assert "May a landlord keep a deposit" in html and "The model refused to answer." in html
        assert "‹ Previous" in html and "Next ›" not in html and "Task 2 of 2" in html

    def test_model_output_is_rendered_safely(self, alice: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        solo, panel = keys(evaluation)
        item = answer(evaluation, solo, "t1", f"**Bold** answer. {XSS}")
        judge(item, 0, c1=True, c2=False, c3=False)
        EvalJudgement.objects.filter(item=item).update(verdicts={"c1": {"met": True, "reason": XSS}})
        panel_item = answer(evaluation, panel, "t1", f"Fused. {XSS}")
        run = fusion_run(alice, panel_item, member_text=f"Member. {XSS}")
        run.analysis["consensus"] = [XSS]
        run.save()
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        assert "<strong>Bold</strong>" in html  # Markdown is rendered
        assert "<script>alert" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
        assert "javascript:" not in html.lower().replace("[link](javascript:alert(2))", "")
        assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in html
        assert not re.search(r"<img[^>]*onerror", html)

    def test_a_fusion_run_shows_the_panel_and_the_analysis(
        self, alice: Any, alice_client: Client, upstream: Any
    ) -> None:
        evaluation = make_evaluation(alice)
        _, panel = keys(evaluation)
        item = answer(evaluation, panel, "t1", "The fused answer.")
        run = fusion_run(alice, item)
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        panel_part = html.split(f'data-result="{panel}"')[1]
        assert (
            "The fused answer." in panel_part and "Atlas says Rayleigh." in panel_part and "Borealis too." in panel_part
        )
        assert f'id="member-{panel}-0"' in panel_part and f'id="member-{panel}-1"' in panel_part
        assert "Scattering explains the colour" in panel_part and "Colour perception" in panel_part
        assert "Sunsets" in panel_part and "path length" in panel_part
        # "Response B" maps back to sim/borealis through the label map: a tag coloured like its card.
        assert re.search(rf'<a class="mtag hue-1" href="#member-{panel}-1"[^>]*>borealis</a>', panel_part)
        assert f'href="{reverse("conversation", args=[run.conversation_id])}"' in panel_part

    def test_someone_elses_run_is_not_shown(self, alice: Any, bob: Any, alice_client: Client, upstream: Any) -> None:
        evaluation = make_evaluation(alice)
        _, panel = keys(evaluation)
        item = answer(evaluation, panel, "t1", "The fused answer.")
        bobs = fusion_run(bob, item, member_text="Bob's private member answer.")
        html = text_of(alice_client.get(task_url(evaluation, "t1")))
        assert "Bob&#x27;s private member answer." not in html
        assert reverse("conversation", args=[bobs.conversation_id]) not in html
