"""What several view modules share: the sidebar's context and the NotFound → 404 mapping."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse

from chat import conversations
from chat.errors import NotFound
from chat.models import Conversation

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponse)


class AuthedRequest(HttpRequest):
    """A request behind ``login_required`` (or ``staff_required``): its user is signed in."""

    user: User  # AUTH_USER_MODEL is Django's own


def sidebar(request: AuthedRequest, *, current: Conversation | None = None) -> dict[str, Any]:
    """The conversation list every signed-in page shows, filtered by ``?q=``."""
    q = request.GET.get("q", "").strip()[:200]
    items = conversations.conversation_list_for_user(user=request.user, q=q)
    return {
        "sidebar_groups": conversations.conversation_sidebar_groups(items),
        "sidebar_q": q,
        "current": current,
    }


def not_found_is_404(view: Callable[P, R]) -> Callable[P, R]:
    """A service's :class:`~chat.errors.NotFound` becomes Django's 404 page.

    Services raise a domain error, not an HTTP one, so the run layer and the websocket can call
    them too. Another user's object and a missing one raise the same NotFound, so they get the
    same page here.
    """

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return view(*args, **kwargs)
        except NotFound as exc:
            raise Http404(str(exc)) from exc

    return wrapper
