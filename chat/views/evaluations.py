"""Evaluation pages: the list, the new-evaluation form, the report with its live progress, the
exports and charts, start and stop (the drill-down into one task: chat/views/evaluation_task.py).

Views parse, authorize (every evaluation is fetched through ``evaluation_get_for_user``: someone
else's is the same 404 as a missing one), call one service in chat/evals/ and respond. Everything
a model wrote (answers, the analyst's comparison, the judge's reasons) is untrusted: answers go
through the project's Markdown renderer, the rest is only ever escaped by the templates.

Start and stop are async views: the runner lives in this server's event loop
(``evaluation_start_in_background`` needs the running loop, and its stop sets an asyncio event,
which must be set from that loop's thread).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db.models import Count, Sum
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import presets
from chat.errors import NotFound
from chat.evals.configs import EvalConfigError
from chat.evals.estimate import evaluation_estimate
from chat.evals.evaluations import (
    evaluation_create,
    evaluation_delete,
    evaluation_get_for_user,
    evaluation_list_for_user,
    evaluation_update_limits,
)
from chat.evals.from_feedback import feedback_tasks
from chat.evals.report import NO_DOMAIN, evaluation_report, report_csv
from chat.evals.runner import evaluation_is_running_here, evaluation_start_in_background, evaluation_stop
from chat.evals.tasks import Task
from chat.forms.evaluations import ERROR_FIELDS, SOURCE_FEEDBACK, EvaluationForm
from chat.models import (
    EvalItem,
    EvalItemStatus,
    EvalJudgement,
    Evaluation,
    EvaluationStatus,
)
from chat.views._common import AuthedRequest, not_found_is_404, sidebar

FEEDBACK_TASKS_NAME = "Accepted and rejected answers"


class TaskIdConverter:
    """A task id in a URL: any characters (``/`` too), as task files may use them."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


