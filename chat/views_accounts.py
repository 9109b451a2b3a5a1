"""Accounts pages: sign-in, sign-up (FUSION_SIGNUP) and Settings → Invites for staff.

Views parse, authorize, call one service in chat/accounts.py and respond. The sign-in lockout
itself is django-axes' (chat.accounts.LockoutBackend, chat.accounts.lockout_response).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from chat import accounts
from chat.forms import InviteForm, SignInForm, SignUpForm
from chat.views import _sidebar


class SignInView(LoginView):
    template_name = "accounts/login.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "signup_mode": accounts.signup_mode()}


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    mode = accounts.signup_mode()
    token = request.GET.get("invite", "").strip()
    try:
        if mode == "closed":
            raise accounts.SignupRefused(accounts.signup_closed_message())
        if mode == "invite":
            accounts.invite_check(token=token)
    except accounts.SignupRefused as exc:
        return render(request, "accounts/signup.html", {"refusal": str(exc)}, status=403)

    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = accounts.user_signup(
                username=form.cleaned_data["username"], password=form.cleaned_data["password1"], invite_token=token
            )
        except accounts.SignupRefused as exc:  # the invite was used by someone else meanwhile
            return render(request, "accounts/signup.html", {"refusal": str(exc)}, status=403)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    context = {"form": form, "invited": mode == "invite"}
    return render(request, "accounts/signup.html", context, status=400 if form.errors else 200)


# --------------------------------------------------------------------------- Settings → Invites


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed in and staff; anyone else is told the page does not exist."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


def _invite_link(request: HttpRequest, token: str) -> str:
    return request.build_absolute_uri(reverse("signup") + "?invite=" + token)


@staff_required
@require_http_methods(["GET", "POST"])
def invites_page(request: HttpRequest) -> HttpResponse:
    form = InviteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        invite = accounts.invite_create(
            created_by=request.user,
            note=form.cleaned_data["note"],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        messages.success(request, "Invite created. Send the link below to the person you invite.")
        return redirect(reverse("invites") + f"#invite-{invite.pk}")
    now = timezone.now()
    invites = [
        {"invite": i, "status": accounts.invite_status(invite=i, now=now), "link": _invite_link(request, i.token)}
        for i in accounts.invite_list()
    ]
    context = {**_sidebar(request), "form": form, "invites": invites, "signup_mode": accounts.signup_mode()}
    return render(request, "settings/invites.html", context, status=400 if form.errors else 200)


@staff_required
@require_POST
def invite_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invite = accounts.invite_get(pk=pk)
    accounts.invite_revoke(invite=invite)
    if invite.revoked:
        messages.success(request, "Invite revoked: its link no longer works.")
    else:
        messages.info(request, "That invite was already used; the account it made is unchanged.")
    return redirect("invites")
