"""OpenRouter's Fusion shapes: our preset config to and from the plugin object
(``plugins: [{"id": "fusion", …}]``) and the ``openrouter:fusion`` server tool of a Chat
Completions request. Field names follow ../shared/reference/openrouter_openapi.yaml
(FusionPlugin, FusionServerToolConfig). Pure dict work: no models, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat.errors import PresetError
from chat.fusion.types import MAX_PANEL_MEMBERS

OPENROUTER_PRESETS = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast"}
WEB_SEARCH = "openrouter:web_search"
WEB_FETCH = "openrouter:web_fetch"
FUSION_TOOL = "openrouter:fusion"


def _openrouter_tools(research: dict[str, Any]) -> list[dict[str, Any]]:
    """Our research settings as OpenRouter's ``tools`` list (empty: tools off)."""
    if not research.get("web_tools"):
        return []
    search: dict[str, Any] = {"type": WEB_SEARCH}
    if research.get("excluded_domains"):
        search["parameters"] = {"excluded_domains": list(research["excluded_domains"])}
    fetch: dict[str, Any] = {"type": WEB_FETCH}
    if research.get("blocked_domains"):
        fetch["parameters"] = {"blocked_domains": list(research["blocked_domains"])}
    return [search, fetch]


def openrouter_plugin(config: dict[str, Any]) -> dict[str, Any]:
    """The config in OpenRouter's Fusion plugin shape.

    The plugin has one ``model`` for analyst and writer both, so it holds the writer (who writes
    the answer the user reads); only ``openrouter_server_tool`` keeps a different analyst.
    """
    research = config.get("research") or {}
    return {
        "id": "fusion",
        "analysis_models": [m["model"] for m in config["members"]],
        "model": config["writer"]["model"],
        "max_tool_calls": research.get("max_tool_calls") or 4,
        "tools": _openrouter_tools(research),
    }


def _shared_member_value(config: dict[str, Any], key: str) -> Any:
    """The value every member sets for ``key``, or None (the server tool has one for all)."""
    values = {m.get(key) for m in config["members"]}
    return values.pop() if len(values) == 1 else None


def openrouter_server_tool(config: dict[str, Any]) -> dict[str, Any]:
    """The config as a Chat Completions request with OpenRouter's ``openrouter:fusion`` server tool.

    Unlike the plugin it names both roles: the tool's ``model`` is the analyst and the request's
    ``model`` (the outer model, which synthesises from the analysis) is the writer. Per-member
    temperature, reasoning effort and max tokens go in only when every member shares them.
    """
    research = config.get("research") or {}
    parameters: dict[str, Any] = {
        "analysis_models": [m["model"] for m in config["members"]],
        "model": config["analyst"]["model"],
        "max_tool_calls": research.get("max_tool_calls") or 4,
        "tools": _openrouter_tools(research),
    }
    temperature = _shared_member_value(config, "temperature")
    if temperature is not None:
        parameters["temperature"] = temperature
    effort = _shared_member_value(config, "reasoning_effort")
    if effort:
        parameters["reasoning"] = {"effort": effort}
    max_tokens = _shared_member_value(config, "max_tokens")
    if max_tokens is not None:
        parameters["max_completion_tokens"] = max_tokens
    return {"model": config["writer"]["model"], "tools": [{"type": FUSION_TOOL, "parameters": parameters}]}


def _domains_param(tool: dict[str, Any], key: str) -> list[Any]:
    params = tool.get("parameters") or {}
    if not isinstance(params, dict):
        raise PresetError(f"The {tool.get('type')} tool's parameters must be an object.")
    value = params.get(key) or []
    if not isinstance(value, list):
        raise PresetError(f"The {tool.get('type')} tool's {key} must be a list of domains.")
    return value


