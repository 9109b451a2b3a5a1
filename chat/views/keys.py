"""Settings → Keys: a user's own provider keys. Write-only: a page shows a key's last four characters.

Views parse, authorize (a key is only ever looked up through its owner), call one service in
chat/keys.py and respond. No response, log line or message ever carries the key itself.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from chat import keys
from chat.models import ProviderKey
from chat.views._common import AuthedRequest, not_found_is_404, sidebar


def _providers(user: User) -> list[dict[str, object]]:
    """Every configured provider: the user's key (if any), what runs use otherwise, where it goes."""
    stored = {k.provider: k for k in ProviderKey.objects.filter(user=user)}
    sources = keys.key_sources(user=user)
    return [
        {
            "name": name,
            "title": keys.provider_title(name),
            "base_url": keys.provider_base_url(name),
            "key": stored.get(name),
            "source": sources[name],
        }
        for name in keys.provider_names()
    ]


@login_required
@sensitive_post_parameters("key")
@require_http_methods(["GET", "POST"])
def keys_page(request: AuthedRequest) -> HttpResponse:
    error_for, error = "", ""
    if request.method == "POST":
        provider = request.POST.get("provider", "")
        try:
            keys.key_set(user=request.user, provider=provider, raw=request.POST.get("key", ""))
        except keys.InvalidKey as exc:
            error_for, error = provider, str(exc)
        else:
            messages.success(request, f"Saved your {keys.provider_title(provider)} key.")
            return redirect("keys")
    context = {**sidebar(request), "providers": _providers(request.user), "error_for": error_for, "error": error}
    return render(request, "settings/keys.html", context, status=400 if error else 200)


@login_required
@require_POST
@not_found_is_404
def key_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    key = keys.key_get_for_user(user=request.user, pk=pk)
    keys.key_delete(user=request.user, provider=key.provider)
    messages.success(request, f"Deleted your {keys.provider_title(key.provider)} key.")
    return redirect("keys")
