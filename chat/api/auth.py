"""Who an API request acts for: its bearer token, within the token's rate limit, and never a
request that is itself an inner call of a fusion (the depth header)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from chat import ratelimit
from chat.api.errors import ApiError
from chat.api.tokens import api_token_authenticate
from chat.dbthread import in_db_thread
from chat.fusion.client import DEPTH_HEADER
from chat.models import ApiToken


def bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def api_authenticate(request: HttpRequest) -> ApiToken:
    """The request's live token (its user loaded), after its rate limit; ApiError 401/429."""
    secret = bearer(request)
    if not secret:
        raise ApiError(401, "no_token", "Send your API token as 'Authorization: Bearer fsn_…' (Settings → API tokens).")
    token = await in_db_thread(api_token_authenticate, secret=secret)
    if token is None:
        raise ApiError(401, "bad_token", "This API token is not valid: it is unknown or was revoked.")
    decision = await ratelimit.atake(
        f"api:token:{token.pk}", rate=settings.FUSION_API_RATE_PER_MIN / 60, burst=settings.FUSION_API_BURST
    )
    if not decision.allowed:
        wait = round(max(decision.retry_after, 0.05), 2)
        raise ApiError(
            429, "rate_limited", f"Too many requests with this token. Wait {wait:g} s and try again.", retry_after=wait
        )
    return token


def refuse_inner_calls(request: HttpRequest) -> None:
    """A request that carries the depth header comes from a fusion's own inner call (a provider
    pointing back at this server): starting a fusion for it would recurse."""
    if request.headers.get(DEPTH_HEADER):
        raise ApiError(
            400,
            "fusion_recursion",
            f"This request is an inner call of a fusion ({DEPTH_HEADER} is set); it cannot start another fusion.",
        )
