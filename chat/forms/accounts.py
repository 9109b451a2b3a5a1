"""Accounts forms: sign-in, sign-up, password change and Settings → Invites."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm, UserCreationForm

from chat.forms._common import PlainLabels


class SignUpForm(PlainLabels, UserCreationForm):
    """Django's own form: username + password twice, checked by AUTH_PASSWORD_VALIDATORS."""


class SignInForm(PlainLabels, AuthenticationForm):
    pass


class InviteForm(PlainLabels, forms.Form):
    """Settings → Invites: a note for staff's own records and how long the link stays valid."""

    note = forms.CharField(
        max_length=200,
        required=False,
        strip=True,
        help_text="Only staff see it, e.g. who the invite is for.",
    )
    expires_in_days = forms.TypedChoiceField(
        label="Valid for",
        coerce=int,
        initial=7,
        choices=[(1, "1 day"), (7, "7 days"), (30, "30 days"), (0, "No expiry")],
    )


class ChangePasswordForm(PlainLabels, PasswordChangeForm):
    pass
