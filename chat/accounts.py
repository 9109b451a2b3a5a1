"""Accounts: who may sign up (FUSION_SIGNUP, invites) and the sign-in lockout (django-axes).

Services are keyword-only functions named ``<entity>_<action>``. An invite is redeemed in the
transaction that creates its user, so a failed sign-up leaves the invite unused and a used
invite always has its user.
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import dateformat, timezone

from chat.errors import NotFound
from chat.models import Invite

SignupMode = Literal["open", "invite", "closed"]
InviteStatus = Literal["open", "used", "revoked", "expired"]


class SignupRefused(Exception):
    """Sign-up is not possible as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- sign-up


def signup_mode() -> SignupMode:
    return cast(SignupMode, settings.FUSION_SIGNUP)  # settings.py refuses any other value at start-up


def user_signup(*, username: str, password: str, invite_token: str = "") -> User:
    """Create an account (the form validated username and password); redeems the invite in invite mode."""
    mode = signup_mode()
    if mode == "closed":
        raise SignupRefused(signup_closed_message())
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, password=password)
        if mode == "invite":
            invite_redeem(token=invite_token, user=user)  # raising rolls the new user back
    return user


def signup_closed_message() -> str:
    return "Sign-up is closed on this server. Ask its administrator for an account."


# --------------------------------------------------------------------------- invites


def invite_create(*, created_by: User, note: str = "", expires_at: datetime | None = None) -> Invite:
    return Invite.objects.create(
        token=secrets.token_urlsafe(32), created_by=created_by, note=note.strip(), expires_at=expires_at
    )


def invite_list() -> QuerySet[Invite]:
    return Invite.objects.select_related("created_by", "used_by")


def invite_get(*, pk: int) -> Invite:
    try:
        return Invite.objects.get(pk=pk)
    except Invite.DoesNotExist:
        raise NotFound("No such invite.") from None


def invite_revoke(*, invite: Invite) -> None:
    """Revoking a used invite changes nothing: the account it made stays."""
    Invite.objects.filter(pk=invite.pk, used_by__isnull=True).update(revoked=True)
    invite.refresh_from_db()


def invite_status(*, invite: Invite, now: datetime | None = None) -> InviteStatus:
    if invite.used_by_id is not None or invite.used_at is not None:
        return "used"
    if invite.revoked:
        return "revoked"
    if invite.expires_at is not None and invite.expires_at <= (now or timezone.now()):
        return "expired"
    return "open"


def invite_check(*, token: str) -> Invite:
    """The open invite with this token, or SignupRefused saying what is wrong with the link."""
    if not token:
        raise SignupRefused("Sign-up on this server is by invitation. Open the invite link you were sent.")
    invite = Invite.objects.filter(token=token).first()
    if invite is None:
        raise SignupRefused("This invite link is not valid. Check that you copied all of it, or ask for a new one.")
    status = invite_status(invite=invite)
    if status == "used":
        raise SignupRefused("This invite link has already been used. Ask whoever sent it for a new one.")
    if status == "revoked":
        raise SignupRefused("This invite link was withdrawn. Ask whoever sent it for a new one.")
    if status == "expired":
        when = dateformat.format(timezone.localtime(invite.expires_at), "j M Y, H:i T")
        raise SignupRefused(f"This invite link expired on {when}. Ask whoever sent it for a new one.")
    return invite


def invite_redeem(*, token: str, user: User) -> Invite:
    """Mark the invite used by ``user``; call inside the transaction that created the user."""
    invite = invite_check(token=token)
    now = timezone.now()
    # Conditional on still being open, so two sign-ups racing for one link cannot both win.
    claimed = (
        Invite.objects.filter(pk=invite.pk, used_by__isnull=True, used_at__isnull=True, revoked=False)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .update(used_by=user, used_at=now)
    )
    if not claimed:
        raise SignupRefused("This invite link has just been used. Ask whoever sent it for a new one.")
    invite.refresh_from_db()
    return invite


# --------------------------------------------------------------------------- sign-in lockout


class LockoutBackend(AxesStandaloneBackend):
    """django-axes' check, skipped when authenticate() gets no request.

    Only code calls authenticate() without one (the test client's ``login()``, scripts); the
    sign-in page and /admin/login/ always pass the request, so they are always checked.
    """

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def lockout_wait_text(wait: timedelta) -> str:
    seconds = max(1, math.ceil(wait.total_seconds()))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_response(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page, saying how long to wait, with status 429.

    Every attempt while locked out restarts the cool-off (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT),
    and this response follows such an attempt, so the wait is the whole cool-off.
    """
    from chat.forms import SignInForm

    wait = get_cool_off(request) or timedelta(0)
    context = {
        "form": SignInForm(request),
        "next": request.POST.get("next", ""),
        "signup_mode": signup_mode(),
        "lockout_wait": lockout_wait_text(wait),
    }
    response = render(request, "accounts/login.html", context, status=settings.AXES_HTTP_RESPONSE_CODE)
    response["Retry-After"] = str(max(1, math.ceil(wait.total_seconds())))
    return response
