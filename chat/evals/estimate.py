"""What an evaluation will cost, shown before it starts: catalogue prices × the rubric sizes.

Answers use the one estimator of the app (``model_catalogue.estimate_panel_cost``; a solo model
is its member alone). A judging pass is one call per batch of criteria, each reading the
problem, the answer and its criteria, and writing about ``VERDICT_TOKENS`` per criterion.
What is already answered or judged is not counted again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chat.evals.judge import DEFAULT_BATCH, SYSTEM_PROMPT
from chat.evals.tasks import Task
from chat.model_catalogue import (
    DEFAULT_COMPLETION_TOKENS,
    call_price,
    estimate_panel_cost,
    model_resolver,
    tokens_of_chars,
    unpriced_models,
)
from chat.models import EvalItem, EvalItemStatus, Evaluation

VERDICT_TOKENS = 60  # {"id", "met", "reason"} with a sentence of reason
ANSWER_CHARS = DEFAULT_COMPLETION_TOKENS * 4  # an answer not written yet


@dataclass
class EvalEstimate:
    answer_low: float = 0.0
    answer_high: float = 0.0
    judge: float = 0.0
    per_config: list[dict[str, Any]] = field(default_factory=list)  # [{key, name, answer_low, answer_high, judge}]
    unpriced: list[str] = field(default_factory=list)  # counted as free: the estimate is low

    @property
    def low(self) -> float:
        return round(self.answer_low + self.judge, 6)

    @property
    def high(self) -> float:
        return round(self.answer_high + self.judge, 6)


def judge_pass_cost(model: str, task: Task, *, answer_chars: int, lookup: Any = None) -> float:
    lookup = lookup or model_resolver()
    row = lookup(model)
    calls = max(1, math.ceil(len(task.criteria) / DEFAULT_BATCH))
    fixed = len(SYSTEM_PROMPT) + len(task.problem) + answer_chars + 200
    criteria_chars = sum(len(c.requirement) + len(c.id) + 30 for c in task.criteria)
    prompt = tokens_of_chars(fixed * calls + criteria_chars)
    completion = VERDICT_TOKENS * len(task.criteria)
    return call_price(row, prompt_tokens=prompt, completion_tokens=completion) or 0.0


def answer_range(config: dict[str, Any], task: Task) -> tuple[float, float]:
    panel = config["config"]
    if config["kind"] == "solo":
        panel = {"members": panel["members"], "research": panel.get("research")}
    return estimate_panel_cost(panel, prompt_tokens=tokens_of_chars(len(task.problem)))


def estimate_for(
    *,
    configs: list[dict[str, Any]],
    tasks: list[Task],
    judge_model: str,
    passes: int,
    evaluation: Evaluation | None = None,
) -> EvalEstimate:
    """The estimate of what is left to do (everything, for an evaluation not yet stored)."""
    done: dict[tuple[str, str], EvalItem] = {}
    judged: dict[int, int] = {}
    if evaluation is not None and evaluation.pk:
        for row in EvalItem.objects.filter(evaluation=evaluation).prefetch_related("judgements"):
            done[(row.config_key, row.task_id)] = row
            judged[row.pk] = len(row.judgements.all())
    lookup = model_resolver()
    result = EvalEstimate()
    unpriced: list[str] = []
    for config in configs:
        low = high = judge = 0.0
        for task in tasks:
            item = done.get((config["key"], task.id))
            answered = item is not None and item.status != EvalItemStatus.PENDING
            if not answered:
                a_low, a_high = answer_range(config, task)
                low, high = low + a_low, high + a_high
            if item is not None and item.status in (EvalItemStatus.FAILED, EvalItemStatus.REFUSED):
                continue  # nothing to judge
            left = passes - (judged.get(item.pk, 0) if item is not None else 0)
            chars = len(item.answer) if item is not None and item.answer else ANSWER_CHARS
            if left > 0:
                judge += left * judge_pass_cost(judge_model, task, answer_chars=chars, lookup=lookup)
        result.per_config.append(
            {"key": config["key"], "name": config["name"], "answer_low": low, "answer_high": high, "judge": judge}
        )
        result.answer_low += low
        result.answer_high += high
        result.judge += judge
        unpriced += unpriced_models(config["config"])
    judge_row = lookup(judge_model)
    if judge_row is None or judge_row.prompt_price is None:
        unpriced.append(judge_model)
    result.unpriced = list(dict.fromkeys(unpriced))
    result.answer_low, result.answer_high, result.judge = (
        round(result.answer_low, 6),
        round(result.answer_high, 6),
        round(result.judge, 6),
    )
    return result


def evaluation_estimate(evaluation: Evaluation) -> EvalEstimate:
    return estimate_for(
        configs=evaluation.configs,
        tasks=[Task.from_dict(t) for t in evaluation.tasks],
        judge_model=evaluation.judge_model,
        passes=evaluation.passes,
        evaluation=evaluation,
    )
