"""The preset editor's forms: one row per member (a formset) and the rest of the preset.

The forms only collect text; the config they build is validated by chat.presets.check_config
(chat.panels.parse_preset_config), the same validation imports and the websocket go through, so
the messages are the same everywhere.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms

from chat.forms._common import PlainLabels
from chat.fusion.types import MAX_PANEL_MEMBERS, MAX_TOKENS_LIMIT
from chat.models import FollowUpMode
from chat.panels import MAX_TOOL_CALLS_LIMIT, default_research
from chat.presets import DESCRIPTION_MAX, IMPORT_MAX_BYTES, NAME_MAX, too_large_message

# Most effort first, as providers document them; "" leaves it to the model.
EFFORT_CHOICES = [("", "Model default")] + [
    (e, e) for e in ("max", "xhigh", "high", "medium", "low", "minimal", "none")
]
# data-model-picker: static/js/picker.js completes ids from the model catalogue (rows added later too).
MODEL_ATTRS = {
    "spellcheck": "false",
    "autocomplete": "off",
    "class": "mono",
    "placeholder": "provider/model",
    "data-model-picker": "",
}


class MemberForm(PlainLabels, forms.Form):
    """One panel member. Numbers stay text here so chat.panels words the range errors."""

    model = forms.CharField(max_length=200, required=False, widget=forms.TextInput(attrs=MODEL_ATTRS))
    label = forms.CharField(max_length=100, required=False, widget=forms.TextInput(attrs={"placeholder": "optional"}))
    temperature = forms.CharField(
        required=False, widget=forms.NumberInput(attrs={"min": 0, "max": 2, "step": "0.1", "placeholder": "default"})
    )
    max_tokens = forms.CharField(
        required=False,
        label="Max tokens",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_TOKENS_LIMIT, "step": 1, "placeholder": "default"}),
    )
    reasoning_effort = forms.ChoiceField(choices=EFFORT_CHOICES, required=False, label="Reasoning")
    system_prompt = forms.CharField(
        required=False, label="System prompt", widget=forms.Textarea(attrs={"rows": 2, "placeholder": "optional"})
    )

    def member(self) -> dict[str, Any] | None:
        """The member as config, or None for a row left entirely blank."""
        data = {k: v for k, v in self.cleaned_data.items() if v not in ("", None)}
        return data or None


# The editor's script adds and removes rows; validate_max is off so that a panel over the limit
# reaches chat.panels and gets its "at most … members" message.
MemberFormSet = forms.formset_factory(
    MemberForm, extra=0, max_num=MAX_PANEL_MEMBERS, absolute_max=50, validate_max=False
)


def _domains_text(domains: list[str]) -> str:
    return "\n".join(domains)


def _split_domains(text: str) -> list[str]:
    return [d for d in re.split(r"[\s,]+", text or "") if d]


class PresetForm(PlainLabels, forms.Form):
    name = forms.CharField(max_length=NAME_MAX)
    description = forms.CharField(max_length=DESCRIPTION_MAX, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    analyst = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs=MODEL_ATTRS),
        help_text="Compares the answers; runs at temperature 0.",
    )
    writer = forms.CharField(
        max_length=200, widget=forms.TextInput(attrs=MODEL_ATTRS), help_text="Writes the fused answer."
    )
    fallback_analyst = forms.CharField(
        max_length=200,
        required=False,
        label="Fallback analyst",
        widget=forms.TextInput(attrs={**MODEL_ATTRS, "placeholder": "optional"}),
    )
    fallback_writer = forms.CharField(
        max_length=200,
        required=False,
        label="Fallback writer",
        widget=forms.TextInput(attrs={**MODEL_ATTRS, "placeholder": "optional"}),
    )
    follow_up_mode = forms.ChoiceField(
        label="Follow-ups",
        choices=[
            (FollowUpMode.FUSED, "Shared: everyone sees the fused answers"),
            (FollowUpMode.PER_MEMBER, "Per member: each sees its own answers"),
        ],
        initial=FollowUpMode.FUSED,
    )
    web_tools = forms.BooleanField(required=False, label="Web search and fetch for members")
    analyst_tools = forms.BooleanField(required=False, label="Let the analyst check claims with the same tools")
    server_tools = forms.BooleanField(
        required=False,
        label="Use OpenRouter's own server tools for members it serves",
    )
    max_tool_calls = forms.CharField(
        required=False,
        label="Max tool calls",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_TOOL_CALLS_LIMIT, "step": 1}),
    )
    excluded_domains = forms.CharField(
        required=False,
        label="Excluded from search",
        widget=forms.Textarea(attrs={"rows": 2, "class": "mono"}),
        help_text="One domain per line, e.g. example.com.",
    )
    blocked_domains = forms.CharField(
        required=False,
        label="Blocked from fetching",
        widget=forms.Textarea(attrs={"rows": 2, "class": "mono"}),
        help_text="One domain per line.",
    )

    @classmethod
    def initial_for(cls, *, name: str, description: str, config: dict[str, Any]) -> dict[str, Any]:
        research = {**default_research(), **(config.get("research") or {})}
        return {
            "name": name,
            "description": description,
            "analyst": (config.get("analyst") or {}).get("model", ""),
            "writer": (config.get("writer") or {}).get("model", ""),
            "fallback_analyst": (config.get("fallback_analyst") or {}).get("model", ""),
            "fallback_writer": (config.get("fallback_writer") or {}).get("model", ""),
            "follow_up_mode": config.get("follow_up_mode") or FollowUpMode.FUSED,
            "web_tools": research["web_tools"],
            "analyst_tools": bool(research.get("analyst_tools")),
            "server_tools": bool(research.get("server_tools")),
            "max_tool_calls": research["max_tool_calls"],
            "excluded_domains": _domains_text(research["excluded_domains"]),
            "blocked_domains": _domains_text(research["blocked_domains"]),
        }

    def config(self, members: list[dict[str, Any]]) -> dict[str, Any]:
        """The config to validate (chat.presets.check_config), from valid forms."""
        d = self.cleaned_data

        def spec(name: str) -> dict[str, str] | None:
            model = d[name].strip()
            return {"model": model} if model else None

        return {
            "members": members,
            "analyst": spec("analyst"),
            "writer": spec("writer"),
            "fallback_analyst": spec("fallback_analyst"),
            "fallback_writer": spec("fallback_writer"),
            "follow_up_mode": d["follow_up_mode"],
            "research": {
                "web_tools": d["web_tools"],
                "analyst_tools": d["analyst_tools"],
                "server_tools": d["server_tools"],
                "max_tool_calls": d["max_tool_calls"].strip(),
                "excluded_domains": _split_domains(d["excluded_domains"]),
                "blocked_domains": _split_domains(d["blocked_domains"]),
            },
        }


def member_initial(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: "" if m.get(k) is None else m[k] for k in MemberForm.base_fields} for m in config.get("members") or []]


class ImportForm(PlainLabels, forms.Form):
    file = forms.FileField(required=False, label="JSON file")
    text = forms.CharField(
        required=False,
        label="…or paste the JSON",
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono", "spellcheck": "false"}),
    )
    name = forms.CharField(
        max_length=NAME_MAX,
        required=False,
        label="Name (optional)",
        help_text="Leave empty to keep the name in the file.",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        upload = data.get("file")
        if upload is not None:
            if upload.size > IMPORT_MAX_BYTES:
                raise forms.ValidationError(too_large_message(upload.size))
            data["payload"] = upload.read()
        elif (data.get("text") or "").strip():
            data["payload"] = data["text"]
        else:
            raise forms.ValidationError("Choose a JSON file or paste the JSON.")
        return data
