"""The composer's forms: the panel (members one per line, analyst, writer), the first prompt, a rename."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.models import FollowUpMode
from chat.panels import PanelError, parse_panel


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)


def panel_members_text(panel: dict[str, Any]) -> str:
    """The members textarea's text: one model per line, an optional temperature after it."""
    lines = []
    for member in panel.get("members") or []:
        line = member.get("model", "")
        if member.get("temperature") is not None:
            line += f" {member['temperature']:g}"
        lines.append(line)
    return "\n".join(lines)


def parse_members_text(text: str) -> list[dict[str, Any]]:
    """``model [temperature]`` per line; blank lines and ``#`` comments are skipped."""
    members: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 2:
            raise PanelError(
                f"Line {number}: write a model id, then optionally a temperature (e.g. “openai/gpt-5.1 0.7”)."
            )
        member: dict[str, Any] = {"model": parts[0]}
        if len(parts) == 2:
            member["temperature"] = parts[1]
        members.append(member)
    return members


# data-model-picker: static/js/picker.js completes the id from the model catalogue.
MODEL_INPUT_ATTRS = {"spellcheck": "false", "autocomplete": "off", "data-model-picker": ""}


class PanelForm(forms.Form):
    """The composer's panel: members (one per line), analyst, writer and the follow-up mode.

    ``panel`` in cleaned_data is normalised by chat.panels.parse_panel, the same validation the
    websocket's ``start`` goes through.
    """

    members = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off", "data-model-picker": ""}),
        help_text=f"One model per line, up to {MAX_PANEL_MEMBERS}; an optional temperature after a space.",
    )
    analyst = forms.CharField(max_length=200, widget=forms.TextInput(attrs=MODEL_INPUT_ATTRS))
    writer = forms.CharField(max_length=200, widget=forms.TextInput(attrs=MODEL_INPUT_ATTRS))
    follow_up_mode = forms.ChoiceField(
        choices=[
            (FollowUpMode.FUSED, "Shared: everyone sees the fused answers"),
            (FollowUpMode.PER_MEMBER, "Per member: each sees its own answers"),
        ],
        initial=FollowUpMode.FUSED,
    )

    @classmethod
    def initial_for(cls, *, panel: dict[str, Any], follow_up_mode: str) -> dict[str, Any]:
        return {
            "members": panel_members_text(panel),
            "analyst": (panel.get("analyst") or {}).get("model", ""),
            "writer": (panel.get("writer") or {}).get("model", ""),
            "follow_up_mode": follow_up_mode,
        }

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        try:
            data["panel"] = parse_panel(
                {
                    "members": parse_members_text(data["members"]),
                    "analyst": {"model": data["analyst"].strip()},
                    "writer": {"model": data["writer"].strip()},
                }
            )
        except PanelError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


class ComposerForm(PanelForm):
    """The home page's composer: the panel plus the first prompt."""

    prompt = forms.CharField(strip=False, widget=forms.Textarea(attrs={"rows": 1}))

    def clean_prompt(self) -> str:
        prompt = self.cleaned_data["prompt"].strip()
        limit = settings.FUSION_MAX_PROMPT_CHARS
        if not prompt:
            raise forms.ValidationError("Write a prompt first.")
        if len(prompt) > limit:
            raise forms.ValidationError(f"The prompt is {len(prompt)} characters; the limit is {limit}.")
        return prompt
