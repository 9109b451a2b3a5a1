"""`manage.py api_token create|list|revoke` — users' API tokens from the terminal.

* ``create --user NAME --name LABEL`` prints the new token and nothing else on stdout, so
  ``TOKEN=$(manage.py api_token create …)`` works; a note goes to stderr. It is shown only this once.
* ``list [--user NAME]`` prints a table of tokens: never a token, nor its hash.
* ``revoke ID`` or ``revoke --user NAME --name LABEL`` (every active token of that name) says what
  it revoked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from chat.api import tokens
from chat.models import ApiToken

COLUMNS = ("id", "user", "name", "hint", "created", "last used", "status")


def _when(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else "never"


def _status(token: ApiToken) -> str:
    return f"revoked {_when(token.revoked_at)}" if token.revoked_at else "active"


def _describe(token: ApiToken) -> str:
    return f"token {token.pk} “{token.name}” ({token.hint}…) of {token.user.get_username()}"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


class Command(BaseCommand):
    help = "Create, list or revoke users' API tokens (Authorization: Bearer fsn_…)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="{create,list,revoke}", required=True)
        create = actions.add_parser("create", help="Make a token; prints it, and only it, on stdout.")
        create.add_argument("--user", required=True, help="The username the token acts as.")
        create.add_argument("--name", required=True, help="A label, e.g. the script or machine using it.")
        listing = actions.add_parser("list", help="A table of tokens (never the tokens themselves).")
        listing.add_argument("--user", help="Only this user's tokens.")
        revoke = actions.add_parser("revoke", help="Revoke a token by id, or a user's active tokens of a name.")
        revoke.add_argument("id", nargs="?", type=int, help="The token's id (see `list`).")
        revoke.add_argument("--user", help="With --name: revoke this user's active tokens of that name.")
        revoke.add_argument("--name")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(username=options["user"], name=options["name"])
        elif action == "list":
            self._list(username=options["user"])
        else:
            self._revoke(pk=options["id"], username=options["user"], name=options["name"])

    def _user(self, username: str) -> User:
        try:
            return get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None

    def _create(self, *, username: str, name: str) -> None:
        user = self._user(username)
        try:
            new = tokens.api_token_create(user=user, name=name)
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(new.secret)
        self.stderr.write(f"Made {_describe(new.token)}. It is shown only this once: copy it now.")
        if not user.is_active:
            self.stderr.write(f"{username} is deactivated: the token is refused until the account is active again.")

    def _list(self, *, username: str | None) -> None:
        found = ApiToken.objects.select_related("user").order_by("-created_at", "-pk")
        if username is not None:
            found = found.filter(user=self._user(username))
        rows = [
            (
                str(t.pk),
                t.user.get_username(),
                t.name,
                f"{t.hint}…",
                _when(t.created_at),
                _when(t.last_used_at),
                _status(t),
            )
            for t in found
        ]
        if not rows:
            self.stdout.write(f"{username} has no API tokens." if username else "No API tokens.")
            return
        self.stdout.write(_table([COLUMNS, *rows]))

    def _revoke(self, *, pk: int | None, username: str | None, name: str | None) -> None:
        if pk is not None and (username or name):
            raise CommandError("Give a token id, or --user and --name, not both.")
        if pk is not None:
            token = ApiToken.objects.select_related("user").filter(pk=pk).first()
            if token is None:
                raise CommandError(f"No API token with id {pk}.")
            if token.revoked_at is not None:
                self.stdout.write(f"Nothing to do: {_describe(token)} was revoked {_when(token.revoked_at)}.")
                return
            found = [token]
        elif username and name:
            user = self._user(username)
            label = " ".join(name.split())  # as api_token_create stored it
            found = list(tokens.api_token_list_for_user(user=user).filter(name=label, revoked_at=None))
            if not found:
                raise CommandError(f"{username} has no active API token named {label!r}.")
        else:
            raise CommandError("Give a token id (see `api_token list`), or --user and --name.")
        for token in found:
            tokens.api_token_revoke(token=token)
            self.stdout.write(f"Revoked {_describe(token)}.")
