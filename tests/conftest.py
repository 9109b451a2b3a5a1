"""Shared fixtures: users alice and bob, so every permission test has a second user ready."""

from __future__ import annotations

import os

import pytest

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
