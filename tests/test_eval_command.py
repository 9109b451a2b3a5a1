"""`manage.py evaluate` on DRACO's tasks against the scripted upstream: the report's scores equal
a hand computation of the formula over the verdicts the judge returned; killed mid-run and
started again, it asks no answer twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from chat.models import EvalItem, EvalJudgement, Evaluation

ROOT = Path(__file__).resolve().parent.parent
DRACO = ROOT / "tests" / "fixtures" / "draco_tasks.json"  # a copy of ../shared/reference/draco_tasks.json
PANEL = "panel:sim/atlas,sim/borealis;analyst=sim/analyst;writer=sim/writer"
FAST = {"ttft_ms": 5, "tokens_per_s": 0, "chunk_chars": 400}
SCRIPTS = {m: FAST for m in ("sim/atlas", "sim/borealis", "sim/analyst", "sim/writer", "sim/judge")}


def hand_score(criteria: list[dict[str, Any]], verdicts: dict[str, Any]) -> float:
    """clamp(Σ weight·MET / Σ positive weights, 0, 1), written out again from the issue."""
    met = sum(c["weight"] for c in criteria if verdicts[c["id"]]["met"])
    positive = sum(c["weight"] for c in criteria if c["weight"] > 0)
    return min(1.0, max(0.0, met / positive))


@pytest.mark.django_db(transaction=True)
def test_draco_with_a_limit_reports_the_hand_computed_scores(settings, scripted_thread, admin_user, tmp_path, capsys):
    up = scripted_thread(SCRIPTS, time_scale=0.01)
    settings.OPENROUTER_BASE_URL, settings.OPENROUTER_API_KEY, settings.FUSION_ALLOW_SERVER_KEY = up.base_url, "k", True
    out = tmp_path / "report.json"
    call_command(
        "evaluate",
        "--tasks", str(DRACO), "--config", "solo:sim/atlas", "--config", PANEL,
        "--judge", "sim/judge", "--passes", "2", "--limit", "3", "--json", str(out),
    )  # fmt: skip
    printed, progress = capsys.readouterr()
    assert "sim/atlas (solo)" in printed and "95% CI" in printed and "$/accepted" in printed
    assert "[##############################] 3/3 tasks" in progress and "Estimated cost" in progress

    report = json.loads(out.read_text())
    manifest = {t["id"]: t for t in json.loads(DRACO.read_text())["tasks"]}
    evaluation = Evaluation.objects.get()
    assert [t["id"] for t in evaluation.tasks] == list(manifest)[:3]
    for config in report["configurations"]:
        assert config["completed"] == 3 and config["failed"] == config["refused"] == 0
        assert config["ci"] is not None and config["latency_ms"]["p50"] is not None
        assert config["judge_cost_usd"] > 0 and config["answer_cost_usd"] > 0
        task_scores = []
        for task in config["tasks"]:
            criteria = [c for s in manifest[task["id"]]["rubric"]["sections"] for c in s["criteria"]]
            item = EvalItem.objects.get(evaluation=evaluation, config_key=config["key"], task_id=task["id"])
            passes = [hand_score(criteria, j.verdicts) for j in EvalJudgement.objects.filter(item=item)]
            assert len(passes) == 2 and len(item.judgements.first().verdicts) == len(criteria)
            assert task["passes"] == pytest.approx([100 * p for p in passes])
            assert task["score"] == pytest.approx(100 * sum(passes) / 2)
            task_scores.append(100 * sum(passes) / 2)
        assert config["score"] == pytest.approx(sum(task_scores) / 3)
        accepted = sum(1 for s in task_scores if s >= 70)
        assert config["accepted"] == accepted
        expected = (config["answer_cost_usd"] + config["judge_cost_usd"]) / accepted if accepted else None
        assert config["cost_per_accepted_usd"] == (pytest.approx(expected, abs=1e-6) if expected else None)
    # Each DRACO rubric is judged in batches of 25 criteria per call.
    judge_calls = [r for r in up.requests if r["model"] == "sim/judge"]
    expected_calls = sum(
        -(-len([c for s in manifest[t]["rubric"]["sections"] for c in s["criteria"]]) // 25) for t in list(manifest)[:3]
    )
    assert len(judge_calls) == expected_calls * 2 * 2


@pytest.mark.django_db
def test_a_bad_task_file_is_refused_with_every_bad_line(tmp_path, admin_user):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text(
        '{"id": "a", "problem": "p", "criteria": [{"id": "c", "requirement": "r", "weight": 1}]}\n'
        "not json\n"
        '{"id": "b", "problem": "", "criteria": [{"id": "c", "requirement": "r", "weight": "x"}]}\n'
    )
    with pytest.raises(CommandError) as exc:
        call_command("evaluate", "--tasks", str(bad), "--config", "solo:sim/atlas", "--judge", "sim/judge")
    message = str(exc.value)
    assert "line 2" in message and "line 3" in message and "line 1" not in message
    assert Evaluation.objects.count() == 0


# --------------------------------------------------------------------------- killed and resumed


def _env(db: Path, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=f"sqlite:///{db}",
        OPENROUTER_BASE_URL=base_url,
        OPENROUTER_API_KEY="k",
        FUSION_ALLOW_SERVER_KEY="true",
        DJANGO_SETTINGS_MODULE="fusionsite.settings",
    )
    return env


def _manage(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


def test_killed_mid_run_and_started_again_it_asks_no_answer_twice(scripted_thread, tmp_path):
    # Slow answers (about 0.6 s each, one at a time), so the kill lands mid-run.
    slow = {"ttft_ms": 600, "tokens_per_s": 0, "chunk_chars": 400}
    up = scripted_thread({"sim/atlas": slow, "sim/judge": FAST}, time_scale=1.0)
    db = tmp_path / "db.sqlite3"
    env = _env(db, up.base_url)
    assert _manage(env, "migrate", "-v0").returncode == 0
    created = _manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": "pw-for-the-test-1"},
        "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.org",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    command = [
        sys.executable, "manage.py", "evaluate", "--tasks", str(DRACO), "--config", "solo:sim/atlas",
        "--judge", "sim/judge", "--passes", "1", "--limit", "6", "--concurrency", "1",
    ]  # fmt: skip
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answered = 0
    deadline = time.monotonic() + 60
    while answered < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        if db.exists():
            with sqlite3.connect(db) as conn:
                (answered,) = conn.execute("select count(*) from chat_evalitem where status = 'answered'").fetchone()
    assert answered >= 2, first.stderr.read().decode() if first.poll() is not None else "no progress"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    with sqlite3.connect(db) as conn:
        left = conn.execute("select count(*) from chat_evalitem where status != 'answered'").fetchone()[0]
    assert left > 0  # it really was killed mid-run

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Resuming evaluation #1" in again.stderr

    prompts = [r["messages"][-1]["content"] for r in up.requests if r["model"] == "sim/atlas"]
    problems = [t["problem"] for t in json.loads(DRACO.read_text())["tasks"][:6]]
    assert set(prompts) == set(problems)
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("select status from chat_evalitem")]
        judged = conn.execute("select count(*) from chat_evaljudgement").fetchone()[0]
    assert statuses == ["answered"] * 6 and judged == 6
    # Every answer was asked once, except at most the one in flight at the kill (never answered).
    repeats = len(prompts) - len(set(prompts))
    assert repeats <= 1
    asked_twice = {p for p in prompts if prompts.count(p) > 1}
    assert len(asked_twice) == repeats


def test_the_documented_example_task_file_loads():
    from chat.evals.tasks import load_tasks

    tasks = load_tasks((ROOT / "docs" / "examples" / "tasks.jsonl").read_bytes())
    assert [t.id for t in tasks] == ["sky", "primes"] and any(c.weight < 0 for c in tasks[0].criteria)
