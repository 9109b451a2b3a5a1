"""Evaluation pages: the list, the new-evaluation form, the report with its live progress, the
exports and charts, start and stop, and the drill-down into one task.

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
import re
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
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import presets
from chat.errors import NotFound
from chat.evals import charts
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
from chat.fusion.analysis import distinct_model_ids
from chat.models import (
    Conversation,
    EvalItem,
    EvalItemStatus,
    EvalJudgement,
    Evaluation,
    EvaluationStatus,
    MemberResponse,
    Run,
)
from chat.render import render_markdown
from chat.views._common import AuthedRequest, not_found_is_404, sidebar

HUES = 8  # app.css's .hue-0 … .hue-7
_PROVIDER_SEP = re.compile(r"[/:]")
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
    return _svg(charts.score_cost_svg(evaluation_report(evaluation)))


@login_required
@require_GET
@never_cache
@not_found_is_404
def evaluation_chart_domains(request: AuthedRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
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


@login_required
@require_GET
@not_found_is_404
def evaluation_task(request: AuthedRequest, pk: int, task_id: str) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, pk=pk)
    found = next((t for t in evaluation.tasks if t["id"] == task_id), None)
    if found is None:
        raise NotFound("No such task in this evaluation.")
    task = Task.from_dict(found)
    items = {i.config_key: i for i in evaluation.items.filter(task_id=task.id).prefetch_related("judgements")}
    run_ids = [i.run_id for i in items.values() if i.run_id is not None]
    # Only the user's own runs (an item's ids are plain values).
    runs = {r.pk: r for r in Run.objects.filter(pk__in=run_ids, user=request.user).prefetch_related("members")}
    conversation_ids = set(
        Conversation.objects.filter(
            pk__in=[i.conversation_id for i in items.values() if i.conversation_id], user=request.user
        ).values_list("pk", flat=True)
    )
    results = [
        _result(evaluation, task, config, items.get(config["key"]), runs, conversation_ids)
        for config in evaluation.configs
    ]
    return _page(
        request,
        "evaluations/task.html",
        {
            "evaluation": evaluation,
            "task": task,
            "criteria": [{"criterion": c, "penalty": c.weight < 0} for c in task.criteria],
            "has_sections": any(c.section for c in task.criteria),
            "results": results,
            "pass_numbers": range(1, evaluation.passes + 1),
            "position": _position(evaluation, task.id),
        },
    )


def _position(evaluation: Evaluation, task_id: str) -> dict[str, Any]:
    """This task's number and its neighbours' links, for previous / next."""
    ids = [t["id"] for t in evaluation.tasks]
    i = ids.index(task_id)

    def url(j: int) -> str | None:
        return reverse("evaluation_task", args=[evaluation.pk, ids[j]]) if 0 <= j < len(ids) else None

    return {"number": i + 1, "of": len(ids), "previous": url(i - 1), "next": url(i + 1)}


def _result(
    evaluation: Evaluation,
    task: Task,
    config: dict[str, Any],
    item: EvalItem | None,
    runs: dict[Any, Run],
    conversation_ids: set[int],
) -> dict[str, Any]:
    """One configuration's answer to the task, its cost, and the judge's verdicts pass by pass."""
    judgements = {j.pass_index: j for j in item.judgements.all()} if item is not None else {}
    passes = [judgements.get(i) for i in range(evaluation.passes)]
    rows = []
    for criterion in task.criteria:
        cells = [_verdict(j, criterion.id) for j in passes]
        seen = {cell["met"] for cell in cells if isinstance(cell["met"], bool)}
        rows.append(
            {"criterion": criterion, "penalty": criterion.weight < 0, "cells": cells, "disagree": len(seen) > 1}
        )
    scores = [j.score for j in passes if j is not None and j.score is not None]
    run = runs.get(item.run_id) if item is not None and item.run_id is not None else None
    judge_cost = sum((j.cost_usd for j in judgements.values()), Decimal(0))
    return {
        "config": config,
        "item": item,
        "status": item.status if item is not None else EvalItemStatus.PENDING.value,
        "answer_html": _markdown(item.answer) if item is not None and item.answer else None,
        "answer_cost": item.cost_usd if item is not None else Decimal(0),
        "judge_cost": judge_cost,
        "cost": (item.cost_usd if item is not None else Decimal(0)) + judge_cost,
        "latency_s": item.latency_ms / 1000 if item is not None and item.latency_ms is not None else None,
        "guard_flags": list(item.guard_flags or []) if item is not None else [],
        "score": sum(scores) / len(scores) * 100 if scores else None,
        "passes": [
            {
                "number": i + 1,
                "judged": j is not None,
                "score": None if j is None or j.score is None else j.score * 100,
                "failures": list(j.failures or []) if j is not None else [],
            }
            for i, j in enumerate(passes)
        ],
        "rows": rows,
        "disagreements": sum(1 for r in rows if r["disagree"]),
        "fusion": _fusion(run) if run is not None and config.get("kind") != "solo" else None,
        "conversation_url": (
            reverse("conversation", args=[item.conversation_id])
            if item is not None and item.conversation_id in conversation_ids
            else None
        ),
        "conversation_gone": item is not None
        and item.conversation_id is not None
        and item.conversation_id not in conversation_ids,
    }


def _verdict(judgement: EvalJudgement | None, criterion_id: str) -> dict[str, Any]:
    if judgement is None:
        return {"state": "missing", "met": None, "reason": ""}
    verdict = (judgement.verdicts or {}).get(criterion_id)
    met = verdict.get("met") if isinstance(verdict, dict) else None
    reason = str(verdict.get("reason") or "") if isinstance(verdict, dict) else ""
    if not isinstance(met, bool):
        return {"state": "failure", "met": None, "reason": reason}
    return {"state": "met" if met else "unmet", "met": met, "reason": reason}


def _markdown(text: str) -> SafeString:
    # render_markdown escapes every tag the model wrote and sanitises the HTML (chat.render).
    return mark_safe(render_markdown(text))


def _fusion(run: Run) -> dict[str, Any]:
    """A fusion run's panel answers and the analyst's comparison, shaped for the template."""
    members: list[MemberResponse] = list(run.members.all())
    keys = distinct_model_ids([m.model for m in members])
    repeated = {m.model for m in members if sum(1 for o in members if o.model == m.model) > 1}
    shown = []
    for member in members:
        name = member.label or _model_name(member.model)
        shown.append(
            {
                "slot": member.slot,
                "hue": member.slot % HUES,
                "name": f"{name} #{member.slot + 1}" if member.model in repeated and not member.label else name,
                "model": member.model,
                "status": member.status,
                "answer_html": _markdown(member.content) if member.content else None,
                "error": member.error_message,
            }
        )
    slots = {key: m.slot for key, m in zip(keys, members, strict=True)}
    for member in members:
        slots.setdefault(member.model, member.slot)
    by_slot = {m["slot"]: m for m in shown}
    label_map = run.label_map if isinstance(run.label_map, dict) else {}

    def tag(model_id: Any) -> dict[str, Any]:
        text = str(model_id if model_id is not None else "")
        slot = slots.get(text, slots.get(str(label_map.get(text, ""))))
        member = by_slot.get(slot) if slot is not None else None
        if member is None:
            return {"name": _model_name(text) or text, "title": text, "hue": None, "slot": None}
        return {"name": member["name"], "title": member["model"], "hue": member["hue"], "slot": member["slot"]}

    return {
        "members": shown,
        "analysis": _analysis(run.analysis, tag) if isinstance(run.analysis, dict) else None,
        "analysis_error": run.analysis_error,
    }


def _analysis(analysis: dict[str, Any], tag: Any) -> dict[str, Any]:
    """The analyst's JSON as lists and a table: consensus, contradictions (topic × member stance),
    partial coverage and unique insights with the members they came from, blind spots."""

    def items(key: str) -> list[Any]:
        value = analysis.get(key)
        return value if isinstance(value, list) else []

    def text(value: Any) -> str:
        return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)

    def listed(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    contradictions = [c for c in items("contradictions") if isinstance(c, dict)]
    # Columns: every member that takes a stance somewhere, in slot order.
    columns: list[str] = []
    for c in contradictions:
        for stance in listed(c.get("stances")):
            model = text(stance.get("model")) if isinstance(stance, dict) else ""
            if model and model not in columns:
                columns.append(model)
    column_tags = sorted((tag(m) | {"id": m} for m in columns), key=lambda t: 99 if t["slot"] is None else t["slot"])
    table = []
    for c in contradictions:
        stances = {text(s.get("model")): text(s.get("stance")) for s in listed(c.get("stances")) if isinstance(s, dict)}
        table.append({"topic": text(c.get("topic")), "cells": [stances.get(t["id"]) for t in column_tags]})

    insights: dict[str, list[str]] = {}
    for u in items("unique_insights"):
        if isinstance(u, dict):
            insights.setdefault(text(u.get("model")), []).append(text(u.get("insight")))
    partial = [
        {"point": text(p.get("point")), "tags": [tag(text(m)) for m in listed(p.get("models"))]}
        for p in items("partial_coverage")
        if isinstance(p, dict)
    ]
    return {
        "consensus": [text(c) for c in items("consensus")],
        "columns": column_tags,
        "contradictions": table,
        "partial": partial,
        "insights": sorted(
            ({"tag": tag(m), "points": found} for m, found in insights.items()),
            key=lambda g: 99 if g["tag"]["slot"] is None else g["tag"]["slot"],
        ),
        "blind_spots": [text(b) for b in items("blind_spots")],
    }


def _model_name(model_id: str) -> str:
    """``provider/name`` (or ``provider:name``) → ``name``, as the chatroom shows member names."""
    found = _PROVIDER_SEP.search(model_id)
    return (model_id[found.end() :] or model_id) if found else model_id
