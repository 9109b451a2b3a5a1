"""Panels as stored and sent by the browser ⇄ the engine's ModelSpec, with validation."""
from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from django.conf import settings

from chat.fusion.types import ModelSpec

MAX_MEMBERS = 8
MAX_TOKENS_LIMIT = 200_000
REASONING_EFFORTS = {"max", "xhigh", "high", "medium", "low", "minimal", "none"}
# Provider-prefixed or OpenRouter ids: letters, digits and - _ . / : ~ @ +
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9~][A-Za-z0-9_.\-/:@+~]{0,199}$")


class PanelError(ValueError):
    """A panel a user wrote that cannot run; the message says what to fix."""


def default_panel() -> dict[str, Any]:
    return {
        "members": [{"model": m} for m in settings.FUSION_DEFAULT_PANEL],
        "analyst": {"model": settings.FUSION_DEFAULT_ANALYST},
        "writer": {"model": settings.FUSION_DEFAULT_WRITER},
        "fallback_analyst": None,
        "fallback_writer": None,
    }


def _spec(data: Any, where: str) -> ModelSpec:
    if isinstance(data, str):
        data = {"model": data}
    if not isinstance(data, dict):
        raise PanelError(f"{where}: expected a model id.")
    model = str(data.get("model") or "").strip()
    if not model:
        raise PanelError(f"{where}: a model id is required.")
    if not MODEL_ID_RE.match(model):
        raise PanelError(f"{where}: {model[:60]!r} is not a valid model id.")
    temperature = data.get("temperature")
    if temperature in ("", None):
        temperature = None
    else:
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            raise PanelError(f"{where}: temperature must be a number between 0 and 2.") from None
        if not 0 <= temperature <= 2:
            raise PanelError(f"{where}: temperature must be between 0 and 2 (got {temperature:g}).")
    max_tokens = data.get("max_tokens")
    if max_tokens in ("", None):
        max_tokens = None
    else:
        try:
            max_tokens = int(max_tokens)
        except (TypeError, ValueError):
            raise PanelError(f"{where}: max tokens must be a whole number.") from None
        if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise PanelError(f"{where}: max tokens must be between 1 and {MAX_TOKENS_LIMIT}.")
    effort = data.get("reasoning_effort") or None
    if effort is not None and effort not in REASONING_EFFORTS:
        raise PanelError(f"{where}: reasoning effort must be one of {', '.join(sorted(REASONING_EFFORTS))}.")
    system_prompt = data.get("system_prompt") or None
    if system_prompt is not None and (not isinstance(system_prompt, str) or len(system_prompt) > 20_000):
        raise PanelError(f"{where}: the system prompt must be text of at most 20000 characters.")
    label = data.get("label") or None
    if label is not None:
        label = str(label)[:100]
    return ModelSpec(model, temperature, max_tokens, effort, system_prompt, label)


def parse_panel(data: Any) -> dict[str, Any]:
    """Validate a panel dict; return it normalised (what gets stored and run)."""
    if not isinstance(data, dict):
        raise PanelError("The panel must be an object with members, analyst and writer.")
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise PanelError("The panel needs at least one member.")
    if len(members) > MAX_MEMBERS:
        raise PanelError(f"A panel has at most {MAX_MEMBERS} members (got {len(members)}).")
    specs = [_spec(m, f"Member {i + 1}") for i, m in enumerate(members)]
    analyst = _spec(data.get("analyst"), "Analyst")
    writer = _spec(data.get("writer"), "Writer")
    fb_analyst = _spec(data["fallback_analyst"], "Fallback analyst") if data.get("fallback_analyst") else None
    fb_writer = _spec(data["fallback_writer"], "Fallback writer") if data.get("fallback_writer") else None

    def dump(s: ModelSpec | None) -> dict[str, Any] | None:
        return None if s is None else {k: v for k, v in asdict(s).items() if v is not None}

    return {
        "members": [dump(s) for s in specs],
        "analyst": dump(analyst),
        "writer": dump(writer),
        "fallback_analyst": dump(fb_analyst),
        "fallback_writer": dump(fb_writer),
    }


def spec_from_dict(data: dict[str, Any] | None) -> ModelSpec | None:
    if not data:
        return None
    return ModelSpec(
        model=data["model"],
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        reasoning_effort=data.get("reasoning_effort"),
        system_prompt=data.get("system_prompt"),
        label=data.get("label"),
    )
