"""Panel presets: selectors and services (HackSoft style), sharing by link, JSON import/export.

Every preset is looked up through its owner: another user's id is "not found", exactly like a
missing one. Built-in presets are not rows; they come from ``settings.FUSION_BUILTIN_PRESETS``
and are addressed as ``builtin:<key>``. A shared preset is reached only through its unguessable
token; copying it makes an independent preset of the viewer's.

A preset's ``config`` (validated by ``chat.panels.parse_preset_config``)::

    {"members": [{model, label?, temperature?, max_tokens?, reasoning_effort?, system_prompt?}],
     "analyst": {model}, "writer": {model}, "fallback_analyst": {model} | None,
     "fallback_writer": {model} | None, "follow_up_mode": "fused" | "per_member",
     "research": {web_tools, max_tool_calls, excluded_domains, blocked_domains}}
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Union

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chat import model_catalogue, spend
from chat.errors import NotFound
from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.models import Conversation, Preset
from chat.panels import PanelError, parse_panel, parse_preset_config

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
EXPORT_FORMAT = "fusion-preset/1"
IMPORT_MAX_BYTES = 100 * 1024
NAME_MAX = 100
DESCRIPTION_MAX = 2000
# The share page's cost estimate assumes a prompt of this many tokens.
ESTIMATE_PROMPT_TOKENS = 1000
# OpenRouter's curated fusion presets ("preset" in the plugin) → our built-ins.
OPENROUTER_PRESETS = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast"}
WEB_SEARCH = "openrouter:web_search"
WEB_FETCH = "openrouter:web_fetch"
FUSION_TOOL = "openrouter:fusion"
_BUILTIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # a URL slug, and fits Conversation.builtin_preset


class PresetError(ValueError):
    """Input a user can fix (a bad name, panel or import file); the message says how."""


@dataclass(frozen=True)
class BuiltinPreset:
    """A preset from settings: every user sees it, may copy it, and may not change it."""

    key: str
    name: str
    description: str
    config: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{BUILTIN_PREFIX}{self.key}"


AnyPreset = Union[Preset, BuiltinPreset]


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset reference (``builtin:quality`` or a user's id) resolved for one user."""

    preset: Preset | None
    builtin_key: str
    name: str
    config: dict[str, Any]

    @property
    def panel(self) -> dict[str, Any]:
        return panel_from_config(self.config)

    @property
    def follow_up_mode(self) -> str:
        return self.config.get("follow_up_mode") or "fused"


# --------------------------------------------------------------------------- helpers