def _page(request: AuthedRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render(request, template, {**sidebar(request), **context}, status=status)


def _download(body: str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# matplotlib styles the chart with inline styles; no script may run in it, even opened on its own.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def _svg(body: str) -> HttpResponse:
    response = HttpResponse(body, content_type="image/svg+xml; charset=utf-8")
    response["Content-Disposition"] = "inline"
    response["Content-Security-Policy"] = SVG_CSP  # the app's policy would block those styles
    return response


# --------------------------------------------------------------------------- list and new


@login_required
@require_GET
def evaluation_list(request: AuthedRequest) -> HttpResponse:
    # The tasks themselves can be megabytes: count the items instead (one per task × configuration).
    rows = evaluation_list_for_user(user=request.user).defer("tasks", "research").annotate(items_n=Count("items"))
    evaluations = [{"evaluation": e, "tasks": e.items_n // max(1, len(e.configs))} for e in rows]
    return _page(request, "evaluations/list.html", {"evaluations": evaluations})


def _config_hints(request: AuthedRequest) -> dict[str, Any]:
    return {
        "builtins": presets.builtin_presets(),
        "own_presets": presets.preset_list_for_user(user=request.user),
    }


@login_required
@require_http_methods(["GET", "POST"])
def evaluation_new(request: AuthedRequest) -> HttpResponse:
    form = EvaluationForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        from_feedback = form.cleaned_data["source"] == SOURCE_FEEDBACK
        try:
            if from_feedback:  # the limit is applied as they are picked, newest first
                tasks = _feedback_tasks(request, form.cleaned_data["limit"])
                tasks_name, limit = FEEDBACK_TASKS_NAME, None
            else:
                tasks, tasks_name, limit = form.file_tasks, form.tasks_name, form.cleaned_data["limit"]
            evaluation = evaluation_create(
                user=request.user, tasks=tasks, tasks_name=tasks_name, limit=limit, **form.create_kwargs()
            )
        except EvalConfigError as exc:
            field = ERROR_FIELDS.get(exc.field)
            if field == "tasks" and from_feedback:
                field = "source"
            form.add_error(field, str(exc))
        else:
            messages.success(request, f"Created “{evaluation.name}”. Check the estimate, then start it.")
            return redirect("evaluation_detail", pk=evaluation.pk)
    context = {"form": form, **_config_hints(request)}
    return _page(request, "evaluations/new.html", context, status=400 if form.errors else 200)


def _feedback_tasks(request: AuthedRequest, limit: int | None) -> list[Task]:
    """Tasks made from the user's accepted and rejected answers in the chatroom."""
    tasks = feedback_tasks(user=request.user, **({"limit": limit} if limit else {}))
    if not tasks:
        raise EvalConfigError(
            "You have no accepted or rejected answers to make tasks from yet: accept or reject fused "
            "answers in the chatroom first, or use a task file.",
            field="tasks",
        )
    return tasks


# --------------------------------------------------------------------------- the report


@login_required
@require_GET
@not_found_is_404
def evaluation_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    report = evaluation_report(evaluation)
    estimate = evaluation_estimate(evaluation) if evaluation.status != EvaluationStatus.COMPLETE else None
    progress = _progress(evaluation)
    return _page(
        request,
        "evaluations/detail.html",
        {
            "evaluation": evaluation,
            "report": report,
            "page": _report_page(evaluation, report),
            "progress": progress,
            "running_here": progress["running_here"],
            "estimate": estimate,
            "max_cost_text": ""
            if evaluation.max_cost_usd is None
            else format(evaluation.max_cost_usd.normalize(), "f"),
            # In the charts' URLs: a new image once anything was answered or judged.
            "chart_version": sum(c["done"] for c in progress["configurations"]),
        },
    )


def _report_page(evaluation: Evaluation, report: dict[str, Any]) -> dict[str, Any]:
    """What the report's tables need beyond the report dict: domain, section and task rows
    with a cell per configuration, in the report's order."""
    configs = report["configurations"]
    names = {c["key"]: c["name"] for c in configs}
    for c in configs:
        latency = c["latency_ms"]
        c["latency_s"] = {q: None if latency[q] is None else latency[q] / 1000 for q in ("p50", "p90")}
        c["agreement_pct"] = None if c["agreement"] is None else c["agreement"] * 100

    domains = list(dict.fromkeys(d["domain"] for c in configs for d in c["domains"] if d["n"]))
    sections = list(dict.fromkeys(s["section"] for c in configs for s in c["sections"]))
    by_domain = [{row["domain"]: row for row in c["domains"]} for c in configs]
    by_section = [{row["section"]: row for row in c["sections"]} for c in configs]
    task_rows = []
    for i, task in enumerate(evaluation.tasks):
        cells = [c["tasks"][i] for c in configs]
        task_rows.append(
            {
                "id": task["id"],
                "domain": task.get("domain", ""),
                "url": reverse("evaluation_task", args=[evaluation.pk, task["id"]]),
                "cells": cells,
                "flagged": any(cell["guard_flags"] for cell in cells),
            }
        )
    return {
        "baseline_name": names.get(evaluation.baseline, ""),
        "domains": [
            {"domain": d, "label": "No domain" if d == NO_DOMAIN else d, "cells": [m.get(d) for m in by_domain]}
            for d in domains
        ],
        "sections": [{"section": s, "cells": [m.get(s) for m in by_section]} for s in sections],
        "tasks": task_rows,
        "scored": any(c["score"] is not None for c in configs),
        "flagged": sum(c["guard_flagged"] for c in configs),
    }


@login_required
@require_GET
@never_cache
@not_found_is_404
def evaluation_progress(request: AuthedRequest, pk: int) -> JsonResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    return JsonResponse(_progress(evaluation))


def _progress(evaluation: Evaluation) -> dict[str, Any]:
    """Counts per configuration from the database: items by status, judged passes, cost so far
    (answers as recorded when each finished, and every judging pass)."""
    items: dict[str, dict[str, Any]] = {}
    for row in (
        EvalItem.objects.filter(evaluation=evaluation)
        .values("config_key", "status")
        .annotate(n=Count("pk"), cost=Sum("cost_usd"))
    ):
        entry = items.setdefault(row["config_key"], {"cost": Decimal(0)})
        entry[row["status"]] = row["n"]
        entry["cost"] += row["cost"] or Decimal(0)
    judged: dict[str, dict[str, Any]] = {
        row["item__config_key"]: dict(row)
        for row in EvalJudgement.objects.filter(item__evaluation=evaluation)
        .values("item__config_key")
        .annotate(n=Count("pk"), cost=Sum("cost_usd"))
    }
    tasks = len(evaluation.tasks)
    configurations = []
    for config in evaluation.configs:
        counts = items.get(config["key"], {"cost": Decimal(0)})
        answered, failed, refused = (counts.get(s, 0) for s in ("answered", "failed", "refused"))
        running = counts.get(EvalItemStatus.RUNNING, 0)
        pending = max(0, tasks - answered - failed - refused - running)
        passes = judged.get(config["key"], {})
        judged_n = passes.get("n", 0)
        to_judge = (tasks - failed - refused) * evaluation.passes
        configurations.append(
            {
                "key": config["key"],
                "name": config["name"],
                "answered": answered,
                "failed": failed,
                "refused": refused,
                "running": running,
                "pending": pending,
                "judged": judged_n,
                "to_judge": to_judge,
                "cost_usd": round(float(counts["cost"] + (passes.get("cost") or Decimal(0))), 6),
                "done": answered + failed + refused + judged_n,
                "work": tasks + to_judge,
            }
        )
    return {
        "status": evaluation.status,
        "stopped_reason": evaluation.stopped_reason,
        "running_here": evaluation_is_running_here(evaluation.pk),
        "tasks": tasks,
        "passes": evaluation.passes,
        "configurations": configurations,
        "cost_usd": round(sum(c["cost_usd"] for c in configurations), 6),
    }


@login_required
@require_GET
@not_found_is_404
def evaluation_report_json(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    body = json.dumps(evaluation_report(evaluation), ensure_ascii=False, indent=2)
    return _download(body, content_type="application/json; charset=utf-8", filename=f"evaluation-{pk}-report.json")


@login_required
@require_GET
@not_found_is_404
def evaluation_report_csv(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    body = report_csv(evaluation_report(evaluation))
    return _download(body, content_type="text/csv; charset=utf-8", filename=f"evaluation-{pk}-report.csv")


@login_required
@require_GET
@never_cache
@not_found_is_404
def evaluation_chart_score_cost(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    from chat.evals import charts  # matplotlib and numpy: ~40 MB no Daphne should carry until asked

    return _svg(charts.score_cost_svg(evaluation_report(evaluation)))


@login_required
@require_GET
@never_cache
@not_found_is_404
def evaluation_chart_domains(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    from chat.evals import charts

    return _svg(charts.domain_bars_svg(evaluation_report(evaluation)))


# --------------------------------------------------------------------------- start, stop, delete


async def _evaluation_for(request: HttpRequest, pk: int) -> Evaluation:
    user = cast(User, await request.auser())  # behind login_required
    try:
        return await sync_to_async(evaluation_get_for_user)(user=user, pk=pk)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


@login_required
@require_POST
async def evaluation_start(request: HttpRequest, pk: int) -> HttpResponse:
    """Start, or resume one that stopped (or whose process died while it said "running").
    The cost limit and the concurrency from the form are saved first."""
    evaluation = await _evaluation_for(request, pk)
    if "max_cost" in request.POST or "concurrency" in request.POST:
        try:
            evaluation = await sync_to_async(evaluation_update_limits)(
                evaluation=evaluation,
                max_cost_usd=request.POST.get("max_cost", "").strip() or None,
                concurrency=request.POST.get("concurrency", "").strip() or None,
            )
        except EvalConfigError as exc:
            messages.error(request, str(exc))
            return redirect("evaluation_detail", pk=evaluation.pk)
    if evaluation.status == EvaluationStatus.COMPLETE:
        messages.info(request, "This evaluation is complete: every task is answered and judged.")
    elif evaluation_start_in_background(evaluation=evaluation):
        resumed = evaluation.status != EvaluationStatus.PENDING
        messages.success(request, "Resumed: what is already answered or judged is kept." if resumed else "Started.")
    else:
        messages.info(request, "It is already running.")
    return redirect("evaluation_detail", pk=evaluation.pk)


@login_required
@require_POST
async def evaluation_stop_view(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = await _evaluation_for(request, pk)
    if evaluation_stop(evaluation=evaluation):
        messages.success(request, "Stopping: answers in progress are cancelled. Resume it any time.")
    else:
        messages.info(request, "It is not running on this server, so there is nothing to stop.")
    return redirect("evaluation_detail", pk=evaluation.pk)


@login_required
@require_http_methods(["GET", "POST"])
@not_found_is_404
def evaluation_delete_view(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    running = evaluation_is_running_here(evaluation.pk)
    if request.method == "POST":
        if running:
            messages.error(request, "Stop the evaluation before deleting it.")
            return redirect("evaluation_detail", pk=evaluation.pk)
        evaluation_delete(evaluation=evaluation)
        messages.success(request, f"Deleted “{evaluation.name}”. Its answers' conversations are still in your list.")
        return redirect("evaluations")
    return _page(request, "evaluations/confirm_delete.html", {"evaluation": evaluation, "running_here": running})


# --------------------------------------------------------------------------- one task
