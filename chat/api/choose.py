"""Which panel an API request names: a fusion model id, the fusion plugin, or both.

- ``fusion`` (and ``openrouter/fusion``): the user's default preset, else the server's default panel;
- ``fusion/<key>``: a built-in preset, or the slug of one of the user's presets;
- ``openrouter/fusion-flash``: the Fast built-in;
- ``plugins: [{"id": "fusion", …}]`` configures the panel inline (OpenRouter's FusionPlugin);
  its explicit fields override the preset named by ``preset`` or by ``model``.

The request's ``temperature``, ``max_tokens`` and ``reasoning`` are forwarded as OpenRouter does
for a fusion call: temperature and reasoning to the panel members and the writer (the analyst
keeps temperature 0), ``max_tokens`` to the writer, whose answer is the completion.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User

from chat import presets
from chat.api.errors import ApiError, invalid
from chat.errors import NotFound, PresetError
from chat.models import Preset
from chat.panels import default_panel
from chat.openrouter_shapes import (
    OPENROUTER_PRESETS,
    config_from_openrouter_plugin,
    config_from_openrouter_server_tool,
    fusion_server_tool,
)

FUSION = "fusion"
ALIASES = {"openrouter/fusion": None, "openrouter/fusion-flash": "fast"}  # → built-in key (None: default)


@dataclass
class Chosen:
    model: str  # the id the response reports
    config: dict[str, Any]  # a preset config: members, analyst, writer, research, …
    preset: Preset | None = None
    builtin_key: str = ""


def is_fusion_model(model: str) -> bool:
    return model == FUSION or model.startswith(FUSION + "/") or model in ALIASES


def _default(user: User, *, model: str = FUSION) -> Chosen:
    preset = presets.preset_default_for_user(user=user)
    if preset is not None:
        return Chosen(model=model, config=copy.deepcopy(preset.config), preset=preset)
    return Chosen(model=model, config=default_panel())


def _named(user: User, key: str, *, model: str) -> Chosen:
    """``fusion/<key>``: a built-in first (a user's slug never equals a built-in's key), then a preset."""
    try:
        builtin = presets.builtin_get(key=key)
        return Chosen(model=model, config=copy.deepcopy(builtin.config), builtin_key=builtin.key)
    except NotFound:
        pass
    preset = Preset.objects.filter(user=user, slug=key).first()
    if preset is None:
        raise ApiError(
            404,
            "unknown_preset",
            f"No preset {key!r}: use a built-in ({', '.join(b.key for b in presets.builtin_presets())}) "
            "or the slug of one of your presets (each preset's page shows it).",
            field="model",
        )
    return Chosen(model=model, config=copy.deepcopy(preset.config), preset=preset)


def choose_by_model(user: User, model: str) -> Chosen:
    if model == FUSION:
        return _default(user)
    if model in ALIASES:
        key = ALIASES[model]
        return _default(user, model=model) if key is None else _named(user, key, model=model)
    if model.startswith(FUSION + "/"):
        return _named(user, model[len(FUSION) + 1 :], model=model)
    raise ApiError(
        404,
        "unknown_model",
        f"{model!r} is not a fusion model. Use 'fusion', 'fusion/<preset>' (GET /api/v1/models lists them), "
        "or add the fusion plugin or the openrouter:fusion tool to the request.",
        field="model",
    )


def fusion_plugin(plugins: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The request's enabled fusion plugin, or None. Other plugins are refused (we run none)."""
    found = None
    for i, plugin in enumerate(plugins or []):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("id"), str):
            raise invalid("Each plugin must be an object with an id.", field=f"plugins.{i}")
        if plugin["id"] != FUSION:
            raise invalid(
                f"Unsupported plugin {plugin['id'][:40]!r}: only 'fusion' is supported.", field=f"plugins.{i}.id"
            )
        if plugin.get("enabled", True) is not False:
            found = plugin
    return found


