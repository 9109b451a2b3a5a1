"""The app's forms, one module per area. They collect and shape input; the services validate it.

The names below are re-exported so ``from chat.forms import SignInForm`` keeps working.
"""

from __future__ import annotations

from chat.forms.accounts import ChangePasswordForm, InviteForm, SignInForm, SignUpForm
from chat.forms.conversations import ComposerForm, PanelForm, RenameForm
from chat.forms.presets import ImportForm, MemberFormSet, PresetForm

__all__ = [
    "ChangePasswordForm",
    "ComposerForm",
    "ImportForm",
    "InviteForm",
    "MemberFormSet",
    "PanelForm",
    "PresetForm",
    "RenameForm",
    "SignInForm",
    "SignUpForm",
]
