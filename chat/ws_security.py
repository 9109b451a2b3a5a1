"""Websocket security: the exact Origin check, and sockets that end with their session.

* :class:`SameOriginValidator` wraps the websocket application. The handshake's ``Origin`` must
  equal the site's own origin — scheme, host and port, as the browser reached this server (the
  ``Host`` header, which must be in ``ALLOWED_HOSTS``, and ``ws``→``http`` / ``wss``→``https``,
  or ``https`` behind a proxy that sets ``SECURE_PROXY_SSL_HEADER``) — or be listed in
  ``CSRF_TRUSTED_ORIGINS``. Channels' ``AllowedHostsOriginValidator`` compared host names only,
  so a page on another port of the same host could drive a victim's socket with their cookie.
* :func:`sessions_valid` says which (session key, user id) pairs still stand for a signed-in,
  active user whose password has not changed since — the same test Django's ``get_user`` makes
  on every HTTP request — in two queries for any number of sessions.
* :class:`SessionWatch` is this process's register of open sockets by session. Every
  ``FUSION_SESSION_RECHECK_S`` it checks all of them at once and closes the sockets of ended
  sessions with 4401, idle or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any, Protocol
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chat.dbthread import in_db_thread

log = logging.getLogger(__name__)

CLOSE_SESSION_ENDED = 4401

# --------------------------------------------------------------------------- origins

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalise_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as ``https://Example.org:443``; None if it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
        or parts.password
    ):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return value.decode("latin1")
            except UnicodeDecodeError:  # pragma: no cover - latin1 decodes any byte
                return None
    return None


def _scheme(scope: dict[str, Any]) -> str:
    """http or https: how the browser reached us (behind a TLS proxy, what the proxy says)."""
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, expected = proxy
        header = name.lower().removeprefix("http_").replace("_", "-").encode("latin1")
        value = _header(scope, header)
        if value is not None and value.split(",")[0].strip() == expected:
            return "https"
    return "http"


def own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """The site's own origin for this handshake, or None when its Host is not an allowed host."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host.lower())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return _normalise_origin(f"{_scheme(scope)}://{host}")


def _trusted(origin: tuple[str, str, int]) -> bool:
    """CSRF_TRUSTED_ORIGINS, exactly as Django's CSRF check reads them (``https://*.example.org`` too)."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = _normalise_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if trusted[1] == host or (wildcard and host.endswith("." + trusted[1])):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    raw = _header(scope, b"origin")
    origin = _normalise_origin(raw) if raw else None
    if origin is None:
        return False
    return origin == own_origin(scope) or _trusted(origin)


class SameOriginValidator:
    """ASGI middleware: refuse (403 before accept) a websocket whose Origin is not the site's own."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            log.info(
                "websocket refused: origin %r is not this site's (host %r)",
                _header(scope, b"origin"),
                _header(scope, b"host"),
            )
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


# --------------------------------------------------------------------------- sessions


def _auth_hashes(user: AbstractBaseUser) -> list[str]:
    hashes = [user.get_session_auth_hash()]
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    if fallbacks is not None:
        hashes.extend(fallbacks())
    return hashes


def _session_data(keys: set[str]) -> dict[str, dict[str, Any]]:
    """Decoded data of the sessions that exist and have not expired, by session key."""
    engine = import_module(settings.SESSION_ENGINE)
    store_class = engine.SessionStore
    found: dict[str, dict[str, Any]] = {}
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
        model = store_class.get_model_class()
        rows = model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
        decoder = store_class()
        for key, data in rows.values_list("session_key", "session_data"):
            found[key] = decoder.decode(data)
        return found
    for key in keys:  # other engines: one load each (an expired or missing session loads empty)
        data = store_class(session_key=key).load()
        if data:
            found[key] = data
    return found


def sessions_valid(pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], bool]:
    """For each (session key, user id): does the session still sign that user in?

    The session must exist and not be expired, name the user and an installed backend, the user
    must be active, and the session's auth hash must match the user's password as it is now.
    """
    pairs = set(pairs)
    data = _session_data({key for key, _ in pairs if key})
    user_ids = {uid for _, uid in pairs}
    users = {u.pk: u for u in get_user_model()._default_manager.filter(pk__in=user_ids)}
    result: dict[tuple[str, int], bool] = {}
    for key, uid in pairs:
        session = data.get(key) if key else None
        user = users.get(uid)
        ok = (
            session is not None
            and user is not None
            and getattr(user, "is_active", True)
            and str(session.get(SESSION_KEY)) == str(uid)
            and session.get(BACKEND_SESSION_KEY) in settings.AUTHENTICATION_BACKENDS
            and any(constant_time_compare(str(session.get(HASH_SESSION_KEY, "")), h) for h in _auth_hashes(user))
        )
        result[(key, uid)] = bool(ok)
    return result


def inactive_users(user_ids: Iterable[int]) -> set[int]:
    """Which of these users are deactivated (or deleted)."""
    ids = set(user_ids)
    active = set(get_user_model()._default_manager.filter(pk__in=ids, is_active=True).values_list("pk", flat=True))
    return ids - active


class WatchedSocket(Protocol):
    session_key: str
    user_id: int

    async def session_ended(self) -> None: ...


class SessionWatch:
    """Open sockets of this process by session; ended sessions get their sockets closed."""

    def __init__(self, *, on_inactive_users: Callable[[set[int]], object] | None = None) -> None:
        self.sockets: set[WatchedSocket] = set()
        self.on_inactive_users = on_inactive_users
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, socket: WatchedSocket) -> None:
        self.sockets.add(socket)
        self._ensure_task()

    def discard(self, socket: WatchedSocket) -> None:
        self.sockets.discard(socket)

    async def still_valid(self, socket: WatchedSocket) -> bool:
        """Is this socket's session valid right now? (Asked before every frame that could start
        or steer a paid run: those are rare, so the answer is never taken from a cache.)"""
        pair = (socket.session_key, socket.user_id)
        # In a run-path database thread: a start must not queue behind every page's queries.
        valid = (await in_db_thread(sessions_valid, [pair]))[pair]
        if not valid:
            inactive = await in_db_thread(inactive_users, [socket.user_id])
            if inactive and self.on_inactive_users:
                self.on_inactive_users(inactive)
        return valid

    async def check_all(self) -> None:
        """One pass over every open socket: two queries, whatever the number of sockets."""
        sockets = list(self.sockets)
        if not sockets:
            return
        pairs = {(s.session_key, s.user_id) for s in sockets}
        valid = await database_sync_to_async(sessions_valid)(pairs)
        ended = [s for s in sockets if not valid.get((s.session_key, s.user_id), False)]
        if not ended:
            return
        inactive = await database_sync_to_async(inactive_users)({s.user_id for s in ended})
        if inactive and self.on_inactive_users:
            self.on_inactive_users(inactive)
        for socket in ended:
            self.sockets.discard(socket)
            try:
                await socket.session_ended()
            except Exception:  # one broken socket must not stop the watch
                log.exception("closing a socket whose session ended failed")

    def _ensure_task(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._task = loop.create_task(self._watch(), name="session-watch")

    async def _watch(self) -> None:
        while self.sockets:
            await asyncio.sleep(max(0.2, settings.FUSION_SESSION_RECHECK_S))
            try:
                await self.check_all()
            except Exception:
                log.exception("session watch pass failed")
