"""Rubric tasks and the loader for task files: DRACO's manifest, DRACO's dataset rows, simple JSONL.

A file with any problem is refused whole, with every bad row named by where it is (``line 3`` in
JSONL, ``task 3 (id "x")`` in JSON), so the user can fix them all in one go. No Django here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Criterion:
    id: str
    requirement: str
    weight: float  # negative = a penalty: MET lowers the score
    section: str = ""  # the rubric section's title (else its id); "" when the format has none


@dataclass(frozen=True)
class Task:
    id: str
    problem: str
    criteria: tuple[Criterion, ...]
    domain: str = ""
    rubric_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "problem": self.problem,
            "domain": self.domain,
            "rubric_id": self.rubric_id,
            "criteria": [
                {"id": c.id, "requirement": c.requirement, "weight": c.weight, "section": c.section}
                for c in self.criteria
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        return cls(
            id=d["id"],
            problem=d["problem"],
            criteria=tuple(
                Criterion(
                    id=c["id"], requirement=c["requirement"], weight=float(c["weight"]), section=c.get("section", "")
                )
                for c in d["criteria"]
            ),
            domain=d.get("domain", ""),
            rubric_id=d.get("rubric_id", ""),
        )


class TaskFileError(ValueError):
    """A task file that was refused; ``problems`` lists every bad row, each with where it is."""

    def __init__(self, problems: Sequence[str], *, name: str = "") -> None:
        self.problems = list(problems)
        self.name = name
        shown = "; ".join(self.problems[:5]) + ("; …" if len(self.problems) > 5 else "")
        count = f"{len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}"
        super().__init__(f"{name or 'The task file'} was refused ({count}): {shown}")


def load_tasks(data: bytes | str, *, name: str = "") -> list[Task]:
    """The tasks in *data*, its format sniffed from the content; raises TaskFileError."""
    text = _decode(data, name)
    if not text.strip():
        raise TaskFileError(["the file is empty"], name=name)
    rows = _rows(text, name)
    tasks: list[Task] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for where, row in rows:
        if isinstance(row, _Unreadable):
            problems.append(f"{where}: {row.message}")
            continue
        task, row_problems = _parse_row(row)
        problems.extend(f"{where}: {p}" for p in row_problems)
        task_id = row.get("id") if isinstance(row, dict) else None
        if isinstance(task_id, str) and task_id.strip():
            if task_id in first_seen:
                problems.append(f'{where}: duplicate task id "{task_id}" (first at {first_seen[task_id]})')
            else:
                first_seen[task_id] = where
        if task is not None:
            tasks.append(task)
    if not rows:
        problems.append("the file has no tasks")
    if problems:
        raise TaskFileError(problems, name=name)
    return tasks


# --------------------------------------------------------------------------- reading rows


@dataclass(frozen=True)
class _Unreadable:
    message: str


def _decode(data: bytes | str, name: str) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TaskFileError(["the file is not UTF-8 text"], name=name) from None
    return data.removeprefix("\ufeff")


def _rows(text: str, name: str) -> list[tuple[str, Any]]:
    """(where, row) for every row: a JSON manifest's tasks, a JSON array's items, or JSONL lines."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict) and "tasks" in whole:
            if not isinstance(whole["tasks"], list):
                raise TaskFileError(["'tasks' must be a list"], name=name)
            return [(_json_where(i, row), row) for i, row in enumerate(whole["tasks"])]
        if isinstance(whole, list):
            return [(_json_where(i, row), row) for i, row in enumerate(whole)]
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if isinstance(whole, dict) and len(lines) > 1:
        # One pretty-printed object: not JSONL, and not a manifest either.
        raise TaskFileError(["a JSON object must have 'tasks' (the DRACO manifest)"], name=name)
    rows: list[tuple[str, Any]] = []
    for n, line in lines:
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            rows.append((f"line {n}", _Unreadable(f"not valid JSON ({e.msg}, column {e.colno})")))
    return rows


def _json_where(index: int, row: Any) -> str:
    task_id = row.get("id") if isinstance(row, dict) else None
    return f"task {index + 1} (id {json.dumps(task_id)})" if isinstance(task_id, str) else f"task {index + 1}"


# --------------------------------------------------------------------------- parsing rows


