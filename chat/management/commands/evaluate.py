"""`manage.py evaluate` — compare configurations on rubric tasks, judged by a model.

    python manage.py evaluate --tasks FILE | --from-feedback --config preset:quality --config solo:MODEL … \\
        --judge MODEL --passes 3 [--limit N] [--concurrency K] [--max-cost USD] [--json OUT]

A progress bar per configuration goes to stderr, the report table to stdout. Running the same
command again resumes the same evaluation (same tasks, configurations, judge and passes) where
it stopped, without paying twice for an answer it has; ``--new`` starts afresh. The evaluation
is also on its page in the app (``/evaluations/<id>``), with the charts and the drill-down.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.evals.configs import DRACO_GUARD_HOSTS, EvalConfigError
from chat.evals.estimate import evaluation_estimate
from chat.evals.evaluations import evaluation_create, evaluation_update_limits
from chat.evals.report import evaluation_report, report_table
from chat.evals.runner import EvaluationBusy, evaluation_run
from chat.evals.from_feedback import feedback_tasks
from chat.evals.tasks import Task, TaskFileError, load_tasks
from chat.models import Evaluation, EvaluationStatus

BAR = 30


class Bars:
    """One progress line per configuration on stderr: answered, failed, judged passes."""

    def __init__(self, evaluation: Evaluation, stream: Any) -> None:
        self.stream = stream
        self.names = {c["key"]: c["name"] for c in evaluation.configs}
        self.total = len(evaluation.tasks)
        self.drawn = 0
        self.last = 0.0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event.get("event") != "done" and (not self.tty or now - self.last < 0.1):
            return  # a log gets a block per finished task; a terminal is redrawn in place
        self.last = now
        self.draw(event["counts"])

    def draw(self, counts: dict[str, dict[str, int]]) -> None:
        lines = []
        for key, name in self.names.items():
            c = counts.get(key, {})
            done = c.get("done", 0)
            filled = int(BAR * done / max(1, self.total))
            lines.append(
                f"{name[:28]:<28} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{self.total} tasks"
                f"  failed {c.get('failed', 0) + c.get('refused', 0)}  judged {c.get('judged', 0)}"
            )
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)


class Command(BaseCommand):
    help = "Evaluate configurations (presets, panels, solo models) on rubric tasks, judged by a model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tasks", help="DRACO manifest, DRACO dataset rows, or simple JSONL.")
        parser.add_argument(
            "--from-feedback",
            action="store_true",
            help="Tasks from the user's accepted and rejected answers in the chatroom (instead of --tasks).",
        )
        parser.add_argument(
            "--config",
            action="append",
            required=True,
            help="preset:<key> | solo:<model> | panel:<m1>,<m2>[;analyst=<m>][;writer=<m>] (repeat).",
        )
        parser.add_argument("--judge", required=True, help="The judge model (any OpenAI-compatible model).")
        parser.add_argument("--passes", type=int, default=3)
        parser.add_argument("--limit", type=int, help="Only the first N tasks.")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--max-cost", help="Stop cleanly when the evaluation has cost this much (USD).")
        parser.add_argument("--threshold", type=float, default=70.0, help="Accepted: a score of at least this.")
        parser.add_argument("--baseline", default="", help="The configuration the others are compared with.")
        parser.add_argument("--guard-host", action="append", default=[], help="Another host to guard (repeat).")
        parser.add_argument("--no-guard", action="store_true", help="Do not guard DRACO's hosts by default.")
        parser.add_argument("--web-tools", action="store_true", help="Give every configuration the web tools.")
        parser.add_argument("--max-tool-calls", type=int, default=4)
        parser.add_argument("--json", dest="json_out", help="Write the whole report as JSON to this file.")
        parser.add_argument("--user", help="Whose runs, keys and limits (default: the only superuser).")
        parser.add_argument("--name", default="")
        parser.add_argument("--new", action="store_true", help="Start a new evaluation even if one can resume.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._user(options.get("user"))
        tasks, tasks_name = self._tasks(user, options)
        guard = [*([] if options["no_guard"] else DRACO_GUARD_HOSTS), *options["guard_host"]]
        research = {"web_tools": bool(options["web_tools"]), "max_tool_calls": options["max_tool_calls"]}
        limit = options.get("limit")
        evaluation = None if options["new"] else self._resumable(user, tasks[:limit] if limit else tasks, options)
        try:
            if evaluation is None:
                evaluation = evaluation_create(
                    user=user,
                    tasks=tasks,
                    tasks_name=tasks_name,
                    config_refs=options["config"],
                    judge_model=options["judge"],
                    name=options["name"],
                    passes=options["passes"],
                    research=research,
                    guard_hosts=guard,
                    accept_threshold=options["threshold"],
                    baseline=options["baseline"],
                    concurrency=options["concurrency"],
                    max_cost_usd=options.get("max_cost"),
                    limit=limit,
                )
                self.stderr.write(f"Evaluation #{evaluation.pk}: {evaluation.name}")
            else:
                evaluation = evaluation_update_limits(
                    evaluation=evaluation, max_cost_usd=options.get("max_cost"), concurrency=options["concurrency"]
                )
                self.stderr.write(f"Resuming evaluation #{evaluation.pk}: {evaluation.name}")
        except EvalConfigError as exc:
            raise CommandError(f"{exc.field or 'settings'}: {exc}") from None
        estimate = evaluation_estimate(evaluation)
        note = f" (no price known for {', '.join(estimate.unpriced)}: counted as free)" if estimate.unpriced else ""
        self.stderr.write(
            f"Estimated cost of what is left: ${estimate.low:.4f}–${estimate.high:.4f} "
            f"(answering ${estimate.answer_low:.4f}–${estimate.answer_high:.4f}, judging ${estimate.judge:.4f}){note}"
        )
        bars = Bars(evaluation, sys.stderr)
        try:
            evaluation = asyncio.run(evaluation_run(evaluation.pk, progress=bars))
        except EvaluationBusy as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(f"Interrupted. Run the same command again to resume evaluation #{evaluation.pk}.")
        report = evaluation_report(evaluation)
        self.stdout.write(report_table(report))
        if options.get("json_out"):
            Path(options["json_out"]).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
            self.stderr.write(f"Report written to {options['json_out']}")
        if evaluation.status != EvaluationStatus.COMPLETE:
            self.stderr.write(f"Stopped: {evaluation.stopped_reason}")

    def _tasks(self, user: User, options: dict[str, Any]) -> tuple[list[Task], str]:
        if options["from_feedback"] == bool(options.get("tasks")):
            raise CommandError("Give --tasks FILE, or --from-feedback for your accepted and rejected answers.")
        if options["from_feedback"]:
            tasks = feedback_tasks(user=user, limit=options.get("limit") or None)
            if not tasks:
                raise CommandError("You have not accepted or rejected any answer in the chatroom yet.")
            return tasks, "accepted and rejected answers"
        path = Path(options["tasks"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
        try:
            return load_tasks(data, name=path.name), path.name
        except TaskFileError as exc:
            raise CommandError(f"{path} was not loaded:\n  " + "\n  ".join(exc.problems)) from None

    def _user(self, name: str | None) -> User:
        if name:
            user = User.objects.filter(username=name, is_active=True).first()
            if user is None:
                raise CommandError(f"No active user {name!r}.")
            return user
        supers = list(User.objects.filter(is_superuser=True, is_active=True)[:2])
        if len(supers) != 1:
            raise CommandError("Name the user whose runs, keys and limits apply: --user NAME.")
        return supers[0]

    def _resumable(self, user: User, tasks: list[Any], options: dict[str, Any]) -> Evaluation | None:
        wanted = [t.to_dict() for t in tasks]
        refs = [r.strip() for r in options["config"]]
        for evaluation in Evaluation.objects.filter(user=user).exclude(status=EvaluationStatus.COMPLETE)[:20]:
            if (
                evaluation.tasks == wanted
                and [c["ref"] for c in evaluation.configs] == refs
                and evaluation.judge_model == options["judge"]
                and evaluation.passes == options["passes"]
            ):
                return evaluation
        return None