def panel_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a conversation stores and a run runs: the panel with its research settings."""
    return parse_panel(config)


def _model_ids(config: dict[str, Any]) -> list[str]:
    ids = [m["model"] for m in config["members"]]
    for role in ("analyst", "writer", "fallback_analyst", "fallback_writer"):
        if config.get(role):
            ids.append(config[role]["model"])
    return list(dict.fromkeys(ids))


def _catalogue_errors(model_ids: list[str]) -> list[str]:
    """Unknown models, per the model catalogue (chat.model_catalogue.validate_models)."""
    # A page gives early feedback and never waits for the network; runs check again before paying.
    return list(model_catalogue.validate_models(model_ids, fetch_missing=False))


def _clean_text(name: Any, description: Any) -> tuple[str, str]:
    name = " ".join(str(name or "").split())
    description = str(description or "").strip()
    if not name:
        raise PresetError("Give the preset a name.")
    if len(name) > NAME_MAX:
        raise PresetError(f"The name is {len(name)} characters; the limit is {NAME_MAX}.")
    if len(description) > DESCRIPTION_MAX:
        raise PresetError(f"The description is {len(description)} characters; the limit is {DESCRIPTION_MAX}.")
    return name, description


def check_config(config: Any) -> dict[str, Any]:
    """Validate a config a user wrote (shape, ranges, then the catalogue); return it normalised."""
    try:
        normalised = parse_preset_config(config)
    except PanelError as exc:
        raise PresetError(str(exc)) from None
    errors = _catalogue_errors(_model_ids(normalised))
    if errors:
        raise PresetError(" ".join(errors))
    return normalised


def _copy_name(name: str) -> str:
    return f"Copy of {name}"[:NAME_MAX]


# --------------------------------------------------------------------------- built-ins


def builtin_presets() -> list[BuiltinPreset]:
    """The built-ins of settings.FUSION_BUILTIN_PRESETS, in their order there.

    They are checked for shape only (not against the catalogue, which may not list aliases such
    as ``~openai/gpt-latest``); a broken override is a deployment error and fails loudly.
    """
    result = []
    for key, data in settings.FUSION_BUILTIN_PRESETS.items():
        if not _BUILTIN_KEY_RE.match(str(key)) or not isinstance(data, dict):
            raise ImproperlyConfigured(
                f"FUSION_BUILTIN_PRESETS: {str(key)[:40]!r} needs a key of letters, digits, - and _ and an object."
            )
        try:
            config = parse_preset_config(data)
        except PanelError as exc:
            raise ImproperlyConfigured(f"FUSION_BUILTIN_PRESETS[{key!r}]: {exc}") from None
        result.append(
            BuiltinPreset(
                key=str(key),
                name=str(data.get("name") or key)[:NAME_MAX],
                description=str(data.get("description") or ""),
                config=config,
            )
        )
    return result


def builtin_get(*, key: str) -> BuiltinPreset:
    for builtin in builtin_presets():
        if builtin.key == key:
            return builtin
    raise NotFound("No such built-in preset.")


# --------------------------------------------------------------------------- selectors


def preset_list_for_user(*, user: User) -> QuerySet[Preset]:
    return Preset.objects.filter(user=user).order_by("name", "pk")


def preset_get_for_user(*, user: User, pk: int | str) -> Preset:
    """The user's preset ``pk``; NotFound for a missing id and for someone else's."""
    try:
        return Preset.objects.get(pk=int(pk), user=user)
    except (Preset.DoesNotExist, TypeError, ValueError, OverflowError):
        raise NotFound("No such preset.") from None


def preset_default_for_user(*, user: User) -> Preset | None:
    return Preset.objects.filter(user=user, is_default=True).first()


def preset_get_shared(*, token: str) -> Preset:
    """The preset shared under ``token``; NotFound for a revoked, regenerated or wrong token."""
    if not token or len(token) > 64:
        raise NotFound("No such shared preset.")
    try:
        return Preset.objects.select_related("user").get(share_token=token)
    except Preset.DoesNotExist:
        raise NotFound("No such shared preset.") from None


def preset_resolve(*, user: User, ref: object) -> ResolvedPreset:
    """``"builtin:<key>"`` or one of the user's preset ids → its config; NotFound otherwise."""
    if isinstance(ref, str) and ref.startswith(BUILTIN_PREFIX):
        builtin = builtin_get(key=ref[len(BUILTIN_PREFIX) :])
        return ResolvedPreset(preset=None, builtin_key=builtin.key, name=builtin.name, config=builtin.config)
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise NotFound("No such preset.")
    preset = preset_get_for_user(user=user, pk=ref)
    # Stored configs were validated on save; parsing again keeps an old row's shape current.
    try:
        config = parse_preset_config(preset.config)
    except PanelError as exc:
        raise PresetError(f"The preset “{preset.name}” cannot run: {exc}") from None
    return ResolvedPreset(preset=preset, builtin_key="", name=preset.name, config=config)


def preset_choices_for_user(*, user: User) -> dict[str, Any]:
    """The composer's chooser: own presets and built-ins, with each one's panel for the script."""
    own = list(preset_list_for_user(user=user))
    builtins = builtin_presets()
    panels: dict[str, Any] = {}
    for preset in own:
        try:
            config = parse_preset_config(preset.config)
        except PanelError:
            continue  # an unrunnable old row is left out of the chooser, not an error page
        panels[str(preset.pk)] = {
            "name": preset.name,
            "panel": panel_from_config(config),
            "follow_up_mode": config["follow_up_mode"],
        }
    for builtin in builtins:
        panels[builtin.ref] = {
            "name": builtin.name,
            "panel": panel_from_config(builtin.config),
            "follow_up_mode": builtin.config["follow_up_mode"],
        }
    return {
        "own": [p for p in own if str(p.pk) in panels],
        "builtins": builtins,
        "panels": panels,
    }


def preset_selected_ref(*, user: User, conversation: Conversation | None) -> str:
    """Which preset the composer preselects: the conversation's, else (new) the user's default."""
    if conversation is not None:
        if conversation.builtin_preset:
            return f"{BUILTIN_PREFIX}{conversation.builtin_preset}"
        if conversation.preset_id:
            return str(conversation.preset_id)
        if conversation.panel:
            return ""  # a panel of its own
    default = preset_default_for_user(user=user)
    return str(default.pk) if default else ""


@dataclass(frozen=True)
class Estimate:
    text: str  # "$0.0123–$0.05"
    unpriced: list[str]  # model ids the catalogue has no price for (counted as free)


