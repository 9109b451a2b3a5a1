"""Evaluation core (chat/evals/): the score formula, the task-file loaders and the statistics.
Pure Python: no database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chat.evals import stats
from chat.evals.scoring import section_scores, task_score
from chat.evals.tasks import Criterion, Task, TaskFileError, load_tasks

DRACO_FILE = Path(__file__).resolve().parent / "fixtures" / "draco_tasks.json"  # a copy of ../shared/reference/


def make_task(*criteria: tuple[str, float] | tuple[str, float, str]) -> Task:
    """A task from (id, weight) or (id, weight, section) tuples."""
    return Task(
        id="t",
        problem="p",
        criteria=tuple(Criterion(c[0], f"requirement {c[0]}", c[1], c[2] if len(c) > 2 else "") for c in criteria),
    )


def verdicts(**met: bool | None) -> dict[str, dict[str, Any]]:
    return {cid: {"met": m, "reason": ""} for cid, m in met.items()}


def jsonl(*rows: Any) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


def refused(data: str | bytes) -> list[str]:
    with pytest.raises(TaskFileError) as e:
        load_tasks(data, name="tasks.jsonl")
    assert "tasks.jsonl" in str(e.value)
    return e.value.problems


def simple_row(task_id: str = "t1", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": task_id,
        "problem": "What is the answer?",
        "criteria": [
            {"id": "c1", "requirement": "Says 42", "weight": 3},
            {"id": "c2", "requirement": "Claims 41", "weight": -2},
        ],
    }
    row.update(overrides)
    return row


# --------------------------------------------------------------------------- scoring


class TestTaskScore:
    def test_it_weights_met_criteria_over_the_positive_weights(self) -> None:
        task = make_task(("a", 3), ("b", 1))
        assert task_score(task, verdicts(a=True, b=False)) == pytest.approx(0.75)
        assert task_score(task, verdicts(a=False, b=True)) == pytest.approx(0.25)

    def test_a_met_penalty_lowers_the_score(self) -> None:
        task = make_task(("a", 4), ("pen", -2))
        assert task_score(task, verdicts(a=True, pen=False)) == pytest.approx(1.0)
        assert task_score(task, verdicts(a=True, pen=True)) == pytest.approx(0.5)

    def test_it_clamps_at_zero(self) -> None:
        task = make_task(("a", 2), ("pen", -5))
        assert task_score(task, verdicts(a=False, pen=True)) == 0.0
        assert task_score(task, verdicts(a=True, pen=True)) == 0.0

    def test_it_reaches_one_and_no_more(self) -> None:
        task = make_task(("a", 2), ("b", 5), ("pen", -5))
        assert task_score(task, verdicts(a=True, b=True, pen=False)) == 1.0

    def test_a_missing_verdict_is_a_judge_failure_not_unmet(self) -> None:
        task = make_task(("a", 2), ("b", 2))
        assert task_score(task, verdicts(a=True)) is None

    def test_a_null_or_non_boolean_verdict_gives_no_score(self) -> None:
        task = make_task(("a", 2), ("b", 2))
        assert task_score(task, verdicts(a=True, b=None)) is None
        assert task_score(task, {"a": {"met": True}, "b": {"met": "yes"}}) is None
        assert task_score(task, {"a": {"met": True}, "b": "true"}) is None

    def test_a_task_without_positive_weights_has_no_score(self) -> None:
        assert task_score(make_task(("pen", -1)), verdicts(pen=False)) is None


class TestSectionScores:
    def test_each_section_is_scored_on_its_own_in_rubric_order(self) -> None:
        task = make_task(("a", 2, "Facts"), ("b", 2, "Facts"), ("pen", -1, "Facts"), ("c", 1, "Style"))
        scores = section_scores(task, verdicts(a=True, b=False, pen=True, c=True))
        assert list(scores) == ["Facts", "Style"]
        assert scores["Facts"] == pytest.approx(0.25)
        assert scores["Style"] == pytest.approx(1.0)

    def test_a_missing_verdict_spoils_only_its_section(self) -> None:
        task = make_task(("a", 2, "Facts"), ("c", 1, "Style"))
        assert section_scores(task, verdicts(a=True)) == {"Facts": 1.0, "Style": None}

    def test_a_section_of_only_penalties_has_no_score(self) -> None:
        task = make_task(("a", 2, "Facts"), ("pen", -3, "Errors"))
        assert section_scores(task, verdicts(a=True, pen=True)) == {"Facts": 1.0, "Errors": None}

    def test_a_format_without_sections_gives_one_unnamed_section(self) -> None:
        task = make_task(("a", 1), ("b", 1))
        assert section_scores(task, verdicts(a=True, b=False)) == {"": 0.5}


# --------------------------------------------------------------------------- loaders


MANIFEST = {
    "id": "mini",
    "tasks": [
        {
            "id": "m1",
            "domain": "Law",
            "problem": "Explain estoppel.",
            "rubric": {
                "id": "estoppel",
                "sections": [
                    {
                        "id": "factual-accuracy",
                        "title": "Factual Accuracy",
                        "criteria": [
                            {"id": "defines", "requirement": "Defines it", "weight": 5},
                            {"id": "wrong", "requirement": "Confuses it with laches", "weight": -3},
                        ],
                    },
                    {
                        "id": "citation-quality",
                        "criteria": [{"id": "cites", "requirement": "Cites a case", "weight": 2}],
                    },
                ],
            },
        },
        {
            "id": "m2",
            "problem": "Explain laches.",
            "rubric": {
                "id": "laches",
                "sections": [{"id": "s", "title": "S", "criteria": [simple_row()["criteria"][0]]}],
            },
        },
    ],
}


class TestLoadManifest:
    def test_it_reads_tasks_sections_and_rubric_ids(self) -> None:
        tasks = load_tasks(json.dumps(MANIFEST))
        assert [t.id for t in tasks] == ["m1", "m2"]
        m1 = tasks[0]
        assert (m1.domain, m1.rubric_id, m1.problem) == ("Law", "estoppel", "Explain estoppel.")
        assert m1.criteria == (
            Criterion("defines", "Defines it", 5.0, "Factual Accuracy"),
            Criterion("wrong", "Confuses it with laches", -3.0, "Factual Accuracy"),
            Criterion("cites", "Cites a case", 2.0, "citation-quality"),  # no title: the section's id
        )
        assert tasks[1].domain == ""

    def test_it_reads_the_real_draco_file(self) -> None:
        tasks = load_tasks(DRACO_FILE.read_bytes(), name=DRACO_FILE.name)
        assert len(tasks) == 100
        assert sum(len(t.criteria) for t in tasks) == 3934
        assert len({t.id for t in tasks}) == 100
        sections = {c.section for t in tasks for c in t.criteria}
        assert sections == {
            "Factual Accuracy",
            "Breadth and Depth of Analysis",
            "Presentation Quality",
            "Citation Quality",
        }
        assert all(t.domain and t.rubric_id and t.problem for t in tasks)
        assert any(c.weight < 0 for t in tasks for c in t.criteria)

    def test_a_bad_task_is_named_by_its_index_and_id(self) -> None:
        manifest = json.loads(json.dumps(MANIFEST))
        manifest["tasks"][1]["rubric"]["sections"][0]["criteria"][0]["weight"] = "5"
        assert refused(json.dumps(manifest)) == [
            'task 2 (id "m2"): rubric.sections[0].criteria[0].weight must be a number'
        ]

    def test_tasks_that_are_not_a_list_are_refused(self) -> None:
        assert refused('{"tasks": {"id": "x"}}') == ["'tasks' must be a list"]

    def test_a_manifest_without_tasks_is_refused(self) -> None:
        assert refused('{"tasks": []}') == ["the file has no tasks"]


def draco_row(task_id: str = "d1") -> dict[str, Any]:
    rubric = {
        "id": f"rubric-{task_id}",
        "sections": [
            {"id": "facts", "title": "Facts", "criteria": [{"id": "c1", "requirement": "Says 42", "weight": 10}]},
            {"id": "style", "title": "Style", "criteria": [{"id": "c2", "requirement": "Rambles", "weight": -5}]},
        ],
    }
    return {"id": task_id, "problem": "What is the answer?", "answer": json.dumps(rubric), "domain": "Science"}


class TestLoadDracoRows:
    def test_it_reads_a_json_array_with_the_rubric_as_a_string(self) -> None:
        tasks = load_tasks(json.dumps([draco_row("d1"), draco_row("d2")]))
        assert [t.id for t in tasks] == ["d1", "d2"]
        assert tasks[0].rubric_id == "rubric-d1"
        assert tasks[0].domain == "Science"
        assert tasks[0].criteria == (
            Criterion("c1", "Says 42", 10.0, "Facts"),
            Criterion("c2", "Rambles", -5.0, "Style"),
        )

    def test_it_reads_jsonl(self) -> None:
        tasks = load_tasks(jsonl(draco_row("d1"), "", draco_row("d2")).encode())
        assert [t.id for t in tasks] == ["d1", "d2"]

    def test_an_answer_that_is_not_json_is_refused(self) -> None:
        row = draco_row() | {"answer": "{not json"}
        problems = refused(jsonl(row))
        assert len(problems) == 1 and problems[0].startswith("line 1: answer is not valid JSON")

    def test_a_bad_criterion_inside_the_answer_is_located(self) -> None:
        row = draco_row()
        rubric = json.loads(row["answer"])
        rubric["sections"][0]["criteria"][0]["requirement"] = ""
        row["answer"] = json.dumps(rubric)
        assert refused(jsonl(row)) == ["line 1: answer.sections[0].criteria[0].requirement must be a non-empty string"]


class TestLoadSimpleJsonl:
    def test_it_reads_rows_with_an_optional_domain(self) -> None:
        tasks = load_tasks(jsonl(simple_row("t1", domain="Maths"), simple_row("t2")))
        assert [(t.id, t.domain) for t in tasks] == [("t1", "Maths"), ("t2", "")]
        assert tasks[0].criteria == (
            Criterion("c1", "Says 42", 3.0, ""),
            Criterion("c2", "Claims 41", -2.0, ""),
        )
        assert tasks[0].rubric_id == ""

    def test_a_criterion_may_name_its_section(self) -> None:
        row = simple_row()
        row["criteria"][0]["section"] = "Facts"
        assert load_tasks(jsonl(row))[0].criteria[0].section == "Facts"

    def test_a_byte_order_mark_is_ignored(self) -> None:
        assert len(load_tasks(b"\xef\xbb\xbf" + jsonl(simple_row()).encode())) == 1

    def test_a_json_array_of_simple_rows_is_read_too(self) -> None:
        assert [t.id for t in load_tasks(json.dumps([simple_row("a"), simple_row("b")]))] == ["a", "b"]


class TestBadFiles:
    def test_bad_json_on_a_line_names_the_line(self) -> None:
        problems = refused(jsonl(simple_row("t1"), '{"id": "t2", '))
        assert len(problems) == 1 and problems[0].startswith("line 2: not valid JSON")

    def test_missing_fields_are_each_reported(self) -> None:
        row = {"criteria": [{"weight": 1}]}
        assert refused(jsonl(row)) == [
            "line 1: id must be a non-empty string",
            "line 1: problem must be a non-empty string",
            "line 1: criteria[0].id must be a non-empty string",
            "line 1: criteria[0].requirement must be a non-empty string",
        ]

    def test_a_row_without_criteria_is_refused(self) -> None:
        row = simple_row()
        del row["criteria"]
        assert refused(jsonl(row)) == ["line 1: needs criteria (or a DRACO rubric or answer)"]
        assert refused(jsonl(simple_row(criteria=[]))) == ["line 1: criteria must be a non-empty list"]

    def test_a_row_that_is_not_an_object_is_refused(self) -> None:
        assert refused(jsonl(simple_row(), "[1, 2]")) == ["line 2: must be a JSON object"]

    def test_duplicate_task_ids_are_refused(self) -> None:
        assert refused(jsonl(simple_row("t1"), simple_row("t2"), simple_row("t1"))) == [
            'line 3: duplicate task id "t1" (first at line 1)'
        ]

    def test_duplicate_criterion_ids_are_refused(self) -> None:
        row = simple_row()
        row["criteria"][1]["id"] = "c1"
        assert refused(jsonl(row)) == ['line 1: duplicate criterion id "c1"']

    @pytest.mark.parametrize("weight", ["3", None, True, False, [3]])
    def test_a_weight_that_is_not_a_number_is_refused(self, weight: Any) -> None:
        row = simple_row()
        row["criteria"][0]["weight"] = weight
        assert refused(jsonl(row)) == ["line 1: criteria[0].weight must be a number"]

    def test_a_weight_that_is_not_finite_is_refused(self) -> None:
        line = json.dumps(simple_row()).replace('"weight": 3', '"weight": NaN')
        assert refused(jsonl(line)) == ["line 1: criteria[0].weight must be a number"]

    def test_a_task_without_a_positive_weight_is_refused(self) -> None:
        row = simple_row()
        row["criteria"][0]["weight"] = 0
        assert refused(jsonl(row)) == ["line 1: needs at least one criterion with a positive weight"]

    @pytest.mark.parametrize("data", ["", "  \n\n", b""])
    def test_an_empty_file_is_refused(self, data: str | bytes) -> None:
        assert refused(data) == ["the file is empty"]

    def test_a_file_that_is_not_utf8_is_refused(self) -> None:
        assert refused(b"\xff\xfe\x00{") == ["the file is not UTF-8 text"]

    def test_a_pretty_printed_object_without_tasks_is_refused(self) -> None:
        assert refused(json.dumps(simple_row(), indent=2)) == ["a JSON object must have 'tasks' (the DRACO manifest)"]

    def test_a_mix_of_good_and_bad_rows_is_refused_whole_with_every_bad_line(self) -> None:
        bad_weight = simple_row("t4")
        bad_weight["criteria"][0]["weight"] = "high"
        data = jsonl(simple_row("t1"), "{oops", simple_row("t3"), bad_weight, simple_row("t5", problem=""))
        problems = refused(data)
        assert [p.split(":")[0] for p in problems] == ["line 2", "line 4", "line 5"]
        assert problems[1] == "line 4: criteria[0].weight must be a number"
        assert problems[2] == "line 5: problem must be a non-empty string"

    def test_the_error_message_counts_the_problems(self) -> None:
        with pytest.raises(TaskFileError) as e:
            load_tasks(jsonl("{", "{"), name="mine.jsonl")
        assert str(e.value).startswith("mine.jsonl was refused (2 problems): line 1: not valid JSON")


class TestTaskDict:
    def test_to_dict_and_from_dict_round_trip_through_json(self) -> None:
        task = load_tasks(json.dumps(MANIFEST))[0]
        stored = json.loads(json.dumps(task.to_dict()))
        assert Task.from_dict(stored) == task
        assert stored["criteria"][1] == {
            "id": "wrong",
            "requirement": "Confuses it with laches",
            "weight": -3.0,
            "section": "Factual Accuracy",
        }

    def test_from_dict_fills_optional_fields(self) -> None:
        task = Task.from_dict({"id": "t", "problem": "p", "criteria": [{"id": "c", "requirement": "r", "weight": 1}]})
        assert task == Task("t", "p", (Criterion("c", "r", 1.0, ""),), "", "")


# --------------------------------------------------------------------------- stats


class TestMeanAndPercentile:
    def test_mean(self) -> None:
        assert stats.mean([1.0, 2.0, 6.0]) == 3.0
        assert stats.mean(x for x in [0.5]) == 0.5
        assert stats.mean([]) is None

    def test_percentile_interpolates_linearly(self) -> None:
        xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
        assert stats.percentile(xs, 0) == 1.0
        assert stats.percentile(xs, 50) == pytest.approx(2.5)
        assert stats.percentile(xs, 90) == pytest.approx(3.7)
        assert stats.percentile(xs, 100) == 4.0
        assert stats.percentile([7.0], 90) == 7.0
        assert stats.percentile([], 50) is None

    @pytest.mark.parametrize("q", [-1, 100.5])
    def test_percentile_rejects_q_outside_0_to_100(self, q: float) -> None:
        with pytest.raises(ValueError):
            stats.percentile([1.0], q)


class TestBootstrap:
    XS = [0.1, 0.4, 0.35, 0.8, 0.65, 0.2, 0.9]

    def test_it_is_deterministic_with_a_seed(self) -> None:
        assert stats.bootstrap_ci(self.XS, seed=7) == stats.bootstrap_ci(self.XS, seed=7)
        assert stats.bootstrap_ci(self.XS) == stats.bootstrap_ci(list(self.XS), seed=0)
        assert stats.bootstrap_ci(self.XS, seed=1) != stats.bootstrap_ci(self.XS, seed=2)

    def test_the_interval_holds_the_mean_inside_the_data(self) -> None:
        ci = stats.bootstrap_ci(self.XS)
        assert ci is not None
        low, high = ci
        assert min(self.XS) <= low < stats.mean(self.XS) < high <= max(self.XS)  # type: ignore[operator]

    def test_a_narrower_confidence_gives_a_narrower_interval(self) -> None:
        wide, narrow = stats.bootstrap_ci(self.XS, confidence=0.95), stats.bootstrap_ci(self.XS, confidence=0.5)
        assert wide is not None and narrow is not None
        assert wide[0] <= narrow[0] and narrow[1] <= wide[1]

    def test_one_value_and_none(self) -> None:
        assert stats.bootstrap_ci([0.42]) == (0.42, 0.42)
        assert stats.bootstrap_ci([]) is None
        assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))

    def test_bad_arguments_fail_loudly(self) -> None:
        with pytest.raises(ValueError):
            stats.bootstrap_ci(self.XS, confidence=1.0)
        with pytest.raises(ValueError):
            stats.bootstrap_ci(self.XS, resamples=0)


class TestPairedDifference:
    def test_it_counts_wins_ties_and_losses_over_shared_tasks(self) -> None:
        a = {"t1": 0.8, "t2": 0.5, "t3": 0.3, "t4": 0.9}
        b = {"t1": 0.5, "t2": 0.5, "t3": 0.6, "t5": 0.1}
        diff = stats.paired_difference(a, b)
        assert (diff.n, diff.wins, diff.ties, diff.losses) == (3, 1, 1, 1)
        assert diff.mean == pytest.approx(0.0)
        assert diff.ci == stats.bootstrap_ci([0.8 - 0.5, 0.0, 0.3 - 0.6])

    def test_a_difference_within_the_tie_margin_is_a_tie(self) -> None:
        diff = stats.paired_difference({"a": 0.504, "b": 0.506, "c": 0.496}, {"a": 0.5, "b": 0.5, "c": 0.5})
        assert (diff.wins, diff.ties, diff.losses) == (1, 2, 0)
        wide = stats.paired_difference({"a": 0.6}, {"a": 0.5}, tie=0.2)
        assert (wide.wins, wide.ties, wide.losses, wide.ci) == (0, 1, 0, pytest.approx((0.1, 0.1)))

    def test_no_shared_tasks_gives_no_mean(self) -> None:
        diff = stats.paired_difference({"a": 1.0}, {"b": 1.0})
        assert diff == stats.PairedDiff(n=0, mean=None, ci=None, wins=0, ties=0, losses=0)


class TestJudgeAgreement:
    def test_it_is_the_share_of_criteria_judged_alike_in_every_pass(self) -> None:
        items = [
            [{"a": True, "b": False, "c": True}, {"a": True, "b": True, "c": None}],  # a agrees, b not, c once
            [{"a": False}],  # one pass: not counted
            [{"a": False}, {"a": False}, {"a": False}],  # agrees
        ]
        assert stats.judge_agreement(items) == pytest.approx(2 / 3)

    def test_nothing_judged_twice_gives_none(self) -> None:
        assert stats.judge_agreement([[{"a": True}], [{"a": None}, {"a": True}]]) is None
        assert stats.judge_agreement([]) is None


class TestScoreSpread:
    def test_it_averages_max_minus_min_over_tasks_with_two_passes(self) -> None:
        assert stats.score_spread([[0.5, 0.7, 0.6], [0.9], [0.2, 0.2]]) == pytest.approx(0.1)

    def test_no_task_with_two_passes_gives_none(self) -> None:
        assert stats.score_spread([[0.5], []]) is None


class TestParetoFrontier:
    def test_it_keeps_the_points_nothing_beats_cheapest_first(self) -> None:
        points = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 60.0), (1.0, 50.0), (0.5, 10.0)]
        # (2, 55) loses to (2, 60) on score; (3, 60) loses to (2, 60) on cost; the equal pair both stay.
        assert stats.pareto_frontier(points) == [5, 0, 4, 1]

    def test_a_point_beating_everything_stands_alone(self) -> None:
        assert stats.pareto_frontier([(3.0, 10.0), (1.0, 90.0), (2.0, 50.0)]) == [1]

    def test_empty(self) -> None:
        assert stats.pareto_frontier([]) == []


class TestCostPerAccepted:
    def test_it_divides_everything_spent_by_the_accepted(self) -> None:
        assert stats.cost_per_accepted(3.0, 4) == 0.75

    def test_nothing_accepted_gives_none(self) -> None:
        assert stats.cost_per_accepted(3.0, 0) is None
