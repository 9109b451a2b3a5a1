"""The report of an evaluation: one dict that the page, the JSON export and ``manage.py evaluate``
all read, and its CSV and terminal-table renderings.

Scores are 0–100 here (the judgements store 0–1); money is float USD rounded to 6 places; None
wherever there is nothing to score. The shape is documented in docs/evaluations.md.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from chat.evals import stats
from chat.evals.tasks import Task
from chat.models import EvalItem, EvalItemStatus, EvalJudgement, Evaluation

NO_DOMAIN = "(none)"


def evaluation_report(evaluation: Evaluation) -> dict[str, Any]:
    tasks = [Task.from_dict(d) for d in evaluation.tasks]
    items: dict[str, dict[str, EvalItem]] = {}
    for item in evaluation.items.prefetch_related("judgements"):
        items.setdefault(item.config_key, {})[item.task_id] = item

    configurations = []
    task_scores: dict[str, dict[str, float]] = {}  # config key → task id → score (0–1)
    for config in evaluation.configs:
        report, task_scores[config["key"]] = _configuration(evaluation, config, tasks, items.get(config["key"], {}))
        configurations.append(report)

    baseline = evaluation.baseline
    for report in configurations:
        if baseline and baseline != report["key"] and baseline in task_scores:
            diff = stats.paired_difference(task_scores[report["key"]], task_scores[baseline])
            report["paired"] = {
                "baseline": baseline,
                "n": diff.n,
                "mean": _pct(diff.mean),
                "ci": _pct_ci(diff.ci),
                "wins": diff.wins,
                "ties": diff.ties,
                "losses": diff.losses,
            }

    return {
        "evaluation": {
            "id": evaluation.pk,
            "name": evaluation.name,
            "status": evaluation.status,
            "stopped_reason": evaluation.stopped_reason,
            "judge": evaluation.judge_model,
            "passes": evaluation.passes,
            "threshold": evaluation.accept_threshold,
            "baseline": evaluation.baseline,
            "guard_hosts": list(evaluation.guard_hosts),
            "tasks": len(tasks),
            "created_at": evaluation.created_at.isoformat(),
        },
        "configurations": configurations,
    }


def _configuration(
    evaluation: Evaluation, config: dict[str, Any], tasks: list[Task], items: dict[str, EvalItem]
) -> tuple[dict[str, Any], dict[str, float]]:
    """One configuration's part of the report, and its task scores (0–1) for the paired difference."""
    judgements = {key: list(item.judgements.all()) for key, item in items.items()}
    scores: dict[str, float] = {}
    scored_passes: list[list[float]] = []  # per task, for the spread
    verdicts: list[list[dict[str, bool | None]]] = []  # per item, for the agreement
    section_values: dict[str, list[float]] = {s: [] for s in _sections(tasks)}
    domain_scores: dict[str, list[float]] = {}
    rows = []
    for task in tasks:
        item = items.get(task.id)
        by_pass = {j.pass_index: j for j in judgements.get(task.id, [])}
        passes = [by_pass.get(i) for i in range(evaluation.passes)]
        pass_scores = [j.score if j is not None else None for j in passes]
        scored = [s for s in pass_scores if s is not None]
        score = stats.mean(scored)
        domain = domain_scores.setdefault(task.domain or NO_DOMAIN, [])
        if score is not None:
            scores[task.id] = score
            domain.append(score)
        scored_passes.append(scored)
        judged = [j for j in passes if j is not None]
        verdicts.append([{cid: _met(v) for cid, v in j.verdicts.items()} for j in judged])
        for j in judged:
            for section, value in (j.section_scores or {}).items():
                if section and value is not None:
                    section_values.setdefault(section, []).append(value)
        all_judgements = judgements.get(task.id, [])
        rows.append(
            {
                "id": task.id,
                "domain": task.domain,
                "score": _pct(score),
                "passes": [_pct(s) for s in pass_scores],
                "status": item.status if item is not None else EvalItemStatus.PENDING.value,
                "cost_usd": _money(_item_cost(item, all_judgements)) if item is not None else 0.0,
                "latency_ms": item.latency_ms if item is not None else None,
                "guard_flags": list(item.guard_flags or []) if item is not None else [],
                "judge_failures": sum(len(j.failures or []) for j in all_judgements),
            }
        )

    answer_cost = sum((item.cost_usd for item in items.values()), Decimal(0))
    judge_cost = sum((j.cost_usd for js in judgements.values() for j in js), Decimal(0))
    total_cost = answer_cost + judge_cost
    latencies = [
        item.latency_ms
        for item in items.values()
        if item.status == EvalItemStatus.ANSWERED and item.latency_ms is not None
    ]
    # A small tolerance: 0.57 × 100 is 56.99999999999999 in floating point, and 57 should accept it.
    accepted = sum(1 for s in scores.values() if s * 100 >= evaluation.accept_threshold - 1e-9)
    per_accepted = stats.cost_per_accepted(float(total_cost), accepted)
    statuses = [row["status"] for row in rows]
    report = {
        "key": config["key"],
        "name": config.get("name") or config["key"],
        "kind": config.get("kind", ""),
        "ref": config.get("ref", ""),
        "score": _pct(stats.mean(scores.values())),
        "ci": _pct_ci(stats.bootstrap_ci(scores.values())),
        "cost_usd": _money(total_cost),
        "answer_cost_usd": _money(answer_cost),
        "judge_cost_usd": _money(judge_cost),
        "completed": statuses.count(EvalItemStatus.ANSWERED),
        "failed": statuses.count(EvalItemStatus.FAILED),
        "refused": statuses.count(EvalItemStatus.REFUSED),
        "pending": statuses.count(EvalItemStatus.PENDING) + statuses.count(EvalItemStatus.RUNNING),
        "latency_ms": {"p50": stats.percentile(latencies, 50), "p90": stats.percentile(latencies, 90)},
        "accepted": accepted,
        "cost_per_accepted_usd": round(per_accepted, 6) if per_accepted is not None else None,
        "domains": [
            {
                "domain": domain,
                "score": _pct(stats.mean(values)),
                "ci": _pct_ci(stats.bootstrap_ci(values)),
                "n": len(values),
            }
            for domain, values in sorted(domain_scores.items(), key=lambda kv: (kv[0] == NO_DOMAIN, kv[0]))
        ],
        "sections": [
            {"section": section, "score": _pct(stats.mean(values)), "n": len(values)}
            for section, values in section_values.items()
        ],
        "paired": None,
        "agreement": stats.judge_agreement(verdicts),
        "spread": _pct(stats.score_spread(scored_passes)),
        "guard_flagged": sum(1 for row in rows if row["guard_flags"]),
        "tasks": rows,
    }
    return report, scores


