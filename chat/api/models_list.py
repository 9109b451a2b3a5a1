"""``GET /api/v1/models``: the caller's fusion models in OpenRouter's model-list shape.

``fusion``, ``fusion/<key>`` for each built-in, ``fusion/<slug>`` for each of the user's presets,
and OpenRouter's aliases. ``pricing`` is per call, not per token: ``request`` is the highest
estimate of one run for a short prompt (the estimate the composer and the reservation use),
and ``fusion.estimate_usd`` gives the low and high ends.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.urls import reverse

from chat import model_catalogue, presets
from chat.api.choose import ALIASES, FUSION, Chosen, choose_by_model
from chat.api.errors import ApiError
from chat.models import Preset
from chat.panels import PanelError, parse_panel

SUPPORTED_PARAMETERS = ["temperature", "max_tokens", "max_completion_tokens", "reasoning", "plugins", "tools", "stream"]


def _estimate(config: dict[str, Any]) -> tuple[float, float] | None:
    try:
        low, high = model_catalogue.estimate_panel_cost(
            parse_panel(config), prompt_tokens=presets.ESTIMATE_PROMPT_TOKENS
        )
    except (PanelError, KeyError, TypeError, ValueError):
        return None
    return float(low), float(high)


def _details(chosen: Chosen) -> str:
    """The page that shows this panel: the preset's, a built-in's, or the presets list."""
    if chosen.preset is not None:
        return reverse("preset_detail", args=[chosen.preset.pk])
    if chosen.builtin_key:
        return reverse("builtin_preset", args=[chosen.builtin_key])
    return reverse("presets")


def _entry(model_id: str, name: str, description: str, chosen: Chosen, created: int) -> dict[str, Any]:
    config = chosen.config
    estimate = _estimate(config)
    members = [m["model"] for m in config.get("members", [])]
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "name": name,
        "created": created,
        "description": description or f"A fusion of {', '.join(members)}.",
        "context_length": None,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": None,
        },
        "pricing": {
            "prompt": "0",
            "completion": "0",
            "request": f"{estimate[1]:.6f}" if estimate else "0",
            "image": "0",
        },
        "top_provider": {"context_length": None, "max_completion_tokens": None, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": SUPPORTED_PARAMETERS,
        "default_parameters": None,
        "supported_voices": None,
        "links": {"details": _details(chosen)},
        "fusion": {
            "panel": members,
            "analyst": (config.get("analyst") or {}).get("model"),
            "writer": (config.get("writer") or {}).get("model"),
            "estimate_usd": {"low": estimate[0], "high": estimate[1]} if estimate else None,
            "estimate_prompt_tokens": presets.ESTIMATE_PROMPT_TOKENS,
        },
    }


def api_models_for_user(*, user: User) -> dict[str, Any]:
    data = []
    default = choose_by_model(user, FUSION)
    default_name = f"Fusion (your default: {default.preset.name})" if default.preset else "Fusion (default panel)"
    data.append(_entry(FUSION, default_name, "", default, 0))
    for alias in ALIASES:
        try:
            chosen = choose_by_model(user, alias)
        except ApiError:
            continue  # the alias of a built-in this server's FUSION_BUILTIN_PRESETS leaves out
        data.append(_entry(alias, f"{alias} (alias)", "OpenRouter's name, accepted here.", chosen, 0))
    for builtin in presets.builtin_presets():
        chosen = choose_by_model(user, f"{FUSION}/{builtin.key}")
        data.append(_entry(f"{FUSION}/{builtin.key}", builtin.name, builtin.description, chosen, 0))
    for preset in Preset.objects.filter(user=user).order_by("name", "pk"):
        chosen = Chosen(model=f"{FUSION}/{preset.slug}", config=preset.config, preset=preset)
        created = int(preset.created_at.timestamp())
        data.append(_entry(chosen.model, preset.name, preset.description, chosen, created))
    return {"data": data, "total_count": len(data), "links": {"next": None}}
