"""A live Daphne on a file SQLite database, with users made through manage.py, for socket tests.

The tests that must drive real websockets (origin, session, frame size, nesting, rate limits,
recovery) share this: :func:`live_app` starts the scripted upstream in a thread, migrates a fresh
database, starts Daphne with the given environment, and hands back a :class:`LiveApp` that signs
users in over HTTP and runs ORM snippets in the server's database through ``manage.py shell``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.testing.scripted import ScriptedUpstream
from tests.daphne import ROOT, free_port, start_daphne, stop_process, wait_until_healthy

ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class LiveApp:
    url: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    upstream: ScriptedUpstream

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def orm(self, code: str) -> Any:
        """Run *code* in the server's database (``manage.py shell``); it sets ``result`` (JSON)."""
        script = (
            "import json\nfrom chat.models import *\nfrom django.contrib.auth.models import User\n"
            "result = None\n" + code + "\nprint('@@' + json.dumps(result, default=str))"
        )
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"manage.py shell failed:\n{done.stdout}\n{done.stderr}")
        line = next(line for line in done.stdout.splitlines()[::-1] if line.startswith("@@"))
        return json.loads(line[2:])

    async def aorm(self, code: str) -> Any:
        """``orm`` from async code, off the event loop: a test's open websockets keep answering
        (blocked for the second a shell takes, a client misses the server's close handshake, and
        the server then resets the connection, losing the close code)."""
        return await asyncio.to_thread(self.orm, code)

    def make_user(self, username: str, password: str) -> dict[str, int]:
        """A user with one conversation: {"user": id, "conversation": id}."""
        return self.orm(
            f"u = User.objects.create_user({username!r}, password={password!r})\n"
            "c = Conversation.objects.create(user=u, title='live')\n"
            "result = {'user': u.pk, 'conversation': c.pk}"
        )

    def sign_in(self, username: str, password: str) -> httpx.Client:
        """An HTTP client signed in through the sign-in form (its cookies are the session)."""
        client = httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)
        page = client.get("/accounts/login/")
        token = _csrf(page.text)
        response = client.post(
            "/accounts/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{self.url}/accounts/login/"},
        )
        assert response.status_code == 302, f"sign-in failed: {response.status_code} {response.text[:500]}"
        return client

    def post_form(self, client: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
        page = client.get(path)
        token = _csrf(page.text) if "csrfmiddlewaretoken" in page.text else client.cookies.get("csrftoken", "")
        return client.post(path, data={**data, "csrfmiddlewaretoken": token}, headers={"Referer": f"{self.url}{path}"})

    def cookie_header(self, client: httpx.Client) -> str:
        return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def _csrf(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@contextmanager
def live_app(
    tmp_path: Path, scripts: dict[str, Any], env: dict[str, str] | None = None, name: str = "live"
) -> Iterator[LiveApp]:
    ARTIFACTS.mkdir(exist_ok=True)
    upstream = ScriptedUpstream(scripts, time_scale=1.0).start_in_thread()
    port = free_port()
    full_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'live.sqlite3'}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": "",
        "OPENROUTER_BASE_URL": upstream.base_url,
        "OPENROUTER_API_KEY": "test",
        "FUSION_ALLOW_SERVER_KEY": "true",
        "FUSION_SIGNUP": "open",
        "FUSION_PROVIDERS": "",
        "FUSION_FETCH_TRUSTED_HOSTS": "",
        "FUSION_DEMO": "false",
        "REDIS_URL": "",
        # Every test signs in from 127.0.0.1: the per-address sign-in bucket must not get in the way.
        "FUSION_LOGIN_RATE_PER_MIN": "6000",
        "FUSION_LOGIN_BURST": "1000",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    try:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrate.returncode != 0:
            pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)
        log_path = ARTIFACTS / f"{name}-daphne.log"
        log = log_path.open("wb")
        process = start_daphne(port, full_env, log)
        app = LiveApp(
            url=f"http://127.0.0.1:{port}",
            port=port,
            env=full_env,
            process=process,
            log_path=log_path,
            upstream=upstream,
        )
        try:
            wait_until_healthy(app.url, process, name="Daphne", log_tail=app.log_tail)
            yield app
        finally:
            stop_process(process)
            log.close()
    finally:
        upstream.stop()
