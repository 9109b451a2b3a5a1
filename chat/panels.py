"""Panels as stored and sent by the browser ⇄ the engine's ModelSpec, with validation."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from django.conf import settings

from chat.fusion.types import MAX_PANEL_MEMBERS, MAX_TOKENS_LIMIT, ModelSpec

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
    """Validate a panel dict; return it normalised (what gets stored and run).

    Only the panel's own keys are kept (plus ``research`` when given): a preset's config can be
    passed as it is.
    """
    if not isinstance(data, dict):
        raise PanelError("The panel must be an object with members, analyst and writer.")
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise PanelError("The panel needs at least one member.")
    if len(members) > MAX_PANEL_MEMBERS:
        raise PanelError(f"A panel has at most {MAX_PANEL_MEMBERS} members (got {len(members)}).")
    specs = [_spec(m, f"Member {i + 1}") for i, m in enumerate(members)]
    analyst = _spec(data.get("analyst"), "Analyst")
    writer = _spec(data.get("writer"), "Writer")
    fb_analyst = _spec(data["fallback_analyst"], "Fallback analyst") if data.get("fallback_analyst") else None
    fb_writer = _spec(data["fallback_writer"], "Fallback writer") if data.get("fallback_writer") else None

    def dump(s: ModelSpec | None) -> dict[str, Any] | None:
        return None if s is None else {k: v for k, v in asdict(s).items() if v is not None}

    panel = {
        "members": [dump(s) for s in specs],
        "analyst": dump(analyst),
        "writer": dump(writer),
        "fallback_analyst": dump(fb_analyst),
        "fallback_writer": dump(fb_writer),
    }
    # Research settings travel with the panel (and so into Run.config) when a preset set them.
    if data.get("research") is not None:
        panel["research"] = parse_research(data["research"])
    return panel


# --------------------------------------------------------------------------- research settings
#
# Stored with presets and panels now so the format does not change when the tools arrive
# (chat/fusion/tools/); the names follow OpenRouter's Fusion plugin.

MAX_TOOL_CALLS_LIMIT = 16
DEFAULT_MAX_TOOL_CALLS = 4
MAX_DOMAINS = 50
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def default_research() -> dict[str, Any]:
    return {"web_tools": False, "max_tool_calls": DEFAULT_MAX_TOOL_CALLS, "excluded_domains": [], "blocked_domains": []}


def parse_domain(value: Any, where: str) -> str:
    """A hostname such as ``example.com`` (lower-cased, IDN as punycode); PanelError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise PanelError(f"{where}: a domain must be a host name such as example.com.")
    raw = value.strip()
    shown = raw[:60]
    if "://" in raw or "/" in raw or "@" in raw or ":" in raw:
        raise PanelError(f"{where}: {shown!r} is not a domain; write only the host name, e.g. example.com.")
    host = raw.lower().rstrip(".")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise PanelError(f"{where}: {shown!r} is not a valid domain.") from None
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise PanelError(f"{where}: {shown!r} is not a valid domain (expected something like example.com).")
    return host


def _domain_list(value: Any, where: str) -> list[str]:
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise PanelError(f"{where}: expected a list of domains.")
    if len(value) > MAX_DOMAINS:
        raise PanelError(f"{where}: at most {MAX_DOMAINS} domains (got {len(value)}).")
    domains: list[str] = []
    for item in value:
        domain = parse_domain(item, where)
        if domain not in domains:
            domains.append(domain)
    return domains


def parse_research(data: Any) -> dict[str, Any]:
    """Validate research settings: web_tools, max_tool_calls (1–16), excluded/blocked domains."""
    if data in (None, ""):
        return default_research()
    if not isinstance(data, dict):
        raise PanelError("Research settings must be an object.")
    web_tools = data.get("web_tools", False)
    if not isinstance(web_tools, bool):
        raise PanelError("Research: web tools must be true or false.")
    calls = data.get("max_tool_calls")
    if calls in (None, ""):
        calls = DEFAULT_MAX_TOOL_CALLS
    else:
        try:
            if isinstance(calls, bool) or (isinstance(calls, float) and not calls.is_integer()):
                raise ValueError
            calls = int(calls)
        except (TypeError, ValueError):
            raise PanelError(
                f"Research: max tool calls must be a whole number from 1 to {MAX_TOOL_CALLS_LIMIT}."
            ) from None
        if not 1 <= calls <= MAX_TOOL_CALLS_LIMIT:
            raise PanelError(f"Research: max tool calls must be between 1 and {MAX_TOOL_CALLS_LIMIT} (got {calls}).")
    research = {
        "web_tools": web_tools,
        "max_tool_calls": calls,
        "excluded_domains": _domain_list(data.get("excluded_domains"), "Excluded search domains"),
        "blocked_domains": _domain_list(data.get("blocked_domains"), "Blocked fetch domains"),
    }
    # Optional (kept only when set): OpenRouter's own server tools for members it serves.
    server_tools = data.get("server_tools", False)
    if not isinstance(server_tools, bool):
        raise PanelError("Research: server tools must be true or false.")
    if server_tools:
        research["server_tools"] = True
    # Optional (kept only when set): the analyst may check claims with the same tools.
    analyst_tools = data.get("analyst_tools", False)
    if not isinstance(analyst_tools, bool):
        raise PanelError("Research: analyst tools must be true or false.")
    if analyst_tools:
        research["analyst_tools"] = True
    return research


def parse_preset_config(data: Any) -> dict[str, Any]:
    """A preset's config: the panel (parse_panel) plus follow_up_mode and research, normalised."""
    if not isinstance(data, dict):
        raise PanelError("A preset needs members, an analyst and a writer.")
    panel = parse_panel(data)
    mode = data.get("follow_up_mode") or "fused"
    if mode not in ("fused", "per_member"):
        raise PanelError("Follow-up mode must be 'fused' or 'per_member'.")
    panel["research"] = parse_research(data.get("research"))
    panel["follow_up_mode"] = mode
    return panel


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
