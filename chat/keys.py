"""Users' own provider keys: encrypted at rest, write-only, shown only as their last four characters.

Keys are encrypted with Fernet. FUSION_KEY_ENCRYPTION_KEYS lists Fernet keys: the first encrypts,
every one decrypts (MultiFernet), so an administrator puts a new key first, runs
``manage.py rotate_keys`` and then drops the old one. Unset, one key is derived from SECRET_KEY.

A decrypted key goes to exactly one place: the ``Provider`` of the same name in the registry a
run is built with (chat.engine.build_registry), whose base URL only the administrator sets.
Nothing here logs a key, and no page or export renders one.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from chat.errors import NotFound
from chat.memo import memoized
from chat.models import ProviderKey, UserLimits

log = logging.getLogger(__name__)

# Printable ASCII without spaces: a key goes into an HTTP header, so no CR/LF can sneak in.
KEY_RE = re.compile(r"[\x21-\x7e]{8,512}")
DEFAULT_PROVIDER = "openrouter"


class InvalidKey(ValueError):
    """A key a user typed that cannot be stored; the message says why."""


class KeyUnavailable(Exception):
    """A stored key that can no longer be decrypted (the encryption keys changed)."""


# --------------------------------------------------------------------------- encryption


def derive_key(secret: str) -> bytes:
    """A Fernet key derived from SECRET_KEY (HKDF-SHA256), for deployments that set none."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fusion-chatroom", info=b"provider-keys/v1")
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


@functools.lru_cache(maxsize=8)
def _multifernet(keys: tuple[str, ...], secret: str) -> MultiFernet:
    if not keys:
        log.warning(
            "FUSION_KEY_ENCRYPTION_KEYS is not set: provider keys are encrypted with a key derived "
            "from DJANGO_SECRET_KEY. Set FUSION_KEY_ENCRYPTION_KEYS in production."
        )
        return MultiFernet([Fernet(derive_key(secret))])
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "FUSION_KEY_ENCRYPTION_KEYS must be comma-separated Fernet keys (32 url-safe base64 bytes); "
            "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        ) from None


def _fernet() -> MultiFernet:
    return _multifernet(tuple(settings.FUSION_KEY_ENCRYPTION_KEYS), settings.SECRET_KEY)


def key_encrypt(raw: str) -> str:
    return _fernet().encrypt(raw.encode()).decode()


def key_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyUnavailable("The stored key cannot be decrypted with the server's encryption keys.") from None


# --------------------------------------------------------------------------- providers


def provider_names() -> list[str]:
    """Providers a user can store a key for: OpenRouter and every FUSION_PROVIDERS entry."""
    return [DEFAULT_PROVIDER, *settings.FUSION_PROVIDERS]


def provider_title(name: str) -> str:
    return "OpenRouter" if name == DEFAULT_PROVIDER else name


def provider_base_url(name: str) -> str:
    if name == DEFAULT_PROVIDER:
        return settings.OPENROUTER_BASE_URL
    return settings.FUSION_PROVIDERS[name]["base_url"]


def server_key(name: str) -> str:
    if name == DEFAULT_PROVIDER:
        return settings.OPENROUTER_API_KEY
    provider = settings.FUSION_PROVIDERS.get(name)
    return provider["api_key"] if provider else ""


def server_key_allowed(*, user: User) -> bool:
    """The user's override in the admin, else FUSION_ALLOW_SERVER_KEY."""
    override = memoized(
        ("keys", "allowed", user.pk),
        lambda: UserLimits.objects.filter(user=user).values_list("allow_server_key", flat=True).first(),
    )
    return settings.FUSION_ALLOW_SERVER_KEY if override is None else bool(override)


# --------------------------------------------------------------------------- selectors and services


def keys_for_user(user: User) -> list[tuple[str, str]]:
    """``(provider, last4)`` of the user's stored keys."""
    return list(ProviderKey.objects.filter(user=user).order_by("provider").values_list("provider", "last4"))


def key_get_for_user(*, user: User, pk: int) -> ProviderKey:
    """The user's key ``pk``; NotFound for a missing id and for someone else's alike."""
    try:
        return ProviderKey.objects.get(pk=pk, user=user)
    except ProviderKey.DoesNotExist:
        raise NotFound("No such key.") from None


