"""The composer's preset chooser, as a tag so every page with a composer gets it from one place."""

from __future__ import annotations

from typing import Any

from django import template

from chat import presets

register = template.Library()


@register.filter
def short_model(model_id: str) -> str:
    """``~anthropic/claude-opus-latest`` → ``claude-opus-latest``: the name without its vendor."""
    return str(model_id).rsplit("/", 1)[-1].lstrip("~") or str(model_id)


@register.inclusion_tag("presets/_chooser.html", takes_context=True)
def preset_chooser(context: template.Context) -> dict[str, Any]:
    """Own presets and built-ins; the conversation's preset (or, when new, the default) selected."""
    request = context["request"]
    conversation = context.get("conversation")
    choices = presets.preset_choices_for_user(user=request.user)
    selected = presets.preset_selected_ref(user=request.user, conversation=conversation)
    if selected not in choices["panels"]:
        selected = ""
    # The script shows "use for this conversation" once the choice differs from ``selected`` (a
    # conversation without a panel yet simply adopts its first turn's).
    return {
        "own": choices["own"],
        "builtins": choices["builtins"],
        "panels": choices["panels"],
        "selected": selected,
        "conversation": conversation,
    }
