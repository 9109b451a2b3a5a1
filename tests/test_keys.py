"""Users' own provider keys: encrypted at rest, rotation, write-only pages, two users, and the key
reaching exactly one place — its provider's base URL — and no page, log or export."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from chat import keys
from chat.engine import build_registry
from chat.testing.scripted import ScriptedUpstream
from chat.models import Conversation, ProviderKey, UserLimits
from chat.runs import RunError, manager, run_start
from chat.runs.services import _start_sync
from tests.conftest import serve_from

ALICE_OR = "sk-or-v1-alice-0123456789abcdefWXYZ"
ALICE_OTHER = "sk-other-alice-9876543210QRST"
BOB_OR = "sk-or-v1-bob-0123456789abcdef7777"
SCRIPTS: dict[str, Any] = {
    "sim/a": {"ttft_ms": 5, "tokens_per_s": 5000},
    "sim/b": {"ttft_ms": 5, "tokens_per_s": 5000},
    "sim/analyst": {},
    "sim/writer": {"tokens_per_s": 5000},
}
PANEL = {"members": [{"model": "sim/a"}], "analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}


def fernet_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def fresh_fernet(settings):
    settings.FUSION_KEY_ENCRYPTION_KEYS = [fernet_key()]
    keys._multifernet.cache_clear()
    yield
    keys._multifernet.cache_clear()


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --------------------------------------------------------------------------- encryption


@pytest.mark.django_db
class TestEncryption:
    def test_keys_are_encrypted_at_rest_and_shown_by_their_last_four(self, alice):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        row = ProviderKey.objects.get(user=alice)
        assert row.encrypted_key != ALICE_OR and ALICE_OR not in row.encrypted_key
        assert row.last4 == "WXYZ" and keys.keys_for_user(alice) == [("openrouter", "WXYZ")]
        assert keys.key_decrypt(row.encrypted_key) == ALICE_OR
        assert ALICE_OR not in repr(row) and ALICE_OR not in str(row)

    def test_saving_again_replaces_the_key(self, alice):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        keys.key_set(user=alice, provider="openrouter", raw=BOB_OR)
        assert keys.keys_for_user(alice) == [("openrouter", "7777")]

    @pytest.mark.parametrize(
        "raw, reason",
        [
            ("short", "8 to 512"),
            ("with a space inside", "without spaces"),
            ("line\nbreak-injection", "without spaces"),
            ("", "8 to 512"),
        ],
    )
    def test_it_refuses_what_cannot_be_a_key(self, alice, raw, reason):
        with pytest.raises(keys.InvalidKey):
            keys.key_set(user=alice, provider="openrouter", raw=raw)
        assert not ProviderKey.objects.exists()

    def test_only_configured_providers_take_keys(self, alice, settings):
        settings.FUSION_PROVIDERS = {"ollama": {"base_url": "http://127.0.0.1:11434/v1", "api_key": ""}}
        keys.key_set(user=alice, provider="ollama", raw=ALICE_OTHER)
        with pytest.raises(keys.InvalidKey):
            keys.key_set(user=alice, provider="evil", raw=ALICE_OTHER)

    def test_rotation_re_encrypts_with_the_first_key(self, alice, bob, settings, capsys):
        old, new = settings.FUSION_KEY_ENCRYPTION_KEYS[0], fernet_key()
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        keys.key_set(user=bob, provider="openrouter", raw=BOB_OR)
        before = dict(ProviderKey.objects.values_list("user__username", "encrypted_key"))

        settings.FUSION_KEY_ENCRYPTION_KEYS = [new, old]  # new first; the old one still decrypts
        assert keys.user_keys_decrypted(user=alice) == {"openrouter": ALICE_OR}
        call_command("rotate_keys")
        assert "Re-encrypted 2 key(s)." in capsys.readouterr().out
        after = dict(ProviderKey.objects.values_list("user__username", "encrypted_key"))
        assert after["alice"] != before["alice"] and after["bob"] != before["bob"]

        settings.FUSION_KEY_ENCRYPTION_KEYS = [new]  # the old key is gone now
        assert keys.user_keys_decrypted(user=alice) == {"openrouter": ALICE_OR}
        assert keys.user_keys_decrypted(user=bob) == {"openrouter": BOB_OR}

    def test_a_key_no_configured_key_decrypts_is_reported_not_used(self, alice, settings):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        settings.FUSION_KEY_ENCRYPTION_KEYS = [fernet_key()]
        assert isinstance(keys.user_keys_decrypted(user=alice)["openrouter"], keys.KeyUnavailable)
        assert keys.key_problems(user=alice, providers=["openrouter"]) == [
            "Your saved OpenRouter key can no longer be read. Save it again in Settings → Keys."
        ]
        assert build_registry(user=alice).get("openrouter").api_key == ""

    def test_without_encryption_keys_one_is_derived_from_the_secret_key_with_a_warning(self, alice, settings, caplog):
        settings.FUSION_KEY_ENCRYPTION_KEYS = []
        with caplog.at_level(logging.WARNING, logger="chat.keys"):
            keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
            keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        assert caplog.text.count("FUSION_KEY_ENCRYPTION_KEYS is not set") == 1
        assert (
            Fernet(keys.derive_key(settings.SECRET_KEY))
            .decrypt(ProviderKey.objects.get().encrypted_key.encode())
            .decode()
            == ALICE_OR
        )

    def test_a_malformed_encryption_key_is_a_configuration_error(self, alice, settings):
        settings.FUSION_KEY_ENCRYPTION_KEYS = ["not-a-fernet-key"]
        with pytest.raises(ImproperlyConfigured, match="Fernet keys"):
            keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)


# --------------------------------------------------------------------------- pages, two users


@pytest.mark.django_db
class TestKeysPage:
    def test_it_needs_a_signed_in_user(self, client):
        for url in (reverse("keys"), reverse("key_delete", args=[1])):
            response = client.post(url) if url.endswith("delete") else client.get(url)
            assert response.status_code == 302 and reverse("login") in response["Location"]

    def test_it_lists_every_configured_provider_and_where_its_key_goes(self, alice, settings):
        settings.FUSION_PROVIDERS = {"ollama": {"base_url": "http://127.0.0.1:11434/v1", "api_key": ""}}
        settings.OPENROUTER_BASE_URL = "https://openrouter.example/api/v1"
        page = logged_in(alice).get(reverse("keys")).content.decode()
        assert 'data-provider="openrouter"' in page and 'data-provider="ollama"' in page
        assert "https://openrouter.example/api/v1" in page and "http://127.0.0.1:11434/v1" in page
        assert "No key — runs using OpenRouter are refused" in page and "No key needed" in page

    def test_saving_shows_only_the_last_four_characters(self, alice):
        client = logged_in(alice)
        response = client.post(reverse("keys"), {"provider": "openrouter", "key": ALICE_OR}, follow=True)
        page = response.content.decode()
        assert "Saved your OpenRouter key." in page and "…WXYZ" in page
        assert ALICE_OR not in page and ALICE_OR[:-4] not in page

    def test_a_refused_key_is_not_echoed_back(self, alice):
        response = logged_in(alice).post(reverse("keys"), {"provider": "openrouter", "key": "has spaces in it"})
        assert response.status_code == 400 and "without spaces" in response.content.decode()
        assert "has spaces in it" not in response.content.decode()

    @pytest.mark.parametrize("raw", ["", "   "])
    def test_saving_an_empty_key_says_why_nothing_was_saved_next_to_the_field(self, alice, raw):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        response = logged_in(alice).post(reverse("keys"), {"provider": "openrouter", "key": raw})
        page = response.content.decode()
        assert response.status_code == 400
        message = "Nothing was saved: the key field was empty. Paste your OpenRouter API key, then save."
        # The message sits under the OpenRouter field, which points at it and takes the focus.
        field = re.search(r'<input id="key-openrouter"[^>]*>', page)
        assert field and 'aria-invalid="true"' in field[0] and 'aria-describedby="key-error-openrouter"' in field[0]
        assert "autofocus" in field[0] and " required" not in field[0]  # no browser bubble in its place
        assert f'<p class="errorlist" id="key-error-openrouter" role="alert">{message}</p>' in page
        assert keys.keys_for_user(alice) == [("openrouter", "WXYZ")]  # the saved key is untouched

    def test_bob_sees_neither_alices_keys_nor_their_last_four(self, alice, bob):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        page = logged_in(bob).get(reverse("keys")).content.decode()
        assert "WXYZ" not in page and "No key — runs using OpenRouter are refused" in page

    def test_bob_cannot_delete_alices_key_and_gets_the_same_not_found_as_a_missing_id(self, alice, bob):
        key = keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        bob_client = logged_in(bob)
        assert bob_client.post(reverse("key_delete", args=[key.pk])).status_code == 404
        assert bob_client.post(reverse("key_delete", args=[key.pk + 1000])).status_code == 404
        assert ProviderKey.objects.filter(pk=key.pk).exists()

    def test_alice_deletes_her_key(self, alice):
        key = keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        client = logged_in(alice)
        assert client.get(reverse("key_delete", args=[key.pk])).status_code == 405  # a POST only
        response = client.post(reverse("key_delete", args=[key.pk]), follow=True)
        assert "Deleted your OpenRouter key." in response.content.decode()
        assert not ProviderKey.objects.exists()

    def test_the_admin_never_shows_a_key(self, alice, django_user_model):
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        key = ProviderKey.objects.get()
        admin = django_user_model.objects.create_superuser("root", "root@example.org", "pw-for-admin-1")
        client = logged_in(admin)
        for url in (
            reverse("admin:chat_providerkey_changelist"),
            reverse("admin:chat_providerkey_change", args=[key.pk]),
        ):
            page = client.get(url).content.decode()
            assert "…WXYZ" in page and ALICE_OR not in page and key.encrypted_key not in page


@pytest.mark.django_db
class TestKeyNeverInAPage:
    def test_no_page_alice_can_see_contains_her_key(self, alice):
        from chat.models import Run, RunStatus, Turn

        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        conversation = Conversation.objects.create(user=alice, title="Keys", panel=PANEL)
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="hi")
        Run.objects.create(
            user=alice,
            conversation=conversation,
            turn=turn,
            client_run_id="r1",
            config=PANEL,
            status=RunStatus.COMPLETE,
            answer="Hello.",
        )
        client = logged_in(alice)
        urls = [
            reverse("home"),
            reverse("conversation", args=[conversation.pk]),
            reverse("conversation_state", args=[conversation.pk]),
            reverse("conversation_export_md", args=[conversation.pk]),
            reverse("conversation_export_json", args=[conversation.pk]),
            reverse("keys"),
            reverse("usage"),
            reverse("models_json"),
            reverse("estimate"),
            reverse("conversation_estimate", args=[conversation.pk]),
            reverse("presets"),
            reverse("password_change"),
        ]
        for url in urls:
            response = client.get(url, follow=True)
            assert response.status_code == 200, url
            body = response.content.decode()
            assert ALICE_OR not in body and ALICE_OR[:-4] not in body, url


# --------------------------------------------------------------------------- which key a run uses


@pytest.mark.django_db
class TestWhichKey:
    def test_a_users_own_key_wins_over_the_servers(self, alice, settings):
        settings.OPENROUTER_API_KEY, settings.FUSION_ALLOW_SERVER_KEY = "server-key", True
        keys.key_set(user=alice, provider="openrouter", raw=ALICE_OR)
        assert build_registry(user=alice).get("openrouter").api_key == ALICE_OR
        assert build_registry().get("openrouter").api_key == "server-key"

    def test_the_server_key_is_used_only_when_allowed(self, alice, settings):
        settings.OPENROUTER_API_KEY = "server-key"
        settings.FUSION_ALLOW_SERVER_KEY = False
        assert build_registry(user=alice).get("openrouter").api_key == ""
        assert keys.key_problems(user=alice, providers=["openrouter"]) == [
            "Add your OpenRouter key in Settings → Keys."
        ]
        UserLimits.objects.create(user=alice, allow_server_key=True)  # the admin's override for alice
        assert build_registry(user=alice).get("openrouter").api_key == "server-key"
        assert keys.key_problems(user=alice, providers=["openrouter"]) == []

    def test_a_per_user_override_can_also_withhold_the_server_key(self, alice, bob, settings):
        settings.OPENROUTER_API_KEY, settings.FUSION_ALLOW_SERVER_KEY = "server-key", True
        UserLimits.objects.create(user=alice, allow_server_key=False)
        assert keys.key_problems(user=alice, providers=["openrouter"]) != []
        assert keys.key_problems(user=bob, providers=["openrouter"]) == []

    def test_a_provider_configured_without_any_key_needs_none(self, alice, settings):
        settings.FUSION_ALLOW_SERVER_KEY = False
        settings.FUSION_PROVIDERS = {
            "ollama": {"base_url": "http://127.0.0.1:11434/v1", "api_key": ""},
            "paid": {"base_url": "http://127.0.0.1:1/v1", "api_key": "server-paid"},
        }
        assert keys.key_problems(user=alice, providers=["ollama", "paid"]) == ["Add your paid key in Settings → Keys."]


@pytest.fixture
def upstream(settings, scripted_thread):
    return serve_from(settings, scripted_thread(SCRIPTS), allow_server_key=None)


@pytest.mark.django_db
class TestServerKeyRefused:
    def test_a_run_without_a_usable_key_is_refused_before_any_call(self, alice, upstream, settings):
        settings.FUSION_ALLOW_SERVER_KEY = False
        conversation = Conversation.objects.create(user=alice)
        with pytest.raises(RunError) as exc:
            _start_sync(
                user=alice,
                conversation_id=conversation.pk,
                client_run_id=str(uuid.uuid4()),
                prompt="hi",
                panel_data=PANEL,
                follow_up_mode=None,
            )
        assert (exc.value.code, exc.value.message) == ("no_key", "Add your OpenRouter key in Settings → Keys.")
        assert upstream.requests == [] and not conversation.turns.exists()


class RecordingUpstream(ScriptedUpstream):
    """A scripted upstream that also keeps the Authorization header it received (the base class redacts it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.authorizations: list[tuple[str, str]] = []

    def _record(self, model: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.authorizations.append((model, headers.get("authorization", "")))
        super()._record(model, body, headers)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestKeyGoesOnlyToItsProvider:
    async def test_each_key_reaches_only_its_providers_base_url_and_no_log_or_export(self, alice, settings, caplog):
        async with (
            RecordingUpstream(SCRIPTS, time_scale=0.01) as router,
            RecordingUpstream(SCRIPTS, time_scale=0.01) as other,
        ):
            settings.OPENROUTER_BASE_URL = router.base_url
            settings.OPENROUTER_API_KEY = "server-router-key"
            settings.FUSION_PROVIDERS = {"other": {"base_url": other.base_url, "api_key": "server-other-key"}}
            settings.FUSION_ALLOW_SERVER_KEY = False
            settings.FUSION_CHECKPOINT_INTERVAL_S = 0.05
            await database_sync_to_async(keys.key_set)(user=alice, provider="openrouter", raw=ALICE_OR)
            await database_sync_to_async(keys.key_set)(user=alice, provider="other", raw=ALICE_OTHER)
            conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
            panel = {
                "members": [{"model": "sim/a"}, {"model": "other:sim/b"}],
                "analyst": {"model": "other:sim/analyst"},
                "writer": {"model": "sim/writer"},
            }

            for name in ("", "chat", "chat.fusion", "httpx", "httpcore", "django"):
                caplog.set_level(logging.DEBUG, logger=name)
            frame, created = await run_start(
                user=alice,
                conversation_id=conversation.pk,
                client_run_id=str(uuid.uuid4()),
                prompt="Where do keys go?",
                panel=panel,
            )
            assert created
            await manager.get(uuid.UUID(frame["run"])).done.wait()

            assert {m for m, _ in router.authorizations} == {"sim/a", "sim/writer"}
            assert {m for m, _ in other.authorizations} == {"sim/b", "sim/analyst"}
            assert {a for _, a in router.authorizations} == {f"Bearer {ALICE_OR}"}
            assert {a for _, a in other.authorizations} == {f"Bearer {ALICE_OTHER}"}

        log_text = caplog.text + "".join(str(r.args) for r in caplog.records)
        assert ALICE_OR not in log_text and ALICE_OTHER not in log_text
        client = await database_sync_to_async(logged_in)(alice)
        for name in ("conversation_export_json", "conversation_export_md", "conversation_state"):
            body = (await database_sync_to_async(client.get)(reverse(name, args=[conversation.pk]))).content.decode()
            assert "Where do keys go?" in body or name == "conversation_state"
            assert ALICE_OR not in body and ALICE_OTHER not in body
        await manager.shutdown()
