"""`manage.py mcp --user NAME` — the fusion MCP tool over stdio, for desktop agents.

The agent starts this command and speaks MCP on its stdin and stdout, so nothing else may write
to stdout: logs go to stderr. Runs are started as NAME, like that user's runs in the chatroom
(the same limits, spend and keys), and can be opened there afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.api.mcp import serve_stdio


class Command(BaseCommand):
    help = "Serve the fusion MCP tool over stdio, acting for --user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="The username whose runs, presets and limits apply.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"No active user {options['user']!r}: create one or name another with --user.")
        asyncio.run(serve_stdio(user=user))
