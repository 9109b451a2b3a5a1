"""API tokens: the services (made, checked, revoked; only a hash stored), Settings → API tokens
(shown once, two users), ``manage.py api_token``, the admin, and a preset's API id on its page."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import presets
from chat.api import tokens
from chat.errors import NotFound
from chat.management.commands.api_token import Command as ApiTokenCommand
from chat.models import ApiToken

pytestmark = pytest.mark.django_db

TOKEN_RE = re.compile(r"fsn_[A-Za-z0-9]{40}")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_token(user: Any, name: str = "laptop") -> tokens.NewToken:
    return tokens.api_token_create(user=user, name=name)


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- services


class TestServices:
    def test_a_new_token_authenticates_as_its_user(self, alice):
        new = make_token(alice)
        assert TOKEN_RE.fullmatch(new.secret)
        found = tokens.api_token_authenticate(secret=new.secret)
        assert found is not None and found.pk == new.token.pk and found.user == alice

    def test_only_a_hash_of_the_token_is_stored(self, alice):
        new = make_token(alice)
        row = ApiToken.objects.values().get(pk=new.token.pk)
        assert row["token_hash"] == hashlib.sha256(new.secret.encode()).hexdigest() != new.secret
        assert not any(new.secret in str(value) for value in row.values())
        assert row["hint"] == new.secret[:10] and new.secret[10:] not in str(row)

    def test_every_token_is_different(self, alice):
        secrets = {make_token(alice, f"t{i}").secret for i in range(20)}
        assert len(secrets) == 20

    def test_authenticating_marks_it_used_at_most_once_a_minute(self, alice):
        new = make_token(alice)
        assert new.token.last_used_at is None
        tokens.api_token_authenticate(secret=new.secret)
        first = ApiToken.objects.get(pk=new.token.pk).last_used_at
        assert first is not None and timezone.now() - first < timedelta(seconds=5)
        tokens.api_token_authenticate(secret=new.secret)
        assert ApiToken.objects.get(pk=new.token.pk).last_used_at == first  # no write per request
        ApiToken.objects.filter(pk=new.token.pk).update(last_used_at=first - timedelta(minutes=2))
        tokens.api_token_authenticate(secret=new.secret)
        assert ApiToken.objects.get(pk=new.token.pk).last_used_at > first

    def test_a_revoked_token_is_refused(self, alice):
        new = make_token(alice)
        tokens.api_token_revoke(token=new.token)
        assert tokens.api_token_authenticate(secret=new.secret) is None
        assert ApiToken.objects.get(pk=new.token.pk).revoked_at is not None  # the row stays, for the list

    def test_revoking_twice_keeps_the_first_date(self, alice):
        new = make_token(alice)
        tokens.api_token_revoke(token=new.token)
        first = new.token.revoked_at
        tokens.api_token_revoke(token=ApiToken.objects.get(pk=new.token.pk))
        assert ApiToken.objects.get(pk=new.token.pk).revoked_at == first

    def test_a_deactivated_users_token_is_refused(self, alice):
        new = make_token(alice)
        alice.is_active = False
        alice.save()
        assert tokens.api_token_authenticate(secret=new.secret) is None

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda s: "",
            lambda s: "fsn_",
            lambda s: s[:-1],  # short
            lambda s: s + "A",  # long
            lambda s: s[:-1] + ("B" if s[-1] != "B" else "C"),  # one character off
            lambda s: s.swapcase(),
            lambda s: "Bearer " + s,
            lambda s: " " + s[:-1],
            lambda s: "xyz_" + s[4:],  # another prefix
            lambda s: "fsn_" + "é" * 40,
            lambda s: "fsn_" + "\x00" * 40,
            lambda s: "fsn_" + "\ud800" * 40,  # a lone surrogate, as a broken header might decode
            lambda s: hashlib.sha256(s.encode()).hexdigest(),  # the stored hash is not a token
            lambda s: "garbage",
        ],
    )
    def test_anything_but_the_exact_token_is_refused(self, alice, mangle):
        new = make_token(alice)
        assert tokens.api_token_authenticate(secret=mangle(new.secret)) is None
        assert ApiToken.objects.get(pk=new.token.pk).last_used_at is None

    def test_a_well_formed_token_nobody_was_given_is_refused(self, alice):
        make_token(alice)
        assert tokens.api_token_authenticate(secret="fsn_" + "A" * 40) is None

    @pytest.mark.parametrize(
        "name, message",
        [
            ("", "Give the token a name"),
            ("   \n\t ", "Give the token a name"),
            ("x" * 101, "The name is 101 characters; the limit is 100."),
            ("bad\x00name", "control characters"),
            ("bad\x1b[31mname", "control characters"),
        ],
    )
    def test_a_name_that_cannot_be_used_says_why(self, alice, name, message):
        with pytest.raises(tokens.TokenError, match=re.escape(message)):
            tokens.api_token_create(user=alice, name=name)
        assert not ApiToken.objects.exists()

    def test_a_name_is_trimmed_and_its_spaces_collapsed(self, alice):
        assert make_token(alice, "  my \n laptop  ").token.name == "my laptop"
        assert make_token(alice, "x" * 100).token.name == "x" * 100

    def test_a_token_is_fetched_only_through_its_owner(self, alice, bob):
        new = make_token(alice)
        assert tokens.api_token_get_for_user(user=alice, pk=new.token.pk) == new.token
        for pk in (new.token.pk, new.token.pk + 1000, "nope"):
            with pytest.raises(NotFound):
                tokens.api_token_get_for_user(user=bob, pk=pk)

    def test_the_list_is_the_users_own_newest_first(self, alice, bob):
        first, second = make_token(alice, "first"), make_token(alice, "second")
        make_token(bob, "bobs")
        assert list(tokens.api_token_list_for_user(user=alice)) == [second.token, first.token]


# --------------------------------------------------------------------------- Settings → API tokens


class TestTokensPage:
    def test_it_needs_a_signed_in_user(self, client):
        response = client.get(reverse("api_tokens"))
        assert response.status_code == 302 and reverse("login") in response["Location"]
        response = client.post(reverse("api_tokens"), {"name": "laptop"})
        assert response.status_code == 302 and not ApiToken.objects.exists()
        response = client.post(reverse("api_token_revoke", args=[1]))
        assert response.status_code == 302 and reverse("login") in response["Location"]

    def test_the_settings_navigation_links_to_it(self, alice):
        client = logged_in(alice)
        for name in ("keys", "usage"):
            assert f'<a href="{reverse("api_tokens")}">API tokens</a>' in client.get(reverse(name)).content.decode()
        assert '<span aria-current="page">API tokens</span>' in client.get(reverse("api_tokens")).content.decode()

    def test_creating_shows_the_token_once(self, alice):
        client = logged_in(alice)
        response = client.post(reverse("api_tokens"), {"name": "CI runner"})
        assert response.status_code == 302 and response["Location"] == reverse("api_tokens")
        token = ApiToken.objects.get(user=alice)
        assert token.name == "CI runner"

        shown = client.get(reverse("api_tokens"))
        html = shown.content.decode()
        secret = re.search(r'id="new-token-secret"[^>]*value="(fsn_[A-Za-z0-9]{40})"', html)
        assert secret, "the new token is in a field of its own"
        assert tokens.api_token_authenticate(secret=secret[1]) == token
        assert "it will not be shown again" in html and "Your new token “CI runner”" in html
        assert "no-store" in shown["Cache-Control"]  # not kept for the back button

        again = client.get(reverse("api_tokens")).content.decode()
        assert secret[1] not in again and "new-token-secret" not in again
        assert f"{token.hint}…" in again and "CI runner" in again  # listed by its hint

    def test_the_token_never_travels_in_a_cookie(self, alice):
        client = logged_in(alice)
        response = client.post(reverse("api_tokens"), {"name": "laptop"}, follow=True)
        secret = re.search(r"fsn_[A-Za-z0-9]{40}", response.content.decode())
        assert secret
        assert all(secret[0] not in morsel.value for morsel in client.cookies.values())

    def test_it_lists_the_users_tokens_with_their_state(self, alice, bob):
        unused = make_token(alice, "unused")
        used = make_token(alice, "used")
        revoked = make_token(alice, "gone")
        tokens.api_token_authenticate(secret=used.secret)
        tokens.api_token_revoke(token=revoked.token)
        make_token(bob, "bobs token")

        html = logged_in(alice).get(reverse("api_tokens")).content.decode()
        card = {int(pk): body for pk, body in re.findall(r'<li class="st-card" id="token-(\d+)"(.*?)</li>', html, re.S)}
        assert set(card) == {unused.token.pk, used.token.pk, revoked.token.pk}  # not bob's
        assert "bobs token" not in html
        assert "last used never" in card[unused.token.pk] and "Active" in card[unused.token.pk]
        assert "last used never" not in card[used.token.pk]
        assert 'data-status="revoked"' in card[revoked.token.pk] and "Revoked " in card[revoked.token.pk]
        for t in (unused, used, revoked):
            assert f"{t.token.hint}…" in card[t.token.pk] and t.secret not in html
            assert t.token.token_hash not in html
        # A Revoke button per active token only.
        assert reverse("api_token_revoke", args=[unused.token.pk]) in card[unused.token.pk]
        assert reverse("api_token_revoke", args=[revoked.token.pk]) not in html

    def test_it_says_how_to_use_a_token(self, alice):
        html = logged_in(alice).get(reverse("api_tokens")).content.decode()
        assert "<code>Authorization: Bearer fsn_…</code>" in html
        assert "http://testserver/api/v1" in html and "docs/api.md" in html
        assert "No tokens yet." in html

    def test_alice_revokes_her_token(self, alice):
        new = make_token(alice, "laptop")
        client = logged_in(alice)
        assert client.get(reverse("api_token_revoke", args=[new.token.pk])).status_code == 405
        response = client.post(reverse("api_token_revoke", args=[new.token.pk]), follow=True)
        html = response.content.decode()
        assert "Revoked “laptop”" in html and 'data-status="revoked"' in html
        assert tokens.api_token_authenticate(secret=new.secret) is None
        again = client.post(reverse("api_token_revoke", args=[new.token.pk]), follow=True)
        assert "“laptop” was already revoked." in again.content.decode()

    def test_revoking_needs_the_csrf_token(self, alice):
        new = make_token(alice)
        client = Client(enforce_csrf_checks=True)
        client.force_login(alice)
        assert client.post(reverse("api_token_revoke", args=[new.token.pk])).status_code == 403
        assert tokens.api_token_authenticate(secret=new.secret) is not None

    def test_bob_cannot_revoke_alices_token_and_gets_the_same_404_as_a_missing_id(self, alice, bob):
        new = make_token(alice)
        client = logged_in(bob)
        assert client.post(reverse("api_token_revoke", args=[new.token.pk])).status_code == 404
        assert client.post(reverse("api_token_revoke", args=[new.token.pk + 1000])).status_code == 404
        assert tokens.api_token_authenticate(secret=new.secret) is not None
        assert f"{new.token.hint}…" not in client.get(reverse("api_tokens")).content.decode()

    @pytest.mark.parametrize(
        "name, message",
        [
            ("", "Give the token a name, such as the script or machine that will use it."),
            ("   ", "Give the token a name, such as the script or machine that will use it."),
            ("y" * 101, "The name is 101 characters; the limit is 100."),
        ],
    )
    def test_a_bad_name_is_refused_next_to_the_field_and_kept(self, alice, name, message):
        response = logged_in(alice).post(reverse("api_tokens"), {"name": name})
        html = response.content.decode()
        assert response.status_code == 400 and not ApiToken.objects.exists()
        field = re.search(r'<div class="field has-error">(.*?)<button type="submit"', html, re.S)
        assert field, "the name field is marked"
        assert f'<ul class="errorlist" id="id_name_error"><li>{message}</li></ul>' in field[1]
        name_input = re.search(r'<input[^>]*name="name"[^>]*>', field[1])
        assert name_input and 'aria-invalid="true"' in name_input[0] and "id_name_error" in name_input[0]
        assert f'value="{name}"' in name_input[0] or (not name.strip() and "value=" not in name_input[0])
        assert "new-token-secret" not in html


# --------------------------------------------------------------------------- manage.py api_token


class TestCommand:
    def test_create_prints_the_token_and_nothing_else(self, alice):
        out, err = run_command("create", "--user", "alice", "--name", "backup script")
        assert TOKEN_RE.fullmatch(out.rstrip("\n")) and out.count("\n") == 1
        token = tokens.api_token_authenticate(secret=out.strip())
        assert token is not None and token.user == alice and token.name == "backup script"
        assert "shown only this once" in err

    def test_create_warns_when_the_user_is_deactivated(self, alice):
        alice.is_active = False
        alice.save()
        out, err = run_command("create", "--user", "alice", "--name", "old")
        assert TOKEN_RE.fullmatch(out.strip()) and "deactivated" in err

    def test_an_unknown_user_exits_non_zero_with_the_reason_on_stderr(self, capsys):
        with pytest.raises(CommandError, match="No user named 'nobody'"):
            run_command("create", "--user", "nobody", "--name", "x")
        # As a shell sees it: exit status 1, the message on stderr, nothing on stdout.
        with mock.patch("django.core.management.base.connections.close_all"), pytest.raises(SystemExit) as exit_:
            ApiTokenCommand().run_from_argv(["manage.py", "api_token", "create", "--user", "nobody", "--name", "x"])
        assert exit_.value.code == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "No user named 'nobody'" in captured.err
        assert not ApiToken.objects.exists()

    def test_a_bad_name_is_refused(self, alice):
        with pytest.raises(CommandError, match="the limit is 100"):
            run_command("create", "--user", "alice", "--name", "z" * 101)
        assert not ApiToken.objects.exists()

    def test_list_shows_a_table_without_secrets_or_hashes(self, alice, bob):
        mine = make_token(alice, "laptop")
        theirs = make_token(bob, "server")
        tokens.api_token_revoke(token=theirs.token)
        out, _ = run_command("list")
        lines = out.splitlines()
        assert lines[0].split() == ["id", "user", "name", "hint", "created", "last", "used", "status"]
        assert any(
            re.match(rf"{mine.token.pk}\s+alice\s+laptop\s+{mine.token.hint}…\s.*\bnever\s+active$", x) for x in lines
        )
        assert any(re.match(rf"{theirs.token.pk}\s+bob\s+server\s.*\brevoked \d{{4}}-\d\d-\d\d", x) for x in lines)
        for t in (mine, theirs):
            assert t.secret not in out and t.token.token_hash not in out

        only_alice, _ = run_command("list", "--user", "alice")
        assert "laptop" in only_alice and "server" not in only_alice
        assert run_command("list", "--user", "bob")[0].count("\n") == 2  # the header and one token
        with pytest.raises(CommandError, match="No user named"):
            run_command("list", "--user", "nobody")

    def test_list_says_when_there_are_none(self, alice):
        assert run_command("list")[0] == "No API tokens.\n"
        assert run_command("list", "--user", "alice")[0] == "alice has no API tokens.\n"

    def test_revoke_by_id(self, alice):
        new = make_token(alice, "laptop")
        out, _ = run_command("revoke", str(new.token.pk))
        assert out == f"Revoked token {new.token.pk} “laptop” ({new.token.hint}…) of alice.\n"
        assert tokens.api_token_authenticate(secret=new.secret) is None
        out, _ = run_command("revoke", str(new.token.pk))
        assert out.startswith("Nothing to do:") and "was revoked" in out
        with pytest.raises(CommandError, match="No API token with id"):
            run_command("revoke", str(new.token.pk + 1000))

    def test_revoke_by_user_and_name_revokes_only_that_users_active_tokens_of_that_name(self, alice, bob):
        first, second = make_token(alice, "ci"), make_token(alice, "ci")
        other = make_token(alice, "laptop")
        bobs = make_token(bob, "ci")
        out, _ = run_command("revoke", "--user", "alice", "--name", "ci")
        assert out.count("Revoked token") == 2
        assert tokens.api_token_authenticate(secret=first.secret) is None
        assert tokens.api_token_authenticate(secret=second.secret) is None
        assert tokens.api_token_authenticate(secret=other.secret) is not None
        assert tokens.api_token_authenticate(secret=bobs.secret) is not None
        with pytest.raises(CommandError, match="alice has no active API token named 'ci'"):
            run_command("revoke", "--user", "alice", "--name", "ci")

    @pytest.mark.parametrize("args", [(), ("--user", "alice"), ("--name", "ci"), ("1", "--user", "alice")])
    def test_revoke_needs_an_id_or_a_user_and_a_name(self, alice, args):
        new = make_token(alice, "ci")
        with pytest.raises(CommandError):
            run_command("revoke", *args)
        assert tokens.api_token_authenticate(secret=new.secret) is not None


# --------------------------------------------------------------------------- admin


class TestAdmin:
    def test_the_admin_lists_tokens_but_never_their_hash_and_cannot_add_one(self, alice, django_user_model):
        new = make_token(alice, "laptop")
        root = django_user_model.objects.create_superuser("root", "root@example.org", "pw-for-admin-1")
        client = logged_in(root)
        for url in (
            reverse("admin:chat_apitoken_changelist"),
            reverse("admin:chat_apitoken_change", args=[new.token.pk]),
        ):
            html = client.get(url).content.decode()
            assert "laptop" in html and new.token.hint in html
            assert new.token.token_hash not in html and new.secret not in html
        assert client.get(reverse("admin:chat_apitoken_add")).status_code == 403

    def test_staff_can_revoke_from_the_list(self, alice, django_user_model):
        new = make_token(alice)
        root = django_user_model.objects.create_superuser("root", "root@example.org", "pw-for-admin-1")
        logged_in(root).post(
            reverse("admin:chat_apitoken_changelist"),
            {"action": "revoke", "_selected_action": [new.token.pk]},
        )
        assert tokens.api_token_authenticate(secret=new.secret) is None


# --------------------------------------------------------------------------- presets' API ids


PANEL = {
    "members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}


@pytest.fixture
def quiet_presets(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.FUSION_BUILTIN_PRESETS = {"quality": {"name": "Quality", **PANEL}}
    # The catalogue is another module's job; presets only relay its verdicts.
    monkeypatch.setattr(presets, "_catalogue_errors", lambda model_ids: [])
    monkeypatch.setattr(presets, "preset_estimate", lambda *, config, prompt_tokens=1000: None)


@pytest.mark.usefixtures("quiet_presets")
class TestPresetApiIds:
    def test_a_presets_page_shows_its_api_model_id_which_a_rename_keeps(self, alice):
        preset = presets.preset_create(user=alice, name="Deep Research!", config=PANEL)
        client = logged_in(alice)
        html = client.get(reverse("preset_detail", args=[preset.pk])).content.decode()
        assert "Use it from the API as <code>fusion/deep-research</code>" in html
        presets.preset_update(preset=preset, name="Shallow now", config=PANEL)
        html = client.get(reverse("preset_detail", args=[preset.pk])).content.decode()
        assert "Shallow now" in html and "<code>fusion/deep-research</code>" in html

    def test_a_built_in_shows_its_key(self, alice):
        html = logged_in(alice).get(reverse("builtin_preset", args=["quality"])).content.decode()
        assert "Use it from the API as <code>fusion/quality</code>" in html
