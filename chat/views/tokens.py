"""Settings → API tokens: a user makes, lists and revokes the tokens scripts use for /api/v1.

Views parse, authorize (a token is only ever looked up through its owner), call one service in
chat/api/tokens.py and respond. A new token is shown once: the POST stores it in the session, the
page it redirects to pops it, so a reload (or the back button) shows it no more.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from chat.api import tokens
from chat.forms.tokens import ApiTokenForm
from chat.views._common import AuthedRequest, not_found_is_404, sidebar

# The session key holding {"pk", "secret"} between the POST and the one page that shows it.
NEW_TOKEN_SESSION_KEY = "api_token_new"


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def api_tokens_page(request: AuthedRequest) -> HttpResponse:
    form = ApiTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            new = tokens.api_token_create(user=request.user, name=form.cleaned_data["name"])
        except tokens.TokenError as exc:
            form.add_error("name", str(exc))
        else:
            request.session[NEW_TOKEN_SESSION_KEY] = {"pk": new.token.pk, "secret": new.secret}
            return redirect("api_tokens")
    token_list = list(tokens.api_token_list_for_user(user=request.user))
    new_token, new_secret = None, ""
    shown: dict[str, Any] = request.session.pop(NEW_TOKEN_SESSION_KEY, None) or {}
    if shown:
        # Its row in the user's own list gives the name for the heading; no row, nothing shown.
        new_token = next((t for t in token_list if t.pk == shown.get("pk")), None)
        new_secret = shown["secret"] if new_token else ""
    context = {
        **sidebar(request),
        "form": form,
        "tokens": token_list,
        "new_token": new_token,
        "new_secret": new_secret,
        "api_base_url": request.build_absolute_uri("/api/v1"),
    }
    return render(request, "settings/api_tokens.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
@not_found_is_404
def api_token_revoke(request: AuthedRequest, pk: int) -> HttpResponse:
    token = tokens.api_token_get_for_user(user=request.user, pk=pk)
    if token.revoked_at is None:
        tokens.api_token_revoke(token=token)
        messages.success(request, f"Revoked “{token.name}”: requests with it are refused from now on.")
    else:
        messages.info(request, f"“{token.name}” was already revoked.")
    return redirect("api_tokens")