def key_set(*, user: User, provider: str, raw: str) -> ProviderKey:
    """Store (or replace) the user's key for *provider*, encrypted."""
    if provider not in provider_names():
        raise InvalidKey("There is no such provider.")
    raw = (raw or "").strip()
    if not raw:
        raise InvalidKey(
            f"Nothing was saved: the key field was empty. Paste your {provider_title(provider)} API key, then save."
        )
    if not KEY_RE.fullmatch(raw):
        raise InvalidKey("Nothing was saved: a key is 8 to 512 printable characters, without spaces.")
    key, _ = ProviderKey.objects.update_or_create(
        user=user,
        provider=provider,
        defaults={"encrypted_key": key_encrypt(raw), "last4": raw[-4:], "updated_at": timezone.now()},
    )
    return key


def key_delete(*, user: User, provider: str) -> bool:
    deleted, _ = ProviderKey.objects.filter(user=user, provider=provider).delete()
    return bool(deleted)


def user_keys_decrypted(*, user: User) -> dict[str, str | KeyUnavailable]:
    """Provider → the user's raw key (or the reason it cannot be used). For the run's registry only."""

    def read() -> dict[str, str | KeyUnavailable]:
        return _decrypted(ProviderKey.objects.filter(user=user).values_list("provider", "encrypted_key"))

    return dict(memoized(("keys", "own", user.pk), read))


def _decrypted(stored: Iterable[tuple[str, str]]) -> dict[str, str | KeyUnavailable]:
    result: dict[str, str | KeyUnavailable] = {}
    for provider, token in stored:
        try:
            result[provider] = key_decrypt(token)
        except KeyUnavailable as exc:
            result[provider] = exc
    return result


def remember_user_keys(*, user_id: int, stored: Iterable[tuple[str, str]], allow_server_key: bool | None) -> None:
    """Hand a user's stored keys and server-key override, read for a batch of starts, to the
    reads of this unit of work (chat.memo): ``user_keys_decrypted`` and ``server_key_allowed``."""
    memoized(("keys", "own", user_id), lambda: _decrypted(stored))
    memoized(("keys", "allowed", user_id), lambda: allow_server_key)


def key_sources(*, user: User) -> dict[str, str]:
    """Provider → where a run of *user* gets its key.

    ``own`` (their stored key wins), ``server`` (the server's key, only when they are allowed
    it), ``keyless`` (a provider the administrator configured without any key, such as a local
    Ollama: nothing to protect), ``missing``, or ``unreadable`` (a stored key that no longer
    decrypts). OpenRouter always needs a key.
    """
    own = user_keys_decrypted(user=user)
    allowed = server_key_allowed(user=user)
    sources = {}
    for name in provider_names():
        mine = own.get(name)
        if isinstance(mine, str):
            sources[name] = "own"
        elif isinstance(mine, KeyUnavailable):
            sources[name] = "unreadable"
        elif server_key(name):
            sources[name] = "server" if allowed else "missing"
        else:
            sources[name] = "missing" if name == DEFAULT_PROVIDER else "keyless"
    return sources


def key_problems(*, user: User, providers: list[str]) -> list[str]:
    """Why a run needing these providers cannot use a key, as sentences a user can act on."""
    sources = key_sources(user=user)
    problems = []
    for name in dict.fromkeys(providers):
        title = provider_title(name)
        if sources.get(name) == "unreadable":
            problems.append(f"Your saved {title} key can no longer be read. Save it again in Settings → Keys.")
        elif sources.get(name) == "missing":
            problems.append(f"Add your {title} key in Settings → Keys.")
    return problems


def uses_server_key(*, user: User, providers: list[str]) -> bool:
    """Whether a run of *user* needing these providers is paid, at least in part, with a server key."""
    sources = key_sources(user=user)
    return any(sources.get(name) == "server" for name in providers)


def keys_rotate() -> tuple[int, int]:
    """Re-encrypt every stored key with the first encryption key; return (rotated, unreadable)."""
    fernet = _fernet()
    rotated = unreadable = 0
    for key in ProviderKey.objects.all().only("pk", "encrypted_key"):
        try:
            token = fernet.rotate(key.encrypted_key.encode()).decode()
        except InvalidToken:
            unreadable += 1
            continue
        ProviderKey.objects.filter(pk=key.pk).update(encrypted_key=token)
        rotated += 1
    return rotated, unreadable