def preset_estimate(*, config: dict[str, Any], prompt_tokens: int = ESTIMATE_PROMPT_TOKENS) -> Estimate | None:
    """The estimated cost of one run from catalogue prices; None when no estimate is available
    (no catalogue, or no price for any of its models)."""
    try:
        text = estimate_text(model_catalogue.estimate_panel_cost(config, prompt_tokens=prompt_tokens))
        unpriced = list(model_catalogue.unpriced_models(config))
    except Exception:  # an estimate is a courtesy: never break a page over it
        log.exception("estimating the cost of a preset failed")
        return None
    runs = [s["model"] for s in (*config["members"], config["analyst"], config["writer"])]
    priced = [m for m in runs if m not in unpriced]
    if text is None or not priced:
        return None
    return Estimate(text=text, unpriced=unpriced)


def estimate_text(estimate: Any) -> str | None:
    """chat.model_catalogue.estimate_panel_cost's ``(low, high)`` in USD as text; None if unusable."""
    try:
        low, high = (float(v) for v in estimate)
    except (TypeError, ValueError):
        return None
    low_text, high_text = spend.usd(low), spend.usd(high)
    return low_text if low_text == high_text else f"{low_text}–{high_text}"


# --------------------------------------------------------------------------- services


def preset_create(
    *, user: User, name: str, description: str = "", config: Any, copied_from_share: bool = False
) -> Preset:
    name, description = _clean_text(name, description)
    return Preset.objects.create(
        user=user, name=name, description=description, config=check_config(config), copied_from_share=copied_from_share
    )


def preset_update(*, preset: Preset, name: str, description: str = "", config: Any) -> Preset:
    preset.name, preset.description = _clean_text(name, description)
    preset.config = check_config(config)
    preset.updated_at = timezone.now()
    preset.save(update_fields=["name", "description", "config", "updated_at"])
    return preset


def preset_duplicate(*, preset: Preset) -> Preset:
    """An independent copy in the same user's presets (not default, not shared)."""
    return Preset.objects.create(
        user=preset.user,
        name=_copy_name(preset.name),
        description=preset.description,
        config=copy.deepcopy(preset.config),
    )


def preset_copy_builtin(*, user: User, key: str) -> Preset:
    builtin = builtin_get(key=key)
    return Preset.objects.create(
        user=user, name=builtin.name, description=builtin.description, config=copy.deepcopy(builtin.config)
    )


def preset_delete(*, preset: Preset) -> None:
    """Conversations that used it keep their panel (Conversation.preset is SET_NULL)."""
    preset.delete()


def preset_set_default(*, user: User, preset: Preset | None) -> None:
    """Make ``preset`` the user's default (None: no default). One default per user, DB-enforced."""
    with transaction.atomic():
        others = Preset.objects.filter(user=user, is_default=True)
        if preset is not None:
            others = others.exclude(pk=preset.pk)
        others.update(is_default=False)
        if preset is not None and not preset.is_default:
            preset.is_default = True
            preset.save(update_fields=["is_default"])


def preset_share(*, preset: Preset) -> str:
    """Create the share link's token, or replace it: the old link stops working at once."""
    preset.share_token = secrets.token_urlsafe(32)
    preset.save(update_fields=["share_token"])
    return preset.share_token


def preset_unshare(*, preset: Preset) -> None:
    preset.share_token = None
    preset.save(update_fields=["share_token"])


def preset_copy_shared(*, user: User, token: str) -> Preset:
    """Copy a shared preset into ``user``'s presets: a deep copy, unaffected by later edits."""
    shared = preset_get_shared(token=token)
    return Preset.objects.create(
        user=user,
        name=shared.name,
        description=shared.description,
        config=copy.deepcopy(shared.config),
        copied_from_share=True,
    )


def preset_apply_to_conversation(
    *, conversation: Conversation, resolved: ResolvedPreset, follow_up_mode: str | None = None
) -> Conversation:
    """Make a preset the conversation's panel (new turns run it), with its follow-up mode unless
    the composer chose one."""
    conversation.panel = resolved.panel
    conversation.preset = resolved.preset
    conversation.builtin_preset = resolved.builtin_key
    conversation.follow_up_mode = follow_up_mode or resolved.follow_up_mode
    conversation.save(update_fields=["panel", "preset", "builtin_preset", "follow_up_mode"])
    return conversation


def preset_resolve_posted(*, user: User, ref: str) -> ResolvedPreset | None:
    """The composer's chooser value: None for "Custom panel", else the preset (NotFound for
    another user's). Resolve it before changing anything, so a bad id changes nothing."""
    return preset_resolve(user=user, ref=ref) if ref else None


# --------------------------------------------------------------------------- export / import


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