def _parse_row(row: Any) -> tuple[Task | None, list[str]]:
    if not isinstance(row, dict):
        return None, ["must be a JSON object"]
    problems: list[str] = []
    for field in ("id", "problem"):
        if not _text(row.get(field)):
            problems.append(f"{field} must be a non-empty string")
    domain = row.get("domain")
    if domain is not None and not isinstance(domain, str):
        problems.append("domain must be a string")

    rubric_id = ""
    if "rubric" in row:  # the DRACO manifest
        criteria, weights, rubric_problems, rubric_id = _parse_rubric(row["rubric"], "rubric")
    elif "answer" in row:  # DRACO's dataset rows: the rubric as a JSON string
        answer = row["answer"]
        if isinstance(answer, str):
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError as e:
                return None, [*problems, f"answer is not valid JSON ({e.msg})"]
        criteria, weights, rubric_problems, rubric_id = _parse_rubric(answer, "answer")
    elif "criteria" in row:  # the simple JSONL
        criteria, weights, rubric_problems = _parse_criteria(row["criteria"], "criteria", section=None)
    else:
        return None, [*problems, "needs criteria (or a DRACO rubric or answer)"]
    problems.extend(rubric_problems)

    ids = [c.id for c in criteria]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f'duplicate criterion id "{dup}"')
    # A weight that did not parse is reported already; it may well have been the positive one.
    if weights and None not in weights and not any(w is not None and w > 0 for w in weights):
        problems.append("needs at least one criterion with a positive weight")
    if problems:
        return None, problems
    task = Task(
        id=row["id"],
        problem=row["problem"],
        criteria=tuple(criteria),
        domain=domain or "",
        rubric_id=rubric_id,
    )
    return task, []


def _parse_rubric(rubric: Any, path: str) -> tuple[list[Criterion], list[float | None], list[str], str]:
    """A DRACO rubric ``{id, sections: [{id, title, criteria}]}``; also a bare list of sections or criteria."""
    rubric_id = ""
    if isinstance(rubric, dict):
        rubric_id = _text(rubric.get("id"))
        if "sections" in rubric:
            sections, path = rubric["sections"], f"{path}.sections"
        elif "criteria" in rubric:
            return (*_parse_criteria(rubric["criteria"], f"{path}.criteria", section=None), rubric_id)
        else:
            return [], [], [f"{path} needs sections"], rubric_id
    elif isinstance(rubric, list) and rubric and all(isinstance(s, dict) and "criteria" in s for s in rubric):
        sections = rubric
    elif isinstance(rubric, list):
        return (*_parse_criteria(rubric, path, section=None), rubric_id)
    else:
        return [], [], [f"{path} must be a rubric object"], rubric_id

    if not isinstance(sections, list) or not sections:
        return [], [], [f"{path} must be a non-empty list"], rubric_id
    criteria: list[Criterion] = []
    weights: list[float | None] = []
    problems: list[str] = []
    for k, section in enumerate(sections):
        if not isinstance(section, dict):
            problems.append(f"{path}[{k}] must be an object")
            continue
        title = _text(section.get("title")) or _text(section.get("id"))
        found, found_weights, found_problems = _parse_criteria(
            section.get("criteria"), f"{path}[{k}].criteria", section=title
        )
        criteria.extend(found)
        weights.extend(found_weights)
        problems.extend(found_problems)
    return criteria, weights, problems, rubric_id


def _parse_criteria(
    raw: Any, path: str, *, section: str | None
) -> tuple[list[Criterion], list[float | None], list[str]]:
    """The criteria at *path*, every weight (None where it did not parse: for the positive-weight
    rule), and the problems.
    *section* None: each criterion may name its own (the simple format)."""
    if not isinstance(raw, list) or not raw:
        return [], [], [f"{path} must be a non-empty list"]
    criteria: list[Criterion] = []
    weights: list[float | None] = []
    problems: list[str] = []
    for j, c in enumerate(raw):
        where = f"{path}[{j}]"
        if not isinstance(c, dict):
            problems.append(f"{where} must be an object")
            continue
        bad = [f"{where}.{f} must be a non-empty string" for f in ("id", "requirement") if not _text(c.get(f))]
        weight = c.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            bad.append(f"{where}.weight must be a number")
            weights.append(None)
        else:
            weights.append(float(weight))
        own_section = c.get("section", "")
        if section is None and not isinstance(own_section, str):
            bad.append(f"{where}.section must be a string")
        if bad:
            problems.extend(bad)
            continue
        criteria.append(
            Criterion(
                id=c["id"],
                requirement=c["requirement"],
                weight=float(c["weight"]),
                section=own_section if section is None else section,
            )
        )
    return criteria, weights, problems


def _text(value: Any) -> str:
    """*value* if it is a string with something in it, else ""."""
    return value if isinstance(value, str) and value.strip() else ""
