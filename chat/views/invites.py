"""Settings → Invites: staff make, list and revoke the sign-up links of FUSION_SIGNUP=invite.

Views parse, authorize (staff only; anyone else is told the page does not exist), call one
service in chat/accounts.py and respond.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from chat import accounts
from chat.forms.accounts import InviteForm
from chat.views._common import AuthedRequest, not_found_is_404, sidebar


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed in and staff; anyone else is told the page does not exist."""

    @login_required
    @wraps(view)
    def wrapper(request: AuthedRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


def _invite_link(request: HttpRequest, token: str) -> str:
    return request.build_absolute_uri(reverse("signup") + "?invite=" + token)


@staff_required
@require_http_methods(["GET", "POST"])
def invites_page(request: AuthedRequest) -> HttpResponse:
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
    context = {**sidebar(request), "form": form, "invites": invites, "signup_mode": accounts.signup_mode()}
    return render(request, "settings/invites.html", context, status=400 if form.errors else 200)


@staff_required
@require_POST
@not_found_is_404
def invite_revoke(request: AuthedRequest, pk: int) -> HttpResponse:
    invite = accounts.invite_get(pk=pk)
    accounts.invite_revoke(invite=invite)
    if invite.revoked:
        messages.success(request, "Invite revoked: its link no longer works.")
    else:
        messages.info(request, "That invite was already used; the account it made is unchanged.")
    return redirect("invites")