def preset_export(preset: AnyPreset) -> dict[str, Any]:
    """Our JSON format, with OpenRouter's plugin and server-tool shapes alongside (read by preset_import)."""
    config = parse_preset_config(preset.config)
    return {
        "format": EXPORT_FORMAT,
        "name": preset.name,
        "description": preset.description,
        "config": config,
        "openrouter_plugin": openrouter_plugin(config),
        "openrouter_server_tool": openrouter_server_tool(config),
    }


def export_filename(preset: AnyPreset) -> str:
    from django.utils.text import slugify

    return f"fusion-preset-{slugify(preset.name)[:60] or 'preset'}.json"


def too_large_message(size: int) -> str:
    return f"The file is {size / 1024:.0f} KB; preset files are limited to {IMPORT_MAX_BYTES // 1024} KB."


def _load_json(data: bytes | str) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > IMPORT_MAX_BYTES:
        raise PresetError(too_large_message(len(raw)))
    if not raw.strip():
        raise PresetError("The file is empty. Choose a preset JSON file or paste its text.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PresetError("The file is not UTF-8 text; a preset is a JSON file.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"This is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except RecursionError:
        raise PresetError("This JSON is nested too deeply to be a preset.") from None


def _domains_param(tool: dict[str, Any], key: str) -> list[Any]:
    params = tool.get("parameters") or {}
    if not isinstance(params, dict):
        raise PresetError(f"The {tool.get('type')} tool's parameters must be an object.")
    value = params.get(key) or []
    if not isinstance(value, list):
        raise PresetError(f"The {tool.get('type')} tool's {key} must be a list of domains.")
    return value


def config_from_openrouter_plugin(plugin: dict[str, Any]) -> dict[str, Any]:
    """An OpenRouter Fusion plugin object → our config (not yet validated)."""
    if plugin.get("id") not in (None, "fusion"):
        raise PresetError(f"This plugin's id is {str(plugin.get('id'))[:40]!r}; only the 'fusion' plugin is a panel.")
    quality = dict((b.key, b) for b in builtin_presets())
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


def config_from_openrouter_server_tool(tool: dict[str, Any], *, outer_model: Any = None) -> dict[str, Any]:
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
    config = config_from_openrouter_plugin(plugin)
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


def _fusion_server_tool(data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``openrouter:fusion`` entry of a request's ``tools``, a bare server tool, or None."""
    if data.get("type") == FUSION_TOOL:
        return data
    tools = data.get("tools")
    if not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("type") == FUSION_TOOL), None)


def _parse_import(data: Any) -> tuple[str, str, dict[str, Any]]:
    """(name, description, config) from our format, an OpenRouter plugin or its server-tool request."""
    if not isinstance(data, dict):
        raise PresetError("Expected a JSON object: a Fusion preset export or an OpenRouter Fusion plugin.")
    if "format" in data:
        if data["format"] != EXPORT_FORMAT:
            raise PresetError(f"Unsupported format {str(data['format'])[:40]!r}; this version reads {EXPORT_FORMAT!r}.")
        config = data.get("config")
        if not isinstance(config, dict):
            raise PresetError("The export has no config object (members, analyst, writer…).")
        return str(data.get("name") or "Imported preset"), str(data.get("description") or ""), config
    # Before plugins: a request may carry both, and only the server tool names analyst and writer.
    server_tool = _fusion_server_tool(data)
    if server_tool is not None:
        outer_model = data.get("model") if server_tool is not data else None
        return "Imported Fusion tool", "", config_from_openrouter_server_tool(server_tool, outer_model=outer_model)
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list):
            raise PresetError("plugins must be a list of plugin objects.")
        fusion = [p for p in plugins if isinstance(p, dict) and p.get("id") == "fusion"]
        if not fusion:
            raise PresetError("No plugin with id 'fusion' in plugins.")
        return "Imported Fusion plugin", "", config_from_openrouter_plugin(fusion[0])
    if data.get("id") == "fusion" or "analysis_models" in data:
        return "Imported Fusion plugin", "", config_from_openrouter_plugin(data)
    raise PresetError(
        f'This JSON is neither a preset export ("format": "{EXPORT_FORMAT}"), an OpenRouter Fusion plugin '
        '({"id": "fusion", "analysis_models": […], "model": …}) nor a request with its server tool '
        f'({{"model": …, "tools": [{{"type": "{FUSION_TOOL}", "parameters": {{…}}}}]}}).'
    )


def preset_import(*, user: User, data: bytes | str, name: str = "") -> Preset:
    """A new preset of ``user``'s from JSON text: ours (fusion-preset/1), OpenRouter's plugin or server tool."""
    imported_name, description, config = _parse_import(_load_json(data))
    return preset_create(user=user, name=name.strip() or imported_name, description=description, config=config)