def config_from_openrouter_plugin(plugin: dict[str, Any], *, builtins: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenRouter Fusion plugin object → our config (not yet validated). *builtins*: the built-in
    presets by key (their ``config``), for OpenRouter's ``preset`` names and the defaults."""
    if plugin.get("id") not in (None, "fusion"):
        raise PresetError(f"This plugin's id is {str(plugin.get('id'))[:40]!r}; only the 'fusion' plugin is a panel.")
    quality = dict(builtins)
    curated = quality.get(OPENROUTER_PRESETS.get(str(plugin.get("preset")), ""))
    fallback = curated or quality.get("quality")

    models = plugin.get("analysis_models")
    if models is None:
        if fallback is None:
            raise PresetError("The plugin has no analysis_models (the panel's model ids).")
        models = [m["model"] for m in fallback.config["members"]]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise PresetError("analysis_models must be a list of model ids (strings).")
    if not models:
        raise PresetError("analysis_models is empty; a panel needs at least one model.")
    if len(models) > MAX_PANEL_MEMBERS:
        raise PresetError(f"A panel has at most {MAX_PANEL_MEMBERS} members (analysis_models has {len(models)}).")

    model = plugin.get("model")
    if model is None:
        if fallback is None:
            raise PresetError("The plugin has no model (the analyst and writer).")
        model = fallback.config["writer"]["model"] if curated else fallback.config["members"][0]["model"]
    if not isinstance(model, str):
        raise PresetError("model must be a model id (a string).")

    tools = plugin.get("tools")
    research: dict[str, Any] = {"max_tool_calls": plugin.get("max_tool_calls")}
    if tools is None:  # OpenRouter's default: both tools, no restrictions
        research["web_tools"] = True
    elif not isinstance(tools, list):
        raise PresetError("tools must be a list of {type, parameters} objects.")
    else:
        research["web_tools"] = bool(tools)
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise PresetError("Each tool must be an object with a type.")
            if tool["type"] == WEB_SEARCH:
                research["excluded_domains"] = _domains_param(tool, "excluded_domains")
            elif tool["type"] == WEB_FETCH:
                research["blocked_domains"] = _domains_param(tool, "blocked_domains")
            else:
                raise PresetError(
                    f"Unsupported tool {tool['type'][:60]!r}: only {WEB_SEARCH} and {WEB_FETCH} are supported."
                )
    return {
        "members": [{"model": m} for m in models],
        "analyst": {"model": model},
        "writer": {"model": model},
        "research": research,
    }


def config_from_openrouter_server_tool(
    tool: dict[str, Any], *, builtins: Mapping[str, Any], outer_model: Any = None
) -> dict[str, Any]:
    """An ``openrouter:fusion`` server tool (and its request's ``model``) → our config (not yet validated).

    The tool's ``parameters`` are the plugin's fields; its ``model`` is the analyst, defaulting to
    the request's model, which is the writer. Without either, the plugin's defaults apply.
    """
    params = tool.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PresetError(f"The {FUSION_TOOL} tool's parameters must be an object.")
    if outer_model is not None and not isinstance(outer_model, str):
        raise PresetError("The request's model (the writer) must be a model id (a string).")
    plugin = {k: params[k] for k in ("analysis_models", "max_tool_calls", "tools") if k in params}
    analyst = params.get("model", outer_model)
    if analyst is not None:
        plugin["model"] = analyst
    config = config_from_openrouter_plugin(plugin, builtins=builtins)
    if outer_model is not None:
        config["writer"] = {"model": outer_model}
    # One value for every member: chat.panels checks the ranges and words the errors.
    reasoning = params.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise PresetError(f'The {FUSION_TOOL} tool\'s reasoning must be an object like {{"effort": "high"}}.')
    shared = {
        "temperature": params.get("temperature"),
        "max_tokens": params.get("max_completion_tokens"),
        "reasoning_effort": (reasoning or {}).get("effort"),
    }
    for member in config["members"]:
        member.update({k: v for k, v in shared.items() if v is not None})
    return config


def fusion_server_tool(data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``openrouter:fusion`` entry of a request's ``tools``, a bare server tool, or None."""
    if data.get("type") == FUSION_TOOL:
        return data
    tools = data.get("tools")
    if not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("type") == FUSION_TOOL), None)