def _sections(tasks: list[Task]) -> list[str]:
    """The rubric sections' names, in the order they first appear (the simple format has none)."""
    return list(dict.fromkeys(c.section for task in tasks for c in task.criteria if c.section))


def _item_cost(item: EvalItem, judgements: list[EvalJudgement]) -> Decimal:
    return item.cost_usd + sum((j.cost_usd for j in judgements), Decimal(0))


def _met(verdict: Any) -> bool | None:
    met = verdict.get("met") if isinstance(verdict, dict) else None
    return met if isinstance(met, bool) else None


def _pct(x: float | None) -> float | None:
    return x * 100 if x is not None else None


def _pct_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return [ci[0] * 100, ci[1] * 100] if ci is not None else None


def _money(amount: Decimal) -> float:
    return round(float(amount), 6)


# --------------------------------------------------------------------------- renderings

CSV_COLUMNS = [
    "config_key",
    "config_name",
    "task_id",
    "domain",
    "status",
    "score",
    "passes",
    "cost_usd",
    "latency_ms",
    "guard_hosts",
]


def report_csv(report: dict[str, Any]) -> str:
    """One row per configuration × task; the pass scores joined by ";" (empty for a missing pass)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for config in report["configurations"]:
        for task in config["tasks"]:
            hosts = dict.fromkeys(str(flag.get("host", "")) for flag in task["guard_flags"] if isinstance(flag, dict))
            writer.writerow(
                [
                    config["key"],
                    config["name"],
                    task["id"],
                    task["domain"],
                    task["status"],
                    _csv_number(task["score"]),
                    ";".join(_csv_number(s) for s in task["passes"]),
                    f"{task['cost_usd']:.6f}",
                    "" if task["latency_ms"] is None else task["latency_ms"],
                    ";".join(h for h in hosts if h),
                ]
            )
    return out.getvalue()


def report_table(report: dict[str, Any]) -> str:
    """A plain-text table for a terminal: a line per configuration, then judge agreement and spread."""
    ev = report["evaluation"]
    configs = report["configurations"]
    names = {c["key"]: c["name"] for c in configs}
    baseline = names.get(ev["baseline"], "")
    headers = ["configuration", "score", "95% CI", "done/failed/refused", "answer $", "judge $", "total $"]
    headers += ["accepted", "$/accepted", "p50/p90 latency", f"vs {baseline}" if baseline else "vs baseline"]
    rows = []
    for c in configs:
        paired = c["paired"]
        if paired is not None:
            wtl = f"{paired['wins']}/{paired['ties']}/{paired['losses']}"
            vs = f"{_signed(paired['mean'])} {_ci_text(paired['ci'])} W/T/L {wtl}"
        else:
            vs = "(baseline)" if c["key"] == ev["baseline"] else "—"
        latency = c["latency_ms"]
        rows.append(
            [
                c["name"],
                _fixed(c["score"], 1),
                _ci_text(c["ci"]),
                f"{c['completed']}/{c['failed']}/{c['refused']}"
                + (f" ({c['pending']} pending)" if c["pending"] else ""),
                f"${c['answer_cost_usd']:.4f}",
                f"${c['judge_cost_usd']:.4f}",
                f"${c['cost_usd']:.4f}",
                f"{c['accepted']}/{ev['tasks']}",
                "—" if c["cost_per_accepted_usd"] is None else f"${c['cost_per_accepted_usd']:.4f}",
                f"{_seconds(latency['p50'])}/{_seconds(latency['p90'])}",
                vs,
            ]
        )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    out = [
        f"{ev['name']}: {ev['tasks']} tasks, judge {ev['judge']}, {ev['passes']} passes, "
        f"accepted at {ev['threshold']:g}, {ev['status']}"
        + (f" ({ev['stopped_reason']})" if ev["stopped_reason"] else ""),
        "",
        line(headers),
        line(["-" * w for w in widths]),
        *(line(row) for row in rows),
        "",
    ]
    for c in configs:
        agreement = "—" if c["agreement"] is None else f"{c['agreement'] * 100:.1f}%"
        spread = "—" if c["spread"] is None else f"{c['spread']:.1f} points"
        out.append(f"{c['name']}: judge agreement {agreement}, pass spread {spread}")
    return "\n".join(out) + "\n"


def _csv_number(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}".rstrip("0").rstrip(".")


def _fixed(x: float | None, places: int) -> str:
    return "—" if x is None else f"{x:.{places}f}"


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1f}"


def _ci_text(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _seconds(ms: float | None) -> str:
    return "—" if ms is None else f"{ms / 1000:.1f}s"
