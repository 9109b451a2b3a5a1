"""Token buckets: websocket frames per socket and per user, sign-in attempts per address.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; each request
takes one. :class:`Bucket` lives in one object (a socket's own bucket). :func:`take` and
:func:`atake` use a bucket shared by key: in Redis when ``REDIS_URL`` is set, so the limit holds
across every process, else in this process. If Redis cannot be reached the process-local bucket
answers instead (a limit that is briefly per process beats locking everyone out).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

KEY_PREFIX = "fusion:rl:"
_MAX_LOCAL_KEYS = 20_000

# Atomic refill-and-take in Redis, timed by the Redis server's clock (the same for every process).
_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1])
local ts = tonumber(data[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until one token is back, when refused


@dataclass
class Bucket:
    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def take(self, now: float | None = None) -> Decision:
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens = float(self.burst)
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return Decision(True)
        return Decision(False, (1 - self.tokens) / self.rate if self.rate > 0 else 60.0)


_local: OrderedDict[str, Bucket] = OrderedDict()
_local_lock = threading.Lock()


def _take_local(key: str, rate: float, burst: int) -> Decision:
    with _local_lock:
        bucket = _local.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = Bucket(rate=rate, burst=burst)
            _local[key] = bucket
        _local.move_to_end(key)
        while len(_local) > _MAX_LOCAL_KEYS:
            _local.popitem(last=False)
        return bucket.take()


def _parse(reply: Any) -> Decision:
    allowed, retry = reply
    return Decision(bool(int(allowed)), float(retry.decode() if isinstance(retry, bytes) else retry))


def _disabled(rate: float, burst: int) -> bool:
    return rate <= 0 or burst <= 0


_sync_client: Any = None
_async_clients: dict[int, Any] = {}


def _redis_sync() -> Any:
    global _sync_client
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _sync_client


def _redis_async() -> Any:
    # One client per event loop: a redis.asyncio connection belongs to the loop that opened it.
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        _async_clients.clear()  # the old loops are gone (tests make one per test)
        _async_clients[id(loop)] = client
    return client


def take(key: str, *, rate: float, burst: int) -> Decision:
    """Take one token from the shared bucket *key* (sync code: views)."""
    if _disabled(rate, burst):
        return Decision(True)
    if settings.REDIS_URL:
        try:
            return _parse(_redis_sync().eval(_LUA, 1, KEY_PREFIX + key, rate, burst))
        except Exception:
            log.warning("rate limit: Redis unavailable, using this process's bucket", exc_info=True)
    return _take_local(key, rate, burst)


async def atake(key: str, *, rate: float, burst: int) -> Decision:
    """Take one token from the shared bucket *key* (async code: consumers)."""
    if _disabled(rate, burst):
        return Decision(True)
    if settings.REDIS_URL:
        try:
            return _parse(await _redis_async().eval(_LUA, 1, KEY_PREFIX + key, rate, burst))
        except Exception:
            log.warning("rate limit: Redis unavailable, using this process's bucket", exc_info=True)
    return _take_local(key, rate, burst)


def reset_local() -> None:
    """Forget the process-local buckets (tests)."""
    with _local_lock:
        _local.clear()


# --------------------------------------------------------------------------- sign-in


class SignInRateLimitMiddleware:
    """Sign-in attempts (POSTs to our sign-in page and the admin's) per client address.

    A token bucket in front of django-axes' lockout: axes counts failures per account and per
    address; this caps how fast one address may try at all, right or wrong. Refused: the sign-in
    page again, status 429, saying how long to wait, and ``Retry-After``.
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._paths: frozenset[str] | None = None

    def __call__(self, request: Any) -> Any:
        if request.method == "POST" and request.path in self.paths():
            decision = take(
                f"signin:{request.META.get('REMOTE_ADDR', '')}",
                rate=settings.FUSION_LOGIN_RATE_PER_MIN / 60,
                burst=settings.FUSION_LOGIN_BURST,
            )
            if not decision.allowed:
                return self.refused(request, decision.retry_after)
        return self.get_response(request)

    def paths(self) -> frozenset[str]:
        if self._paths is None:
            from django.urls import reverse

            self._paths = frozenset({reverse("login"), reverse("admin:login")})
        return self._paths

    @staticmethod
    def refused(request: Any, retry_after: float) -> Any:
        import math
        from datetime import timedelta

        from django.shortcuts import render

        from chat.accounts import lockout_wait_text, signup_mode
        from chat.forms import SignInForm

        seconds = max(1, math.ceil(retry_after))
        context = {
            "form": SignInForm(request),
            "next": request.POST.get("next", ""),
            "signup_mode": signup_mode(),
            "rate_wait": lockout_wait_text(timedelta(seconds=seconds)),
        }
        response = render(request, "accounts/login.html", context, status=429)
        response["Retry-After"] = str(seconds)
        return response
