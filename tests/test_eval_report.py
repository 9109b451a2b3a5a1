"""The evaluation report (chat.evals.report): every number checked against a hand computation,
and its CSV and terminal-table renderings."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

import pytest

from chat.evals import stats
from chat.evals.report import evaluation_report, report_csv, report_table
from chat.evals.tasks import Criterion, Task
from chat.models import EvalItem, EvalJudgement, Evaluation

TASKS = [
    Task("t1", "p1", (Criterion("c1", "r", 2, "S1"), Criterion("c2", "r", 1, "S2")), domain="Law"),
    Task("t2", "p2", (Criterion("c1", "r", 1, "S1"),), domain="Law"),
    Task("t3", "p3", (Criterion("c1", "r", 1),)),
    Task("t4", "p4", (Criterion("c1", "r", 1, "S2"),), domain="Med"),
]
CONFIGS = [
    {"key": "solo", "name": "Solo model", "kind": "solo", "ref": "solo:sim/a", "config": {}},
    {"key": "fusion", "name": "Fusion panel", "kind": "preset", "ref": "preset:deep", "config": {}},
]
FLAG = {"host": "huggingface.co", "url": "https://huggingface.co/datasets/x", "where": "source"}


def met(**verdicts: bool | None) -> dict[str, dict[str, Any]]:
    return {cid: {"met": m, "reason": "because"} for cid, m in verdicts.items()}


def add_item(evaluation: Evaluation, key: str, task_id: str, status: str, cost: str, **fields: Any) -> EvalItem:
    return EvalItem.objects.create(
        evaluation=evaluation, config_key=key, task_id=task_id, status=status, cost_usd=Decimal(cost), **fields
    )


def judge(item: EvalItem, pass_index: int, score: float | None, cost: str, **fields: Any) -> EvalJudgement:
    return EvalJudgement.objects.create(item=item, pass_index=pass_index, score=score, cost_usd=Decimal(cost), **fields)


def make_evaluation(user: Any, **overrides: Any) -> Evaluation:
    fields: dict[str, Any] = {
        "user": user,
        "name": "Fusion vs solo",
        "tasks": [t.to_dict() for t in TASKS],
        "configs": CONFIGS,
        "judge_model": "judge/model",
        "passes": 2,
        "guard_hosts": ["huggingface.co"],
        "accept_threshold": 60.0,
        "baseline": "solo",
        "status": "complete",
    }
    fields.update(overrides)
    return Evaluation.objects.create(**fields)


@pytest.fixture
def evaluation(alice: Any) -> Evaluation:
    """Hand-made results. solo: t1 passes 50/70, t2 80/(judge failure), t3 failed, t4 40/(no pass 2).
    fusion: t1 90/90 with a guard flag, t2 refused, t3 never started, t4 running."""
    ev = make_evaluation(alice)

    solo_t1 = add_item(ev, "solo", "t1", "answered", "0.010", latency_ms=1000)
    judge(solo_t1, 0, 0.5, "0.001", verdicts=met(c1=True, c2=False), section_scores={"S1": 0.5, "S2": None})
    judge(solo_t1, 1, 0.7, "0.001", verdicts=met(c1=True, c2=True), section_scores={"S1": 0.7, "S2": 1.0})
    solo_t2 = add_item(ev, "solo", "t2", "answered", "0.020", latency_ms=3000)
    judge(solo_t2, 0, 0.8, "0.002", verdicts=met(c1=True), section_scores={"S1": 0.8})
    judge(solo_t2, 1, None, "0.002", verdicts=met(c1=None), section_scores={"S1": None}, failures=["c1: no verdict"])
    add_item(ev, "solo", "t3", "failed", "0.005", error="upstream 500")
    solo_t4 = add_item(ev, "solo", "t4", "answered", "0.030", latency_ms=5000)
    judge(solo_t4, 0, 0.4, "0.003", verdicts=met(c1=True), section_scores={"S2": 0.4})

    fusion_t1 = add_item(ev, "fusion", "t1", "answered", "0.050", latency_ms=2000, guard_flags=[FLAG, FLAG])
    for i in range(2):
        judge(fusion_t1, i, 0.9, "0.002", verdicts=met(c1=True, c2=True), section_scores={"S1": 1.0, "S2": 0.8})
    add_item(ev, "fusion", "t2", "refused", "0.001", latency_ms=500)
    add_item(ev, "fusion", "t4", "running", "0")
    return ev


def configuration(report: dict[str, Any], key: str) -> dict[str, Any]:
    return next(c for c in report["configurations"] if c["key"] == key)


@pytest.mark.django_db
class TestEvaluationReport:
    def test_the_evaluation_header(self, evaluation: Evaluation) -> None:
        header = evaluation_report(evaluation)["evaluation"]
        assert header == {
            "id": evaluation.pk,
            "name": "Fusion vs solo",
            "status": "complete",
            "stopped_reason": "",
            "judge": "judge/model",
            "passes": 2,
            "threshold": 60.0,
            "baseline": "solo",
            "guard_hosts": ["huggingface.co"],
            "tasks": 4,
            "created_at": evaluation.created_at.isoformat(),
        }

    def test_configurations_keep_their_order_and_identity(self, evaluation: Evaluation) -> None:
        report = evaluation_report(evaluation)
        assert [(c["key"], c["name"], c["kind"], c["ref"]) for c in report["configurations"]] == [
            ("solo", "Solo model", "solo", "solo:sim/a"),
            ("fusion", "Fusion panel", "preset", "preset:deep"),
        ]

    def test_task_rows(self, evaluation: Evaluation) -> None:
        tasks = configuration(evaluation_report(evaluation), "solo")["tasks"]
        assert [t["id"] for t in tasks] == ["t1", "t2", "t3", "t4"]
        t1, t2, t3, t4 = tasks
        assert t1["score"] == pytest.approx(60.0)
        assert t1["passes"] == [pytest.approx(50.0), pytest.approx(70.0)]
        assert (t1["domain"], t1["status"], t1["latency_ms"], t1["judge_failures"]) == ("Law", "answered", 1000, 0)
        assert t1["cost_usd"] == 0.012  # answering 0.010 + judging 2 × 0.001
        assert t2["score"] == pytest.approx(80.0)
        assert t2["passes"] == [pytest.approx(80.0), None]
        assert t2["judge_failures"] == 1
        assert t2["cost_usd"] == 0.024
        assert t3 == {
            "id": "t3",
            "domain": "",
            "score": None,
            "passes": [None, None],
            "status": "failed",
            "cost_usd": 0.005,
            "latency_ms": None,
            "guard_flags": [],
            "judge_failures": 0,
        }
        assert t4["passes"] == [pytest.approx(40.0), None]

    def test_tasks_without_an_item_are_pending(self, evaluation: Evaluation) -> None:
        tasks = configuration(evaluation_report(evaluation), "fusion")["tasks"]
        assert [t["status"] for t in tasks] == ["answered", "refused", "pending", "running"]
        assert tasks[2]["cost_usd"] == 0.0 and tasks[2]["passes"] == [None, None]
        assert tasks[0]["guard_flags"] == [FLAG, FLAG]

    def test_solo_numbers(self, evaluation: Evaluation) -> None:
        solo = configuration(evaluation_report(evaluation), "solo")
        # Task scores 0.6 (mean of 0.5 and 0.7), 0.8 (the failed pass left out), 0.4; t3 has none.
        assert solo["score"] == pytest.approx(60.0)
        ci = stats.bootstrap_ci([0.6, 0.8, 0.4])
        assert ci is not None
        assert solo["ci"] == [pytest.approx(ci[0] * 100), pytest.approx(ci[1] * 100)]
        assert (solo["completed"], solo["failed"], solo["refused"], solo["pending"]) == (3, 1, 0, 0)
        assert solo["answer_cost_usd"] == 0.065  # 0.010 + 0.020 + 0.005 + 0.030
        assert solo["judge_cost_usd"] == 0.009  # 0.002 + 0.004 + 0.003
        assert solo["cost_usd"] == 0.074
        # Answered latencies 1000, 3000, 5000: p90 sits 0.8 of the way from 3000 to 5000.
        assert solo["latency_ms"] == {"p50": pytest.approx(3000), "p90": pytest.approx(4600)}
        assert solo["accepted"] == 2  # t1 at exactly 60 and t2 at 80; t4 at 40 is not
        assert solo["cost_per_accepted_usd"] == 0.037  # everything spent, failures too, / 2
        assert solo["agreement"] == pytest.approx(0.5)  # t1: c1 alike, c2 not; t2's c1 judged once
        assert solo["spread"] == pytest.approx(20.0)  # only t1 has two scored passes: 70 − 50
        assert solo["guard_flagged"] == 0
        assert solo["paired"] is None  # the baseline itself

    def test_solo_domains_and_sections(self, evaluation: Evaluation) -> None:
        solo = configuration(evaluation_report(evaluation), "solo")
        law, med, none = solo["domains"]
        assert (law["domain"], law["score"], law["n"]) == ("Law", pytest.approx(70.0), 2)
        law_ci = stats.bootstrap_ci([0.6, 0.8])
        assert law_ci is not None
        assert law["ci"] == [pytest.approx(law_ci[0] * 100), pytest.approx(law_ci[1] * 100)]
        assert med == {"domain": "Med", "score": pytest.approx(40.0), "ci": [pytest.approx(40.0)] * 2, "n": 1}
        assert none == {"domain": "(none)", "score": None, "ci": None, "n": 0}
        # S1 over tasks and passes: 0.5, 0.7, 0.8 (t2's failed pass skipped); S2: 1.0 and 0.4.
        assert solo["sections"] == [
            {"section": "S1", "score": pytest.approx(200 / 3), "n": 3},
            {"section": "S2", "score": pytest.approx(70.0), "n": 2},
        ]

    def test_fusion_numbers(self, evaluation: Evaluation) -> None:
        fusion = configuration(evaluation_report(evaluation), "fusion")
        assert fusion["score"] == pytest.approx(90.0)
        assert fusion["ci"] == [pytest.approx(90.0), pytest.approx(90.0)]
        assert (fusion["completed"], fusion["failed"], fusion["refused"], fusion["pending"]) == (1, 0, 1, 2)
        assert (fusion["answer_cost_usd"], fusion["judge_cost_usd"], fusion["cost_usd"]) == (0.051, 0.004, 0.055)
        assert fusion["latency_ms"] == {"p50": 2000, "p90": 2000}  # the refused answer's latency is left out
        assert (fusion["accepted"], fusion["cost_per_accepted_usd"]) == (1, 0.055)
        assert fusion["agreement"] == 1.0
        assert fusion["spread"] == 0.0
        assert fusion["guard_flagged"] == 1
        assert [(d["domain"], d["score"], d["n"]) for d in fusion["domains"]] == [
            ("Law", pytest.approx(90.0), 1),
            ("Med", None, 0),
            ("(none)", None, 0),
        ]
        assert fusion["sections"] == [
            {"section": "S1", "score": pytest.approx(100.0), "n": 2},
            {"section": "S2", "score": pytest.approx(80.0), "n": 2},
        ]

    def test_the_paired_difference_against_the_baseline(self, evaluation: Evaluation) -> None:
        paired = configuration(evaluation_report(evaluation), "fusion")["paired"]
        # Only t1 is scored for both: 0.9 − 0.6.
        assert paired == {
            "baseline": "solo",
            "n": 1,
            "mean": pytest.approx(30.0),
            "ci": [pytest.approx(30.0), pytest.approx(30.0)],
            "wins": 1,
            "ties": 0,
            "losses": 0,
        }

    @pytest.mark.parametrize("baseline", ["", "nobody"])
    def test_no_paired_difference_without_a_baseline_config(self, evaluation: Evaluation, baseline: str) -> None:
        evaluation.baseline = baseline
        evaluation.save()
        assert [c["paired"] for c in evaluation_report(evaluation)["configurations"]] == [None, None]

    def test_the_threshold_decides_what_is_accepted(self, evaluation: Evaluation) -> None:
        evaluation.accept_threshold = 85
        evaluation.save()
        report = evaluation_report(evaluation)
        assert configuration(report, "solo")["accepted"] == 0
        assert configuration(report, "solo")["cost_per_accepted_usd"] is None
        assert configuration(report, "fusion")["accepted"] == 1

    def test_the_report_is_json(self, evaluation: Evaluation) -> None:
        report = evaluation_report(evaluation)
        assert json.loads(json.dumps(report)) == report

    def test_an_evaluation_not_started_has_nothing_to_score(self, alice: Any) -> None:
        report = evaluation_report(make_evaluation(alice, status="pending"))
        solo = configuration(report, "solo")
        assert (solo["score"], solo["ci"], solo["agreement"], solo["spread"]) == (None, None, None, None)
        assert (solo["completed"], solo["pending"], solo["accepted"], solo["cost_usd"]) == (0, 4, 0, 0.0)
        assert solo["latency_ms"] == {"p50": None, "p90": None}
        assert configuration(report, "fusion")["paired"] == {
            "baseline": "solo",
            "n": 0,
            "mean": None,
            "ci": None,
            "wins": 0,
            "ties": 0,
            "losses": 0,
        }
        assert "Solo model" in report_table(report)
        assert len(report_csv(report).splitlines()) == 1 + 2 * 4


@pytest.mark.django_db
class TestReportCsv:
    def test_one_row_per_configuration_and_task(self, evaluation: Evaluation) -> None:
        rows = list(csv.DictReader(io.StringIO(report_csv(evaluation_report(evaluation)))))
        assert len(rows) == 8
        assert [(r["config_key"], r["task_id"]) for r in rows[:4]] == [("solo", f"t{i}") for i in range(1, 5)]
        solo_t2 = rows[1]
        assert solo_t2 == {
            "config_key": "solo",
            "config_name": "Solo model",
            "task_id": "t2",
            "domain": "Law",
            "status": "answered",
            "score": "80",
            "passes": "80;",
            "cost_usd": "0.024000",
            "latency_ms": "3000",
            "guard_hosts": "",
        }
        fusion_t1 = rows[4]
        assert (fusion_t1["score"], fusion_t1["passes"], fusion_t1["guard_hosts"]) == ("90", "90;90", "huggingface.co")
        assert (rows[2]["score"], rows[2]["passes"], rows[2]["latency_ms"]) == ("", ";", "")


@pytest.mark.django_db
class TestReportTable:
    def test_it_shows_each_configuration_with_its_numbers(self, evaluation: Evaluation) -> None:
        table = report_table(evaluation_report(evaluation))
        lines = table.splitlines()
        solo = next(line for line in lines if line.startswith("Solo model "))
        fusion = next(line for line in lines if line.startswith("Fusion panel "))
        assert "60.0" in solo and "3/1/0" in solo and "$0.0740" in solo and "$0.0370" in solo
        assert "3.0s/4.6s" in solo and "(baseline)" in solo
        assert "90.0" in fusion and "1/0/1 (2 pending)" in fusion and "$0.0550" in fusion
        assert "+30.0 [30.0, 30.0] W/T/L 1/0/0" in fusion
        assert "vs Solo model" in table
        assert "Solo model: judge agreement 50.0%, pass spread 20.0 points" in lines
        assert "Fusion panel: judge agreement 100.0%, pass spread 0.0 points" in lines

    def test_columns_line_up(self, evaluation: Evaluation) -> None:
        lines = report_table(evaluation_report(evaluation)).splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
        rule, solo, fusion = lines[header + 1 : header + 4]
        assert set(rule) <= {"-", " "}
        assert len(solo) == len(fusion) == len(rule)
