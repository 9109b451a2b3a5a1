"""The new-evaluation form: where the tasks come from, the configurations, the judge and the limits.

The form reads the task file (chat.evals.tasks.load_tasks, every bad row listed) and collects
text; chat.evals.evaluations.evaluation_create validates the settings and words the messages,
each naming its field (``EvalConfigError.field``), the same as ``manage.py evaluate`` gets them.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms

from chat.evals.configs import DRACO_GUARD_HOSTS
from chat.evals.evaluations import MAX_CONCURRENCY, MAX_PASSES, MAX_TASKS
from chat.evals.tasks import Task, TaskFileError, load_tasks
from chat.forms._common import PlainLabels
from chat.forms.presets import MODEL_ATTRS
from chat.panels import MAX_TOOL_CALLS_LIMIT

MAX_TASK_FILE_BYTES = 20 * 1024 * 1024
SOURCE_FILE = "file"
SOURCE_FEEDBACK = "feedback"
DEFAULT_PASSES = 3
DEFAULT_THRESHOLD = 70
DEFAULT_CONCURRENCY = 4

# EvalConfigError.field → the form field its message is shown next to.
ERROR_FIELDS = {
    "tasks": "tasks",
    "judge": "judge",
    "configs": "configs",
    "baseline": "baseline",
    "passes": "passes",
    "threshold": "threshold",
    "concurrency": "concurrency",
    "max_cost": "max_cost",
    "guard_hosts": "guard_hosts",
    "research": "max_tool_calls",
}


def too_large_message(size: int) -> str:
    return (
        f"The file is {size / 1024 / 1024:.1f} MiB; task files are limited to "
        f"{MAX_TASK_FILE_BYTES // 1024 // 1024} MiB. Split it, or use a task limit on a smaller copy."
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _number(value: str, default: int) -> str | int:
    """The text as typed (the service words a bad number), or the default when left empty."""
    return value.strip() or default


class EvaluationForm(PlainLabels, forms.Form):
    name = forms.CharField(
        max_length=200,
        required=False,
        help_text="Optional; by default it says how many tasks and configurations it compares.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "e.g. Fusion vs solo on DRACO"}),
    )
    source = forms.ChoiceField(
        label="Tasks",
        choices=[
            (SOURCE_FILE, "From a task file"),
            (SOURCE_FEEDBACK, "From my accepted and rejected answers"),
        ],
        initial=SOURCE_FILE,
        widget=forms.RadioSelect,
    )
    tasks = forms.FileField(
        required=False,
        label="Task file",
        help_text=(
            "DRACO's manifest (JSON), DRACO's dataset rows (JSON or JSONL), or JSONL of "
            '{"id", "problem", "domain", "criteria": [{"id", "requirement", "weight"}]}; '
            "a negative weight is a penalty. At most 20 MiB."
        ),
        widget=forms.FileInput(attrs={"accept": ".json,.jsonl,.ndjson,application/json,text/plain"}),
    )
    limit = forms.CharField(
        required=False,
        label="Task limit",
        help_text=f"Optional: only the first N tasks (at most {MAX_TASKS} per evaluation).",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_TASKS, "step": 1, "placeholder": "all"}),
    )
    configs = forms.CharField(
        required=False,
        label="Configurations",
        help_text="One per line: preset:<key>, solo:<model>, or panel:<model>,<model>[;analyst=<model>][;writer=<model>].",
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "class": "mono",
                "spellcheck": "false",
                "autocomplete": "off",
                "placeholder": "preset:quality\nsolo:openai/gpt-4o-mini",
            }
        ),
    )
    judge = forms.CharField(
        max_length=200,
        required=False,
        label="Judge model",
        help_text="Checks every answer against every criterion, at temperature 0.",
        widget=forms.TextInput(attrs=MODEL_ATTRS),
    )
    passes = forms.CharField(
        required=False,
        initial=DEFAULT_PASSES,
        label="Judging passes",
        help_text=f"1–{MAX_PASSES}: more passes show how much the judge disagrees with itself.",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_PASSES, "step": 1}),
    )
    threshold = forms.CharField(
        required=False,
        initial=DEFAULT_THRESHOLD,
        label="Acceptance threshold",
        help_text="An answer scoring at least this (0–100) is accepted.",
        widget=forms.NumberInput(attrs={"min": 0, "max": 100, "step": "any"}),
    )
    baseline = forms.CharField(
        max_length=200,
        required=False,
        label="Baseline",
        help_text="The configuration the others are compared with, by its reference; empty: the first one.",
        widget=forms.TextInput(attrs={"class": "mono", "spellcheck": "false", "autocomplete": "off"}),
    )
    concurrency = forms.CharField(
        required=False,
        initial=DEFAULT_CONCURRENCY,
        label="Concurrency",
        help_text=f"Answers asked at once, 1–{MAX_CONCURRENCY} (your concurrent-run limit still applies).",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_CONCURRENCY, "step": 1}),
    )
    max_cost = forms.CharField(
        required=False,
        label="Cost limit (USD)",
        help_text="Optional: it stops, resumable, before spending more than this.",
        widget=forms.NumberInput(attrs={"min": 0, "step": "any", "placeholder": "no limit"}),
    )
    web_tools = forms.BooleanField(required=False, label="Web search and fetch for every configuration")
    max_tool_calls = forms.CharField(
        required=False,
        label="Max tool calls",
        help_text=f"Per member, 1–{MAX_TOOL_CALLS_LIMIT}.",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_TOOL_CALLS_LIMIT, "step": 1}),
    )
    guard_hosts = forms.CharField(
        required=False,
        initial="\n".join(DRACO_GUARD_HOSTS),
        label="Guarded hosts",
        help_text=(
            "One host per line: excluded from search and blocked from fetching, and any answer that "
            "touched one anyway is flagged. Prefilled with where DRACO is published."
        ),
        widget=forms.Textarea(attrs={"rows": len(DRACO_GUARD_HOSTS), "class": "mono", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_problems: list[str] = []  # every bad row of a refused task file
        self.file_tasks: list[Task] = []

    def clean_limit(self) -> int | None:
        text = self.cleaned_data["limit"].strip()
        if not text:
            return None
        if not text.isdigit() or int(text) < 1:
            raise forms.ValidationError("The task limit must be a whole number of at least 1, or empty for all.")
        return int(text)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("source") != SOURCE_FILE:
            return data
        upload = data.get("tasks")
        if upload is None:
            self.add_error("tasks", "Choose a task file, or take the tasks from your accepted and rejected answers.")
        elif upload.size > MAX_TASK_FILE_BYTES:
            self.add_error("tasks", too_large_message(upload.size))
        else:
            try:
                self.file_tasks = load_tasks(upload.read(), name=upload.name)
            except TaskFileError as exc:
                self.task_problems = exc.problems
                count = len(exc.problems)
                self.add_error(
                    "tasks",
                    f"“{upload.name}” was refused: {count} problem{'' if count == 1 else 's'}. "
                    "Fix every one listed and choose the file again.",
                )
        return data

    @property
    def tasks_name(self) -> str:
        upload = self.cleaned_data.get("tasks")
        return upload.name if upload is not None else ""

    def create_kwargs(self) -> dict[str, Any]:
        """evaluation_create's settings, from a valid form (the tasks and the user aside)."""
        d = self.cleaned_data
        return {
            "name": d["name"],
            "config_refs": _lines(d["configs"]),
            "judge_model": d["judge"],
            "passes": _number(d["passes"], DEFAULT_PASSES),
            "research": {"web_tools": d["web_tools"], "max_tool_calls": d["max_tool_calls"].strip() or None},
            "guard_hosts": [h for h in re.split(r"[\s,]+", d["guard_hosts"] or "") if h],
            "accept_threshold": _number(d["threshold"], DEFAULT_THRESHOLD),
            "baseline": d["baseline"],
            "concurrency": _number(d["concurrency"], DEFAULT_CONCURRENCY),
            "max_cost_usd": d["max_cost"].strip() or None,
        }
