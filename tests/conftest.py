"""Shared fixtures: users alice and bob, so every permission test has a second user ready, and the
scripted upstream for any test that needs model calls.

* ``scripted`` (async) and ``scripted_thread`` (sync code) start :class:`ScriptedUpstream` servers
  with a module's own scripts and stop them, and every run of the run manager, after the test:
  ``up = await scripted(SCRIPTS, time_scale=0.1)``.
* :func:`serve_from` points the app's settings at such an upstream, as a signed-in user's runs
  see it: the server's OpenRouter key, allowed to users without a key of their own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from chat.testing.scripted import ScriptedUpstream

# Playwright's sync API runs an event loop in the test thread; Django's ORM calls from there are safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.org", "correct-horse-battery-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.org", "correct-horse-battery-2")


@pytest.fixture(autouse=True)
def _no_background_run_sweep(settings):
    # The run sweep (chat.runs.RunManager.ensure_sweeper) would outlive each test's event loop;
    # tests of the sweep turn it on themselves, and a live Daphne has it on.
    settings.FUSION_RUN_SWEEP_INTERVAL_S = 0


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    # The process-local token buckets (sign-in per address, websocket frames per user) would
    # otherwise carry one test's attempts into the next.
    from chat import ratelimit

    ratelimit.reset_local()


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    # The default PBKDF2 hasher costs ~0.3 s per user created; tests don't need the strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


SERVER_TEST_KEY = "server-key-for-tests"


def serve_from(
    settings: Any,
    up: ScriptedUpstream,
    *,
    key: str = SERVER_TEST_KEY,
    allow_server_key: bool = True,
    checkpoint_s: float | None = None,
) -> ScriptedUpstream:
    """Point the app at *up*: OpenRouter's base URL and the server's key (allowed to users, by default)."""
    settings.OPENROUTER_BASE_URL = up.base_url
    settings.OPENROUTER_API_KEY = key
    settings.FUSION_PROVIDERS = {}
    if allow_server_key is not None:
        settings.FUSION_ALLOW_SERVER_KEY = allow_server_key
    if checkpoint_s is not None:
        settings.FUSION_CHECKPOINT_INTERVAL_S = checkpoint_s
    return up


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedUpstream]]]:
    """Start scripted upstreams in this test's event loop; stopped (and every run with them) after it."""
    from chat.runs import manager

    started: list[ScriptedUpstream] = []

    async def start(scripts: dict[str, Any], time_scale: float = 0.01) -> ScriptedUpstream:
        up = await ScriptedUpstream(scripts, time_scale=time_scale).start()
        started.append(up)
        return up

    yield start
    await manager.shutdown()
    for up in started:
        await up.aclose()


@pytest.fixture
def scripted_thread() -> Iterator[Callable[..., ScriptedUpstream]]:
    """Start scripted upstreams in threads, for synchronous tests; stopped after the test."""
    started: list[ScriptedUpstream] = []

    def start(scripts: dict[str, Any], time_scale: float = 0.01) -> ScriptedUpstream:
        up = ScriptedUpstream(scripts, time_scale=time_scale).start_in_thread()
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
