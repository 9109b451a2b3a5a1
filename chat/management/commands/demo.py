"""`manage.py demo` (what `make demo` runs): the app against the project's scripted upstream.

Starts the scripted OpenAI-compatible upstream on 127.0.0.1, prepares a separate demo database
with a demo account, and serves the app with Daphne, every page marked as simulated.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

DEMO_PANEL = "sim/atlas,sim/borealis,sim/cirrus"
# The built-in presets on the scripted models (it answers any id, but its catalogue lists only these).
_SIM_ROLES = {"analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}
DEMO_BUILTIN_PRESETS = {
    "quality": {
        "name": "Quality",
        "description": "The whole simulated panel: atlas, borealis and cirrus.",
        "members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}, {"model": "sim/cirrus"}],
        **_SIM_ROLES,
    },
    "budget": {
        "name": "Budget",
        "description": "Two simulated members, cooler temperatures.",
        "members": [{"model": "sim/borealis", "temperature": 0.3}, {"model": "sim/cirrus", "temperature": 0.3}],
        **_SIM_ROLES,
    },
    "fast": {
        "name": "Fast",
        "description": "The two quickest simulated members, so neither waits long for the other.",
        "members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}],
        **_SIM_ROLES,
    },
    "self-panel": {
        "name": "Self-panel",
        "description": "One simulated model twice, at two temperatures.",
        "members": [{"model": "sim/atlas", "temperature": 0.7}, {"model": "sim/atlas", "temperature": 1.0}],
        **_SIM_ROLES,
    },
}


class Command(BaseCommand):
    help = "Serve the chatroom against simulated models, with a ready demo account."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--upstream-port", type=int, default=8787)
        parser.add_argument("--time-scale", type=float, default=1.0, help="<1 makes the simulated models faster.")

    def handle(self, *args: Any, **options: Any) -> None:
        base = Path(settings.BASE_DIR)
        upstream_url = f"http://127.0.0.1:{options['upstream_port']}/v1"
        env = {
            **os.environ,
            "DATABASE_URL": os.environ.get("DEMO_DATABASE_URL", f"sqlite:///{base / 'demo.sqlite3'}"),
            "OPENROUTER_BASE_URL": upstream_url,
            "OPENROUTER_API_KEY": "demo-key-not-secret",
            "FUSION_ALLOW_SERVER_KEY": "true",  # the demo account has no key of its own
            "FUSION_DEMO": "true",
            "FUSION_DEFAULT_PANEL": DEMO_PANEL,
            "FUSION_DEFAULT_ANALYST": "sim/analyst",
            "FUSION_DEFAULT_WRITER": "sim/writer",
            "FUSION_BUILTIN_PRESETS": json.dumps(DEMO_BUILTIN_PRESETS),
            "REDIS_URL": "",
        }
        py = sys.executable
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        children: list[subprocess.Popen[bytes]] = []
        upstream = subprocess.Popen(
            [
                py,
                "-m",
                "chat.testing.scripted",
                "--port",
                str(options["upstream_port"]),
                "--time-scale",
                str(options["time_scale"]),
            ],
            cwd=base,
            env=env,
        )
        children.append(upstream)
        try:
            self._wait_for(upstream_url + "/models", upstream)
            subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=base, env=env, check=True)
            subprocess.run([py, "manage.py", "recover_runs", "--all"], cwd=base, env=env, check=True)
            subprocess.run([py, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=base, env=env, check=True)
            password = secrets.token_urlsafe(9)
            made = subprocess.run(
                [py, "-c", _MAKE_USER, "demo", password],
                cwd=base,
                env={**env, "DJANGO_SETTINGS_MODULE": "fusionsite.settings"},
                check=True,
                capture_output=True,
                text=True,
            )
            token = made.stdout.strip().splitlines()[-1]
            url = f"http://{options['host']}:{options['port']}/"
            self.stdout.write(
                self.style.SUCCESS(
                    "\n  Fusion chatroom — demo mode (simulated models, no API key needed)\n"
                    f"  Open      {url}\n"
                    f"  Username  demo\n"
                    f"  Password  {password}\n"
                    f"  API       {url}api/v1  (token {token}; docs/api.md)\n"
                    f"  Upstream  {upstream_url} (scripted: {DEMO_PANEL}, sim/analyst, sim/writer)\n"
                )
            )
            daphne = [
                py,
                "-m",
                "daphne",
                "-b",
                options["host"],
                "-p",
                str(options["port"]),
                "fusionsite.asgi:application",
            ]
            server = subprocess.Popen(daphne, cwd=base, env=env)
            children.append(server)
            if server.wait() != 0:
                raise CommandError(
                    f"Daphne exited with status {server.returncode} (is port {options['port']} taken? try PORT=…)."
                )
        except KeyboardInterrupt:
            pass
        finally:
            # Stop the children whichever way we leave (Ctrl-C, SIGTERM, an error), so no server
            # is left running on the ports.
            for child in reversed(children):
                if child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        child.kill()

    def _wait_for(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        for _ in range(100):
            if proc.poll() is not None:
                raise CommandError("The scripted upstream did not start (is the port taken? try --upstream-port).")
            try:
                httpx.get(url, timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise CommandError(f"The scripted upstream did not answer at {url}.")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# Creates or resets the demo account; run in a child process that has the demo database.
_MAKE_USER = """
import sys, django
django.setup()
from django.contrib.auth import get_user_model
User = get_user_model()
user, _ = User.objects.get_or_create(username=sys.argv[1])
user.set_password(sys.argv[2])
user.save()
# A fresh API token for each start; the one of the last start is revoked (its secret is gone).
from chat.api.tokens import api_token_create, api_token_revoke
for old in user.api_tokens.filter(name="make demo", revoked_at=None):
    api_token_revoke(token=old)
print(api_token_create(user=user, name="make demo").secret)
"""
