"""API tokens: made, listed, revoked and checked here (``api_token_<action>``).

A token is ``fsn_`` and 40 random base62 characters: the prefix lets secret scanners match it, the
rest carries 238 bits, so a plain SHA-256 is a safe thing to store (no salt or slow hash is needed
for a random secret of that size). The token is returned once, by ``api_token_create``.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import unicodedata
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from chat.errors import NotFound
from chat.models import ApiToken

PREFIX = "fsn_"
SECRET_CHARS = 40
_ALPHABET = string.ascii_letters + string.digits
MAX_NAME_CHARS = 100
# last_used_at is written at most this often per token (every request would be a write).
LAST_USED_EVERY_S = 60


class TokenError(Exception):
    """A name a user gave that cannot be used; the message says why."""


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once, never stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX) and len(value) == len(PREFIX) + SECRET_CHARS


def api_token_create(*, user: User, name: str) -> NewToken:
    name = " ".join(str(name or "").split())
    if not name:
        raise TokenError("Give the token a name, such as the script or machine that will use it.")
    if len(name) > MAX_NAME_CHARS:
        raise TokenError(f"The name is {len(name)} characters; the limit is {MAX_NAME_CHARS}.")
    # PostgreSQL refuses NUL in text, and an escape sequence would reach the terminal of whoever
    # runs `manage.py api_token list`.
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise TokenError("The name cannot contain control characters; use letters, digits and punctuation.")
    secret = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
    token = ApiToken.objects.create(user=user, name=name, token_hash=_digest(secret), hint=secret[: len(PREFIX) + 6])
    return NewToken(token=token, secret=secret)


def api_token_list_for_user(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")


def api_token_get_for_user(*, user: User, pk: int | str) -> ApiToken:
    """The user's token ``pk``; NotFound for a missing id and for someone else's."""
    try:
        return ApiToken.objects.get(pk=int(pk), user=user)
    except (ApiToken.DoesNotExist, TypeError, ValueError, OverflowError):
        raise NotFound("No such token.") from None


def api_token_revoke(*, token: ApiToken) -> None:
    """Revoked at once: the next request with it gets 401. The row stays, so the list shows it."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


def api_token_authenticate(*, secret: str) -> ApiToken | None:
    """The live token for *secret* (its user loaded), or None: unknown, revoked, or its user is
    deactivated. Marks it used."""
    if not looks_like_token(secret):
        return None
    token = ApiToken.objects.select_related("user").filter(token_hash=_digest(secret), revoked_at=None).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= LAST_USED_EVERY_S:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
