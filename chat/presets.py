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
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import slugify

from chat import model_catalogue, spend
from chat.errors import NotFound, PresetError
from chat.models import Conversation, Preset
from chat.openrouter_shapes import (
    FUSION_TOOL,
    config_from_openrouter_plugin,
    config_from_openrouter_server_tool,
    fusion_server_tool,
    openrouter_plugin,
    openrouter_server_tool,
)
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
_BUILTIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # a URL slug, and fits Conversation.builtin_preset


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


def preset_slug(*, user: User, name: str) -> str:
    """A slug for a new preset of *user*'s named *name*, unused among their presets (the API's
    ``fusion/<slug>``): ``deep-research``, then ``deep-research-2``, …"""
    base = slugify(name)[:50].strip("-") or "preset"
    taken = set(Preset.objects.filter(user=user, slug__startswith=base).values_list("slug", flat=True))
    builtin = {b.key for b in builtin_presets()}  # fusion/<key> names a built-in
    if base not in taken and base not in builtin:
        return base
    n = 2
    while f"{base}-{n}" in taken or f"{base}-{n}" in builtin:
        n += 1
    return f"{base}-{n}"


def _new_preset(*, user: User, name: str, **fields: Any) -> Preset:
    """Create a preset row with a fresh slug; a slug taken a moment ago by a concurrent create gets
    the next one."""
    for _ in range(3):
        try:
            with transaction.atomic():
                return Preset.objects.create(user=user, name=name, slug=preset_slug(user=user, name=name), **fields)
        except IntegrityError:
            if not Preset.objects.filter(user=user, slug=preset_slug(user=user, name=name)).exists():
                raise
    raise PresetError("Could not name this preset; try again.")


def preset_create(
    *, user: User, name: str, description: str = "", config: Any, copied_from_share: bool = False
) -> Preset:
    name, description = _clean_text(name, description)
    return _new_preset(
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
    return _new_preset(
        user=preset.user,
        name=_copy_name(preset.name),
        description=preset.description,
        config=copy.deepcopy(preset.config),
    )


def preset_copy_builtin(*, user: User, key: str) -> Preset:
    builtin = builtin_get(key=key)
    return _new_preset(
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
    return _new_preset(
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


def _builtins_by_key() -> dict[str, BuiltinPreset]:
    return {b.key: b for b in builtin_presets()}


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
    server_tool = fusion_server_tool(data)
    if server_tool is not None:
        outer_model = data.get("model") if server_tool is not data else None
        return (
            "Imported Fusion tool",
            "",
            config_from_openrouter_server_tool(server_tool, builtins=_builtins_by_key(), outer_model=outer_model),
        )
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list):
            raise PresetError("plugins must be a list of plugin objects.")
        fusion = [p for p in plugins if isinstance(p, dict) and p.get("id") == "fusion"]
        if not fusion:
            raise PresetError("No plugin with id 'fusion' in plugins.")
        return "Imported Fusion plugin", "", config_from_openrouter_plugin(fusion[0], builtins=_builtins_by_key())
    if data.get("id") == "fusion" or "analysis_models" in data:
        return "Imported Fusion plugin", "", config_from_openrouter_plugin(data, builtins=_builtins_by_key())
    raise PresetError(
        f'This JSON is neither a preset export ("format": "{EXPORT_FORMAT}"), an OpenRouter Fusion plugin '
        '({"id": "fusion", "analysis_models": […], "model": …}) nor a request with its server tool '
        f'({{"model": …, "tools": [{{"type": "{FUSION_TOOL}", "parameters": {{…}}}}]}}).'
    )


def preset_import(*, user: User, data: bytes | str, name: str = "") -> Preset:
    """A new preset of ``user``'s from JSON text: ours (fusion-preset/1), OpenRouter's plugin or server tool."""
    imported_name, description, config = _parse_import(_load_json(data))
    return preset_create(user=user, name=name.strip() or imported_name, description=description, config=config)
