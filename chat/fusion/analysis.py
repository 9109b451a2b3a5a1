"""Labels for the analyst, and validation of the analysis JSON it returns.

The analyst sees the panel answers under neutral labels ("Response A", "Response B", …) in a
fresh random order per call, so that neither position nor a model's name sways it. This module
assigns those labels, and turns the analyst's raw text back into OpenRouter's
``FusionAnalysisResult`` shape with model ids in place of labels:

    consensus:        [str]
    contradictions:   [{topic: str, stances: [{model, stance}]}]
    partial_coverage: [{models: [model], point: str}]
    unique_insights:  [{model, insight}]
    blind_spots:      [str]

Validation is strict about structure (a wrong type raises :class:`AnalysisError`, whose message
is written to be sent back to the model in a repair request) and lenient about wording: fences,
prose around the object, extra keys, and label spellings like ``"A"`` or ``"response a"`` are
accepted. A label that names no answer is dropped with a note instead of failing the analysis.

Pure functions (no calls; ``analyst`` makes them). Imports the standard library only: no
Django, no httpx, no other engine module.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

ANALYSIS_KEYS = ("consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots")


class AnalysisError(ValueError):
    """The analyst's output is not a usable analysis. The message says what to fix."""


@dataclass
class LabelledAnswer:
    label: str  # "Response A"
    model_id: str  # distinct model id, see distinct_model_ids()
    content: str


@dataclass
class ParsedAnalysis:
    analysis: dict[str, Any]  # the five keys, model ids instead of labels
    notes: list[str] = field(default_factory=list)  # what was dropped or repaired on the way


# --------------------------------------------------------------------------- labels


def distinct_model_ids(models: list[str]) -> list[str]:
    """Model ids made unique for the analysis: a repeated model becomes ``model#2``, ``model#3``.

    Computed over the whole panel (not only the survivors) so a slot keeps its id whatever
    happens to the other members.
    """
    seen: dict[str, int] = {}
    ids = []
    for model in models:
        seen[model] = seen.get(model, 0) + 1
        ids.append(model if seen[model] == 1 else f"{model}#{seen[model]}")
    return ids


def assign_labels(answers: list[tuple[str, str]], rng: random.Random) -> list[LabelledAnswer]:
    """Shuffle ``(model_id, content)`` pairs, then label them A, B, C… in the new order."""
    order = list(answers)
    rng.shuffle(order)
    return [
        LabelledAnswer(label=f"Response {chr(ord('A') + i)}", model_id=model_id, content=content)
        for i, (model_id, content) in enumerate(order)
    ]


def label_map_of(labelled: list[LabelledAnswer]) -> dict[str, str]:
    return {a.label: a.model_id for a in labelled}


# Accepts "Response A", "A", "response a", "[Response A]", "**Response A:**", "Response-A".
_LABEL_RE = re.compile(r"^[\W_]*(?:response[\s_-]*)?([a-z])[\W_]*$", re.IGNORECASE)


def resolve_label(raw: str, label_map: dict[str, str]) -> str | None:
    """The model id a label (in any common spelling) stands for, or None if it names no answer."""
    text = raw.strip()
    if text in label_map.values():  # the analyst already wrote a model id
        return text
    match = _LABEL_RE.match(text)
    if not match:
        return None
    return label_map.get(f"Response {match.group(1).upper()}")


# --------------------------------------------------------------------------- parsing

_FENCE_RE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``, ignoring ``` fences and prose before or after it."""
    if not text.strip():
        raise AnalysisError("The output was empty; expected a JSON object.")
    fenced = _FENCE_RE.search(text)
    candidate = fenced.group(1) if fenced else text
    start = candidate.find("{")
    if start < 0:
        raise AnalysisError("The output contains no JSON object (no '{' found).")
    try:
        value, _end = json.JSONDecoder().raw_decode(candidate[start:])
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"The output is not valid JSON: {exc.msg} at character {exc.pos}.") from None
    if not isinstance(value, dict):
        raise AnalysisError("The output must be a JSON object.")
    return value


def _unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    # Some models wrap the result, e.g. {"analysis": {...}} or {"FUSION_ANALYSIS_JSON": {...}}.
    if not any(key in obj for key in ANALYSIS_KEYS) and len(obj) == 1:
        (inner,) = obj.values()
        if isinstance(inner, dict):
            return inner
    return obj


# --------------------------------------------------------------------------- validation


def parse_analysis(text: str, label_map: dict[str, str]) -> ParsedAnalysis:
    """Validate the analyst's raw output and map its labels back to model ids.

    Raises AnalysisError when the output cannot be used; its message is fit for a repair prompt.
    """
    obj = _unwrap(extract_json_object(text))
    missing = [key for key in ANALYSIS_KEYS if key not in obj]
    if missing:
        raise AnalysisError(f"Missing required key(s): {', '.join(missing)}. All five keys are required.")

    notes: list[str] = []
    extra = sorted(set(obj) - set(ANALYSIS_KEYS))
    if extra:
        notes.append(f"Ignored extra key(s): {', '.join(extra)}.")

    def model_of(raw: Any, where: str) -> str | None:
        model = resolve_label(raw, label_map)
        if model is None:
            notes.append(f"Dropped unknown label {raw!r} in {where}.")
        return model

    analysis: dict[str, Any] = {
        "consensus": _strings(obj["consensus"], "consensus"),
        "contradictions": [],
        "partial_coverage": [],
        "unique_insights": [],
        "blind_spots": _strings(obj["blind_spots"], "blind_spots"),
    }

    for i, item in enumerate(_objects(obj["contradictions"], "contradictions")):
        where = f"contradictions[{i}]"
        topic = _string(item, "topic", where)
        stances = []
        for j, stance in enumerate(_objects(_field(item, "stances", where), f"{where}.stances")):
            model = model_of(_string(stance, "model", f"{where}.stances[{j}]"), where)
            if model is not None:
                stances.append({"model": model, "stance": _string(stance, "stance", f"{where}.stances[{j}]")})
        if stances:
            analysis["contradictions"].append({"topic": topic, "stances": stances})

    for i, item in enumerate(_objects(obj["partial_coverage"], "partial_coverage")):
        where = f"partial_coverage[{i}]"
        point = _string(item, "point", where)
        models: list[str] = []
        for raw in _strings(_field(item, "models", where), f"{where}.models"):
            model = model_of(raw, where)
            if model is not None and model not in models:
                models.append(model)
        if models:
            analysis["partial_coverage"].append({"models": models, "point": point})

    for i, item in enumerate(_objects(obj["unique_insights"], "unique_insights")):
        where = f"unique_insights[{i}]"
        model = model_of(_string(item, "model", where), where)
        insight = _string(item, "insight", where)
        if model is not None:
            analysis["unique_insights"].append({"model": model, "insight": insight})

    return ParsedAnalysis(analysis=analysis, notes=notes)


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise AnalysisError(f'{where} is missing "{key}".')
    return obj[key]


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise AnalysisError(f"{where}.{key} must be a string.")
    return value.strip()


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnalysisError(f"{where} must be a list of strings.")
    return [v.strip() for v in value if v.strip()]


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise AnalysisError(f"{where} must be a list of objects.")
    return value
