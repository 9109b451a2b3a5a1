"""Accounts pages: sign-in and sign-up (FUSION_SIGNUP); Settings → Invites is chat/views/invites.py.

Views parse, authorize, call one service in chat/accounts.py and respond. The sign-in lockout
itself is django-axes' (chat.accounts.LockoutBackend, chat.accounts.lockout_response).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import login
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from chat import accounts
from chat.forms.accounts import SignInForm, SignUpForm


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
