"""Settings → API tokens: the name of a new token. chat.api.tokens.api_token_create validates it."""

from __future__ import annotations

from django import forms

from chat.api.tokens import MAX_NAME_CHARS
from chat.forms._common import PlainLabels


class ApiTokenForm(PlainLabels, forms.Form):
    # Not required here: an empty name reaches the service, whose message says what to write.
    name = forms.CharField(
        required=False,
        strip=True,
        widget=forms.TextInput(
            attrs={"maxlength": MAX_NAME_CHARS, "autocomplete": "off", "spellcheck": "false", "aria-required": "true"}
        ),
        help_text="Say where it will be used, e.g. “laptop scripts” or “CI”, so you know which one to revoke.",
    )