def _with_plugin(user: User, base: Chosen | None, plugin: dict[str, Any], *, outer_model: str) -> Chosen:
    """The plugin's explicit fields over a base preset: the one its ``preset`` names (a built-in
    key or one of the user's slugs; OpenRouter's curated names map to built-ins), or the request's
    fusion model. Without a base, the plugin alone (OpenRouter's defaults fill the rest)."""
    ref = plugin.get("preset")
    if ref is not None and not isinstance(ref, str):
        raise invalid("preset must be a preset name.", field="plugins.0.preset")
    builtins = {b.key: b for b in presets.builtin_presets()}
    try:
        if ref in OPENROUTER_PRESETS:
            return Chosen(model=outer_model, config=config_from_openrouter_plugin(plugin, builtins=builtins))
        if ref:
            base = _named(user, ref, model=outer_model)
        if base is None:
            return Chosen(model=outer_model, config=config_from_openrouter_plugin(plugin, builtins=builtins))
        config = copy.deepcopy(base.config)
        models = plugin.get("analysis_models")
        if models is not None:  # null is left out, as config_from_openrouter_plugin reads it
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise PresetError("analysis_models must be a list of model ids (strings).")
            config["members"] = [{"model": m} for m in models]
        if "model" in plugin:
            config["analyst"] = {"model": plugin["model"]}
            config["writer"] = {"model": plugin["model"]}
        research = dict(config.get("research") or {})
        if "tools" in plugin:  # parsed as the plugin parser reads them (only web search and fetch)
            parsed = config_from_openrouter_plugin(
                {"analysis_models": ["-"], "model": "-", "tools": plugin["tools"]}, builtins=builtins
            )
            research.update({k: v for k, v in parsed["research"].items() if k != "max_tool_calls"})
        if "max_tool_calls" in plugin:
            research["max_tool_calls"] = plugin["max_tool_calls"]
        config["research"] = research
        return Chosen(model=base.model, config=config, preset=base.preset, builtin_key=base.builtin_key)
    except PresetError as exc:
        raise invalid(str(exc), field="plugins.0") from None


def choose(
    *,
    user: User,
    model: str,
    plugins: list[dict[str, Any]] | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    reasoning_effort: str | None = None,
) -> Chosen:
    """The panel config this request runs (not yet validated against the catalogue)."""
    plugin = fusion_plugin(plugins)
    if plugin is None:
        chosen = choose_by_model(user, model)
    else:
        base = choose_by_model(user, model) if is_fusion_model(model) else None
        chosen = _with_plugin(user, base, plugin, outer_model=model)
        if base is None and "model" not in plugin:  # a plain model with the plugin writes the answer
            chosen.config["writer"] = {"model": model}
    _forward(chosen.config, temperature=temperature, max_tokens=max_tokens, reasoning_effort=reasoning_effort)
    return chosen


def _forward(
    config: dict[str, Any], *, temperature: float | None, max_tokens: int | None, reasoning_effort: str | None
) -> None:
    writer = config.setdefault("writer", {})
    for spec in [*config.get("members", []), writer]:
        if temperature is not None:
            spec["temperature"] = temperature
        if reasoning_effort is not None:
            spec["reasoning_effort"] = reasoning_effort
    if max_tokens is not None:
        writer["max_tokens"] = max_tokens


def server_tool(tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The request's ``openrouter:fusion`` tool (FusionServerTool_OpenRouter), or None."""
    return fusion_server_tool({"tools": tools}) if tools else None


def choose_server_tool(*, user: User, model: str, tool: dict[str, Any], **forwarded: Any) -> Chosen:
    """A plain model with the ``openrouter:fusion`` tool: the tool's ``analysis_models`` are the
    panel, its ``model`` the analyst (default: the request's model), and the request's model
    writes the answer from the analysis, as OpenRouter's outer model does."""
    try:
        config = config_from_openrouter_server_tool(
            tool, builtins={b.key: b for b in presets.builtin_presets()}, outer_model=model
        )
    except PresetError as exc:
        raise invalid(str(exc), field="tools") from None
    chosen = Chosen(model=model, config=config)
    _forward(chosen.config, **forwarded)
    return chosen
