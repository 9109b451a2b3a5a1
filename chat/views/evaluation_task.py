"""The drill-down into one task of an evaluation: the rubric, then per configuration its answer
(through the project's Markdown renderer: model output is untrusted), the panel and the analysis
for fusion runs, and each criterion's verdict per pass with the judge's reason (passes that
disagree are highlighted). Runs and conversations are read through the user (an item's ids are
plain values).
"""

from __future__ import annotations

import re

import json
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from chat.errors import NotFound
from chat.evals.evaluations import (
    evaluation_get_for_user,
)
from chat.evals.tasks import Task
from chat.fusion.analysis import distinct_model_ids
from chat.models import (
    Conversation,
    EvalItem,
    EvalItemStatus,
    EvalJudgement,
    Evaluation,
    MemberResponse,
    Run,
)
from chat.render import render_markdown
from chat.views._common import AuthedRequest, not_found_is_404

from chat.views.evaluations import _page

HUES = 8  # app.css's .hue-0 … .hue-7
_PROVIDER_SEP = re.compile(r"[/:]")


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
