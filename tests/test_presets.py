"""Panel presets: pages, ownership, built-ins, sharing by link, untrusted text, import/export,
the composer's chooser and the websocket's ``preset`` on start."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from chat import presets
from chat.testing.scripted import ScriptedUpstream
from chat.models import Conversation, Preset, Run
from tests.test_consumers import collect_until, open_ws
from tests.conftest import serve_from

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
XSS = f"{SCRIPT}{IMG}"

BUILTINS = {
    "quality": {
        "name": "Quality",
        "description": "The whole simulated panel.",
        "members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}],
        "analyst": {"model": "sim/analyst"},
        "writer": {"model": "sim/writer"},
    },
    "self-panel": {
        "name": "Self-panel",
        "description": "One model twice.",
        "members": [{"model": "sim/atlas", "temperature": 0.7}, {"model": "sim/atlas", "temperature": 1.0}],
        "analyst": {"model": "sim/analyst"},
        "writer": {"model": "sim/writer"},
    },
}


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "members": [
            {
                "model": "sim/atlas",
                "label": "Atlas",
                "temperature": 0.3,
                "max_tokens": 800,
                "reasoning_effort": "low",
                "system_prompt": "Answer like a careful librarian.",
            },
            {"model": "sim/borealis"},
            {"model": "sim/atlas", "temperature": 1.2},
        ],
        "analyst": {"model": "sim/analyst"},
        "writer": {"model": "sim/writer"},
        "follow_up_mode": "per_member",
        "research": {
            "web_tools": True,
            "max_tool_calls": 6,
            "excluded_domains": ["spam.example"],
            "blocked_domains": ["private.example"],
        },
    }
    base.update(overrides)
    return base


def make_preset(user: Any, name: str = "Librarians", **kw: Any) -> Preset:
    return presets.preset_create(
        user=user,
        name=name,
        description=kw.pop("description", "Careful answers."),
        config=kw.pop("config", None) or config(**kw),
    )


def editor_data(*, name: str = "Edited", members: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """The editor's POST: the formset's management form, one row per member, the other fields."""
    members = members if members is not None else [{"model": "sim/atlas"}, {"model": "sim/borealis"}]
    data: dict[str, Any] = {
        "name": name,
        "description": "",
        "analyst": "sim/analyst",
        "writer": "sim/writer",
        "fallback_analyst": "",
        "fallback_writer": "",
        "follow_up_mode": "fused",
        "max_tool_calls": "4",
        "excluded_domains": "",
        "blocked_domains": "",
        "members-TOTAL_FORMS": str(len(members)),
        "members-INITIAL_FORMS": "0",
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
    }
    for i, member in enumerate(members):
        for key in ("model", "label", "temperature", "max_tokens", "reasoning_effort", "system_prompt"):
            data[f"members-{i}-{key}"] = member.get(key, "")
    data.update(fields)
    return data


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def assert_inert(html: str) -> None:
    """No raw tag of the payload survived; what is shown of it is escaped."""
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "onerror=alert(1)>" not in html


@pytest.fixture(autouse=True)
def builtins(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.FUSION_BUILTIN_PRESETS = BUILTINS
    # The catalogue is another module's job (and fetches in the background): presets only
    # relay its verdicts, which the tests that care set themselves.
    monkeypatch.setattr(presets, "_catalogue_errors", lambda model_ids: [])
    monkeypatch.setattr(presets, "preset_estimate", lambda *, config, prompt_tokens=1000: None)


@pytest.fixture
def alice_client(alice: Any) -> Client:
    c = Client()
    c.force_login(alice)
    return c


@pytest.fixture
def bob_client(bob: Any) -> Client:
    c = Client()
    c.force_login(bob)
    return c


# --------------------------------------------------------------------------- pages


class TestPresetPages:
    def test_the_sidebar_links_to_the_presets_page(self, alice_client: Client) -> None:
        assert f'href="{reverse("presets")}"' in page(alice_client, reverse("home"))

    def test_the_list_shows_own_presets_and_the_built_ins_only(
        self, alice_client: Client, alice: Any, bob: Any
    ) -> None:
        make_preset(alice, "Alice's panel")
        make_preset(bob, "Bob's secret panel")
        html = page(alice_client, reverse("presets"))
        assert "Alice&#x27;s panel" in html
        assert "Bob" not in html
        assert "Quality" in html and "Self-panel" in html and "Built-in" in html

    def test_it_creates_a_preset_from_the_editor(self, alice_client: Client, alice: Any) -> None:
        assert len(re.findall(r"data-member-row\b(?!s)", page(alice_client, reverse("preset_new")))) >= 2
        members = [
            {
                "model": "sim/atlas",
                "label": "Careful",
                "temperature": "0.2",
                "max_tokens": "1200",
                "reasoning_effort": "high",
                "system_prompt": "Cite sources.",
            },
            {"model": "sim/atlas", "temperature": "1.1"},  # the same model twice: a self-panel
            {},  # a blank row is skipped
        ]
        response = alice_client.post(
            reverse("preset_new"),
            editor_data(
                name="  Deep   research ",
                members=members,
                fallback_writer="sim/borealis",
                follow_up_mode="per_member",
                web_tools="on",
                max_tool_calls="8",
                excluded_domains="Example.COM\nspam.example, news.example",
                blocked_domains="private.example",
            ),
        )
        preset = Preset.objects.get(user=alice)
        assert response["Location"] == reverse("preset_detail", args=[preset.pk])
        assert preset.name == "Deep research"
        assert preset.config["members"] == [
            {
                "model": "sim/atlas",
                "temperature": 0.2,
                "max_tokens": 1200,
                "reasoning_effort": "high",
                "system_prompt": "Cite sources.",
                "label": "Careful",
            },
            {"model": "sim/atlas", "temperature": 1.1},
        ]
        assert preset.config["fallback_writer"] == {"model": "sim/borealis"}
        assert preset.config["fallback_analyst"] is None
        assert preset.config["follow_up_mode"] == "per_member"
        assert preset.config["research"] == {
            "web_tools": True,
            "max_tool_calls": 8,
            "excluded_domains": ["example.com", "spam.example", "news.example"],
            "blocked_domains": ["private.example"],
        }

    def test_the_editor_shows_and_saves_an_existing_preset(self, alice_client: Client, alice: Any) -> None:
        preset = make_preset(alice)
        html = page(alice_client, reverse("preset_edit", args=[preset.pk]))
        assert "Answer like a careful librarian." in html and 'value="Atlas"' in html
        assert len(re.findall(r"data-member-row\b(?!s)", html)) == 4  # three rows and the template for new ones
        response = alice_client.post(reverse("preset_edit", args=[preset.pk]), editor_data(name="Renamed"))
        assert response.status_code == 302
        preset.refresh_from_db()
        assert preset.name == "Renamed"
        assert [m["model"] for m in preset.config["members"]] == ["sim/atlas", "sim/borealis"]
        assert preset.config["research"]["web_tools"] is False

    def test_the_detail_page_shows_the_panel_and_the_share_box(self, alice_client: Client, alice: Any) -> None:
        preset = make_preset(alice)
        html = page(alice_client, reverse("preset_detail", args=[preset.pk]))
        assert "Answer like a careful librarian." in html
        assert "Create a share link" in html
        assert "spam.example" in html and "up to 6 tool calls" in html
        assert "Estimate unavailable" in html

    def test_duplicate_makes_an_independent_copy(self, alice_client: Client, alice: Any) -> None:
        preset = make_preset(alice)
        presets.preset_share(preset=preset)
        presets.preset_set_default(user=alice, preset=preset)
        response = alice_client.post(reverse("preset_duplicate", args=[preset.pk]))
        copy = Preset.objects.exclude(pk=preset.pk).get(user=alice)
        assert response["Location"] == reverse("preset_edit", args=[copy.pk])
        assert copy.name == "Copy of Librarians"
        assert copy.config == preset.config
        assert (copy.is_default, copy.share_token) == (False, None)
        presets.preset_update(preset=preset, name="Librarians", config=config(members=[{"model": "sim/cirrus"}]))
        copy.refresh_from_db()
        assert copy.config["members"][0]["model"] == "sim/atlas"

    def test_delete_asks_first_and_conversations_keep_their_panel(self, alice_client: Client, alice: Any) -> None:
        preset = make_preset(alice)
        conversation = Conversation.objects.create(
            user=alice, panel=presets.panel_from_config(preset.config), preset=preset
        )
        url = reverse("preset_delete", args=[preset.pk])
        assert "Delete “Librarians”?" in page(alice_client, url)
        assert Preset.objects.filter(pk=preset.pk).exists()
        assert alice_client.post(url)["Location"] == reverse("presets")
        assert not Preset.objects.filter(pk=preset.pk).exists()
        conversation.refresh_from_db()
        assert conversation.preset is None and conversation.panel["members"][0]["model"] == "sim/atlas"

    def test_there_is_one_default_and_it_can_be_cleared(self, alice_client: Client, alice: Any) -> None:
        first, second = make_preset(alice, "First"), make_preset(alice, "Second")
        alice_client.post(reverse("preset_default", args=[first.pk]))
        alice_client.post(reverse("preset_default", args=[second.pk]))
        assert list(Preset.objects.filter(is_default=True)) == [second]
        assert "(default)" in page(alice_client, reverse("home"))
        alice_client.post(reverse("preset_default", args=[second.pk]), {"default": "0"})
        assert not Preset.objects.filter(is_default=True).exists()

    def test_pages_need_a_signed_in_user(self, alice: Any) -> None:
        preset = make_preset(alice)
        presets.preset_share(preset=preset)
        for url in (reverse("presets"), reverse("preset_detail", args=[preset.pk])):
            assert Client().get(url)["Location"].startswith(reverse("login"))


# --------------------------------------------------------------------------- validation


class TestValidation:
    @pytest.mark.parametrize(
        "fields, message",
        [
            ({"members": [{"model": f"sim/m{i}"} for i in range(9)]}, "A panel has at most 8 members (got 9)."),
            ({"members": [{}]}, "The panel needs at least one member."),
            (
                {"members": [{"model": "sim/atlas", "temperature": "2.5"}]},
                "Member 1: temperature must be between 0 and 2 (got 2.5).",
            ),
            (
                {"members": [{"model": "sim/a"}, {"model": "sim/b", "temperature": "-1"}]},
                "Member 2: temperature must be between 0 and 2",
            ),
            (
                {"members": [{"model": "sim/atlas", "temperature": "warm"}]},
                "temperature must be a number between 0 and 2",
            ),
            (
                {"members": [{"model": "sim/atlas", "max_tokens": "0"}]},
                "Member 1: max tokens must be between 1 and 200000.",
            ),
            ({"members": [{"model": "sim/atlas", "max_tokens": "200001"}]}, "max tokens must be between 1 and 200000."),
            ({"members": [{"label": "no model"}]}, "Member 1: a model id is required."),
            ({"members": [{"model": "not a model"}]}, "is not a valid model id"),
            ({"members": [{"model": "sim/atlas", "system_prompt": "x" * 20001}]}, "at most 20000 characters"),
            ({"web_tools": "on", "max_tool_calls": "17"}, "max tool calls must be between 1 and 16 (got 17)"),
            ({"max_tool_calls": "0"}, "max tool calls must be between 1 and 16 (got 0)"),
            ({"excluded_domains": "https://example.com/page"}, "is not a domain; write only the host name"),
            ({"excluded_domains": "example"}, "'example' is not a valid domain"),
            ({"blocked_domains": "bad_domain!.com"}, "Blocked fetch domains: 'bad_domain!.com' is not a valid domain"),
            ({"writer": ""}, "This field is required."),
            ({"name": ""}, "This field is required."),
            ({"name": "x" * 101}, "at most 100 characters"),
        ],
    )
    def test_the_editor_refuses_with_a_clear_message(
        self, alice_client: Client, alice: Any, fields: dict[str, Any], message: str
    ) -> None:
        response = alice_client.post(reverse("preset_new"), editor_data(**fields))
        assert response.status_code == 400
        assert message in response.content.decode().replace("&#x27;", "'")
        assert not Preset.objects.exists()

    def test_what_was_typed_stays_in_the_form(self, alice_client: Client) -> None:
        members = [{"model": "sim/atlas", "label": "Keep me", "temperature": "9"}]
        html = alice_client.post(reverse("preset_new"), editor_data(name="Draft", members=members)).content.decode()
        assert 'value="Keep me"' in html and 'value="Draft"' in html

    def test_unknown_models_are_refused_with_the_catalogues_message(
        self, alice_client: Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[list[str]] = []

        def unknown(model_ids: list[str]) -> list[str]:
            seen.append(model_ids)
            return ["OpenRouter does not list 'sim/nope'."]

        monkeypatch.setattr(presets, "_catalogue_errors", unknown)
        response = alice_client.post(
            reverse("preset_new"), editor_data(members=[{"model": "sim/nope"}, {"model": "sim/nope"}])
        )
        assert response.status_code == 400
        assert "OpenRouter does not list &#x27;sim/nope&#x27;." in response.content.decode()
        assert seen == [["sim/nope", "sim/analyst", "sim/writer"]]

    def test_the_catalogue_is_asked_when_it_exists(self, alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.undo()  # the real _catalogue_errors, which defers to chat.model_catalogue
        from chat import model_catalogue

        calls: list[tuple[list[str], bool]] = []
        monkeypatch.setattr(
            model_catalogue,
            "validate_models",
            lambda ids, fetch_missing=True: calls.append((list(ids), fetch_missing)) or ["Unknown model 'x/y'."],
        )
        with pytest.raises(presets.PresetError, match="Unknown model 'x/y'."):
            presets.preset_create(user=alice, name="n", config=config())
        assert calls == [(["sim/atlas", "sim/borealis", "sim/analyst", "sim/writer"], False)]

    def test_the_services_validate_names(self, alice: Any) -> None:
        with pytest.raises(presets.PresetError, match="Give the preset a name"):
            presets.preset_create(user=alice, name="   ", config=config())
        with pytest.raises(presets.PresetError, match="description is 2001 characters"):
            presets.preset_create(user=alice, name="n", description="d" * 2001, config=config())


# --------------------------------------------------------------------------- ownership


class TestOwnership:
    @pytest.fixture
    def alices(self, alice: Any) -> Preset:
        return make_preset(alice, "Alice's panel")

    @pytest.mark.parametrize(
        "method, name",
        [
            ("get", "preset_detail"),
            ("get", "preset_edit"),
            ("post", "preset_edit"),
            ("get", "preset_delete"),
            ("post", "preset_delete"),
            ("post", "preset_duplicate"),
            ("post", "preset_default"),
            ("post", "preset_share"),
            ("post", "preset_unshare"),
            ("get", "preset_export"),
        ],
    )
    def test_bob_gets_not_found_for_alices_preset(
        self, bob_client: Client, bob: Any, alices: Preset, method: str, name: str
    ) -> None:
        presets.preset_share(preset=alices)
        token = alices.share_token
        url = reverse(name, args=[alices.pk])
        response = bob_client.post(url, editor_data(name="mine now")) if method == "post" else bob_client.get(url)
        assert response.status_code == 404
        alices.refresh_from_db()
        assert (alices.name, alices.share_token, alices.is_default) == ("Alice's panel", token, False)
        assert not Preset.objects.filter(user=bob).exists()

    def test_a_missing_id_looks_the_same(self, bob_client: Client, alices: Preset) -> None:
        foreign = bob_client.get(reverse("preset_detail", args=[alices.pk]))
        missing = bob_client.get(reverse("preset_detail", args=[alices.pk + 1000]))
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content

    def test_bob_cannot_put_alices_preset_on_his_conversation(
        self, bob_client: Client, bob: Any, alices: Preset
    ) -> None:
        conversation = Conversation.objects.create(user=bob)
        response = bob_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {
                "members": "sim/x",
                "analyst": "sim/a",
                "writer": "sim/w",
                "follow_up_mode": "fused",
                "preset": str(alices.pk),
            },
        )
        assert response.status_code == 404
        conversation.refresh_from_db()
        assert (conversation.panel, conversation.preset) == ({}, None)
        response = bob_client.post(
            reverse("conversation_new"),
            {
                "prompt": "hi",
                "members": "sim/x",
                "analyst": "sim/a",
                "writer": "sim/w",
                "follow_up_mode": "fused",
                "preset": str(alices.pk),
            },
        )
        assert response.status_code == 404
        assert not Conversation.objects.filter(user=bob, preset__isnull=False).exists()

    def test_alices_presets_are_not_in_bobs_chooser(self, bob_client: Client, alices: Preset) -> None:
        html = page(bob_client, reverse("home"))
        assert "Alice" not in html
        assert f'value="{alices.pk}"' not in html


# --------------------------------------------------------------------------- built-ins


class TestBuiltins:
    def test_they_come_from_settings(self) -> None:
        builtins = presets.builtin_presets()
        assert [b.key for b in builtins] == ["quality", "self-panel"]
        assert builtins[1].config["members"] == [
            {"model": "sim/atlas", "temperature": 0.7},
            {"model": "sim/atlas", "temperature": 1.0},
        ]
        assert builtins[0].config["research"]["web_tools"] is False

    def test_the_shipped_defaults_are_valid(self) -> None:
        from chat.panels import parse_preset_config
        from fusionsite import settings as project_settings

        assert set(project_settings.FUSION_BUILTIN_PRESETS) >= {"quality", "budget", "fast", "self-panel"}
        for data in project_settings.FUSION_BUILTIN_PRESETS.values():
            parse_preset_config(data)

    def test_a_built_in_is_shown_and_copied_but_cannot_be_edited(self, alice_client: Client, alice: Any) -> None:
        html = page(alice_client, reverse("builtin_preset", args=["quality"]))
        assert "Built-in presets are set by the administrator" in html
        assert "/edit" not in html and "Delete" not in html
        assert alice_client.get("/presets/builtin/quality/edit").status_code == 404
        assert alice_client.post(reverse("builtin_preset", args=["quality"])).status_code == 405
        response = alice_client.post(reverse("builtin_preset_copy", args=["self-panel"]))
        copy = Preset.objects.get(user=alice)
        assert response["Location"] == reverse("preset_detail", args=[copy.pk])
        assert copy.name == "Self-panel" and copy.config == presets.builtin_get(key="self-panel").config
        # The copy is the user's own: editable.
        assert alice_client.post(reverse("preset_edit", args=[copy.pk]), editor_data(name="Mine")).status_code == 302
        assert presets.builtin_get(key="self-panel").name == "Self-panel"

    def test_an_unknown_built_in_is_not_found(self, alice_client: Client) -> None:
        assert alice_client.get(reverse("builtin_preset", args=["nope"])).status_code == 404
        assert alice_client.post(reverse("builtin_preset_copy", args=["nope"])).status_code == 404

    def test_the_demo_runs_them_on_the_scripted_models(self) -> None:
        from chat.testing.scripted import DEMO_SCRIPTS
        from chat.management.commands.demo import DEMO_BUILTIN_PRESETS
        from chat.panels import parse_preset_config

        assert set(DEMO_BUILTIN_PRESETS) == {"quality", "budget", "fast", "self-panel"}
        for data in DEMO_BUILTIN_PRESETS.values():
            config = parse_preset_config(json.loads(json.dumps(data)))
            assert set(presets._model_ids(config)) <= set(DEMO_SCRIPTS)

    def test_the_admin_lists_presets(self, alice: Any, django_user_model: Any) -> None:
        make_preset(alice)
        admin = django_user_model.objects.create_superuser("root", "root@example.org", "x-admin-pw-1")
        c = Client()
        c.force_login(admin)
        assert "Librarians" in page(c, "/admin/chat/preset/")

    def test_a_broken_override_fails_loudly(self, settings: Any) -> None:
        from django.core.exceptions import ImproperlyConfigured

        settings.FUSION_BUILTIN_PRESETS = {"bad": {"name": "Bad", "members": [], "analyst": "a/b", "writer": "a/b"}}
        with pytest.raises(ImproperlyConfigured, match="bad"):
            presets.builtin_presets()
        settings.FUSION_BUILTIN_PRESETS = {"not a slug": BUILTINS["quality"]}
        with pytest.raises(ImproperlyConfigured, match="needs a key of letters"):
            presets.builtin_presets()


# --------------------------------------------------------------------------- sharing


class TestSharing:
    def test_the_link_lifecycle(self, alice_client: Client, bob_client: Client, alice: Any, bob: Any) -> None:
        preset = make_preset(alice)
        # Create: the owner sees the link.
        alice_client.post(reverse("preset_share", args=[preset.pk]))
        preset.refresh_from_db()
        token = preset.share_token
        assert token and len(token) >= 40
        link = reverse("shared_preset", args=[token])
        assert link in page(alice_client, reverse("preset_detail", args=[preset.pk]))

        # Bob opens it: the panel, read-only.
        html = page(bob_client, link)
        assert "Librarians" in html and "Answer like a careful librarian." in html and "Atlas" in html
        assert "sim/analyst" in html and "sim/writer" in html

        # …and copies it: an independent preset of his.
        response = bob_client.post(reverse("shared_preset_copy", args=[token]))
        copy = Preset.objects.get(user=bob)
        assert response["Location"] == reverse("preset_detail", args=[copy.pk])
        assert copy.copied_from_share and copy.share_token is None and not copy.is_default
        assert copy.config == preset.config
        alice_client.post(
            reverse("preset_edit", args=[preset.pk]), editor_data(name="Changed", members=[{"model": "sim/cirrus"}])
        )
        copy.refresh_from_db()
        assert (
            copy.name == "Librarians"
            and copy.config["members"][0]["system_prompt"] == "Answer like a careful librarian."
        )

        # Revoke: the link is a plain 404.
        alice_client.post(reverse("preset_unshare", args=[preset.pk]))
        assert bob_client.get(link).status_code == 404
        assert bob_client.post(reverse("shared_preset_copy", args=[token])).status_code == 404

        # Regenerate twice: only the newest link works.
        alice_client.post(reverse("preset_share", args=[preset.pk]))
        preset.refresh_from_db()
        second = preset.share_token
        alice_client.post(reverse("preset_share", args=[preset.pk]))
        preset.refresh_from_db()
        assert second != preset.share_token != token
        assert bob_client.get(reverse("shared_preset", args=[second])).status_code == 404
        assert bob_client.get(reverse("shared_preset", args=[token])).status_code == 404
        assert "Changed" in page(bob_client, reverse("shared_preset", args=[preset.share_token]))

    def test_a_wrong_token_is_a_plain_404(self, bob_client: Client, alice: Any) -> None:
        make_preset(alice)  # not shared: share_token is NULL, which no URL can match
        for token in ("x", "A" * 43, "None", "null"):
            assert bob_client.get(reverse("shared_preset", args=[token])).status_code == 404

    def test_a_revoked_link_gets_a_styled_404_that_says_what_to_do(
        self, alice_client: Client, bob_client: Client, alice: Any
    ) -> None:
        preset = make_preset(alice)
        token = presets.preset_share(preset=preset)
        presets.preset_unshare(preset=preset)
        for response in (
            bob_client.get(reverse("shared_preset", args=[token])),
            bob_client.get(reverse("shared_preset", args=["never-made-" + "x" * 30])),
            bob_client.post(reverse("shared_preset_copy", args=[token])),  # revoked while the page was open
        ):
            html = response.content.decode()
            assert response.status_code == 404
            assert "data-share-missing" in html and 'class="sidebar' in html  # the app's page, not Django's
            assert "This share link does not work" in html and "revoked" in html and "never existed" in html
            assert "Ask the person who shared it for a new link." in html
            assert "Librarians" not in html
        assert not Preset.objects.filter(user__username="bob").exists()

    def test_a_signed_out_visitor_is_told_to_sign_in_and_lands_on_the_preset(self, alice: Any, bob: Any) -> None:
        preset = make_preset(alice)
        link = reverse("shared_preset", args=[presets.preset_share(preset=preset)])
        client = Client()
        response = client.get(link)
        html = response.content.decode()
        assert response.status_code == 200
        assert "data-share-sign-in" in html and "Sign in to see this shared preset." in html
        assert f'name="next" value="{link}"' in html and f'action="{reverse("login")}"' in html
        assert "Librarians" not in html and "alice" not in html  # nothing of the preset before sign-in
        # A dead link looks the same signed out: the notice does not tell which tokens exist.
        dead = client.get(reverse("shared_preset", args=["x" * 43])).content.decode()
        assert "Sign in to see this shared preset." in dead

        response = client.post(
            reverse("login"), {"username": "bob", "password": "correct-horse-battery-2", "next": link}
        )
        assert response.status_code == 302 and response["Location"] == link
        assert "Librarians" in page(client, link)

    def test_the_plain_sign_in_page_has_no_share_notice(self) -> None:
        html = page(Client(), reverse("login"))
        assert "data-share-sign-in" not in html and '<form method="post" class="auth-form" novalidate>' in html

    def test_the_share_page_reveals_only_the_owners_display_name(self, bob_client: Client, alice: Any) -> None:
        alice.first_name, alice.last_name = "Alice", "Liddell"
        alice.save()
        shared = make_preset(alice, "Shared one")
        make_preset(alice, "Secret other preset", description="not for bob")
        presets.preset_share(preset=shared)
        html = page(bob_client, reverse("shared_preset", args=[shared.share_token]))
        assert 'Shared by <span class="pz-owner">Alice Liddell</span>' in html
        assert "alice@example.org" not in html and "@example.org" not in html
        assert "Secret other preset" not in html and "not for bob" not in html
        assert reverse("preset_detail", args=[shared.pk]) not in html  # no way into the owner's pages
        assert "Copy to my presets" in html

    def test_without_a_full_name_the_username_is_shown(self, bob_client: Client, alice: Any) -> None:
        shared = make_preset(alice)
        presets.preset_share(preset=shared)
        assert '<span class="pz-owner">alice</span>' in page(
            bob_client, reverse("shared_preset", args=[shared.share_token])
        )

    def test_the_share_page_shows_the_estimated_cost(
        self, bob_client: Client, alice: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.undo()
        from chat import model_catalogue

        monkeypatch.setattr(presets, "_catalogue_errors", lambda model_ids: [])
        shared = make_preset(alice)
        presets.preset_share(preset=shared)
        asked: list[int] = []
        monkeypatch.setattr(
            model_catalogue,
            "estimate_panel_cost",
            lambda config, prompt_tokens: asked.append(prompt_tokens) or (0.0123, 0.0456),
        )
        monkeypatch.setattr(model_catalogue, "unpriced_models", lambda config: ["sim/borealis"])
        html = page(bob_client, reverse("shared_preset", args=[shared.share_token]))
        assert "$0.01–$0.05" in html and "1000 tokens" in html
        assert "No catalogue price for <code>sim/borealis</code>" in html
        assert asked == [1000]
        # Nothing priced at all: no estimate rather than a misleading $0.00.
        monkeypatch.setattr(
            model_catalogue,
            "unpriced_models",
            lambda config: ["sim/atlas", "sim/borealis", "sim/analyst", "sim/writer"],
        )
        assert "Estimate unavailable" in page(bob_client, reverse("shared_preset", args=[shared.share_token]))


# --------------------------------------------------------------------------- untrusted text


class TestUntrustedText:
    @pytest.fixture
    def hostile(self, alice: Any) -> Preset:
        members = [{"model": "sim/atlas", "label": f"L {XSS}", "system_prompt": f"S {XSS}"}, {"model": "sim/borealis"}]
        preset = presets.preset_create(
            user=alice, name=f"N {XSS}", description=f"D {XSS}", config=config(members=members)
        )
        presets.preset_share(preset=preset)
        return preset

    def test_it_is_inert_on_the_share_page(self, bob_client: Client, hostile: Preset) -> None:
        html = page(bob_client, reverse("shared_preset", args=[hostile.share_token]))
        assert_inert(html)
        assert "N &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
        assert "D &lt;script&gt;" in html and "L &lt;script&gt;" in html
        assert re.search(
            r"<pre>S &lt;script&gt;alert\(1\)&lt;/script&gt;&lt;img src=x onerror=alert\(1\)&gt;</pre>", html
        )

    def test_it_is_inert_on_the_owners_pages(self, alice_client: Client, hostile: Preset) -> None:
        for url in (
            reverse("presets"),
            reverse("preset_detail", args=[hostile.pk]),
            reverse("preset_edit", args=[hostile.pk]),
            reverse("preset_delete", args=[hostile.pk]),
        ):
            html = page(alice_client, url)
            assert_inert(html)
            assert "N &lt;script&gt;" in html

    def test_it_is_inert_in_the_composers_chooser(self, alice_client: Client, alice: Any, hostile: Preset) -> None:
        presets.preset_set_default(user=alice, preset=hostile)
        for html in (
            page(alice_client, reverse("home")),
            page(alice_client, reverse("conversation", args=[Conversation.objects.create(user=alice).pk])),
        ):
            assert_inert(html)
            option = re.search(rf'<option value="{hostile.pk}" selected>(.*?)</option>', html)
            assert option and option.group(1).startswith("N &lt;script&gt;alert(1)&lt;/script&gt;&lt;img")
            data = re.search(r'<script id="preset-panels" type="application/json">(.*?)</script>', html, re.S)
            assert data and "<" not in data.group(1)
            assert json.loads(data.group(1))[str(hostile.pk)]["panel"]["members"][0]["label"] == f"L {XSS}"

    def test_it_is_inert_after_bob_copies_it(self, bob_client: Client, bob: Any, hostile: Preset) -> None:
        bob_client.post(reverse("shared_preset_copy", args=[hostile.share_token]))
        copy = Preset.objects.get(user=bob)
        for url in (
            reverse("presets"),
            reverse("preset_detail", args=[copy.pk]),
            reverse("preset_edit", args=[copy.pk]),
            reverse("home"),
        ):
            assert_inert(page(bob_client, url))

    def test_the_flash_message_after_copying_is_escaped(self, bob_client: Client, hostile: Preset) -> None:
        response = bob_client.post(reverse("shared_preset_copy", args=[hostile.share_token]), follow=True)
        assert_inert(response.content.decode())


# --------------------------------------------------------------------------- import / export


class TestExportImport:
    def test_the_export_is_our_format_with_the_openrouter_plugin_shape(self, alice_client: Client, alice: Any) -> None:
        preset = make_preset(alice)
        response = alice_client.get(reverse("preset_export", args=[preset.pk]))
        assert response["Content-Disposition"] == 'attachment; filename="fusion-preset-librarians.json"'
        data = json.loads(response.content)
        assert data["format"] == "fusion-preset/1"
        assert (data["name"], data["description"]) == ("Librarians", "Careful answers.")
        assert data["config"] == preset.config
        assert data["openrouter_plugin"] == {
            "id": "fusion",
            "analysis_models": ["sim/atlas", "sim/borealis", "sim/atlas"],
            "model": "sim/writer",
            "max_tool_calls": 6,
            "tools": [
                {"type": "openrouter:web_search", "parameters": {"excluded_domains": ["spam.example"]}},
                {"type": "openrouter:web_fetch", "parameters": {"blocked_domains": ["private.example"]}},
            ],
        }

    def test_without_web_tools_the_plugin_has_no_tools(self, alice: Any) -> None:
        preset = make_preset(alice, research={"web_tools": False})
        assert presets.preset_export(preset)["openrouter_plugin"]["tools"] == []

    def test_a_built_in_can_be_exported(self, alice_client: Client) -> None:
        data = json.loads(alice_client.get(reverse("builtin_preset_export", args=["quality"])).content)
        assert data["name"] == "Quality" and data["openrouter_plugin"]["analysis_models"] == [
            "sim/atlas",
            "sim/borealis",
        ]

    def test_export_then_import_round_trips(
        self, alice_client: Client, bob_client: Client, alice: Any, bob: Any
    ) -> None:
        preset = make_preset(alice)
        exported = alice_client.get(reverse("preset_export", args=[preset.pk])).content
        upload = SimpleUploadedFile("librarians.json", exported, content_type="application/json")
        response = bob_client.post(reverse("preset_import"), {"file": upload, "text": "", "name": ""})
        imported = Preset.objects.get(user=bob)
        assert response["Location"] == reverse("preset_detail", args=[imported.pk])
        assert (imported.name, imported.description, imported.config) == (
            preset.name,
            preset.description,
            preset.config,
        )
        assert not imported.copied_from_share

    def test_pasted_json_and_a_new_name(self, alice_client: Client, alice: Any) -> None:
        text = json.dumps(presets.preset_export(make_preset(alice)))
        alice_client.post(reverse("preset_import"), {"text": text, "name": "From paste"})
        assert Preset.objects.filter(user=alice, name="From paste").exists()

    def test_a_bare_openrouter_plugin(self, alice: Any) -> None:
        plugin = {
            "id": "fusion",
            "enabled": True,
            "analysis_models": ["~anthropic/claude-opus-latest", "~openai/gpt-latest", "~openai/gpt-latest"],
            "model": "~anthropic/claude-opus-latest",
            "max_tool_calls": 12,
            "tools": [
                {"type": "openrouter:web_search", "parameters": {"excluded_domains": ["example.com"]}},
                {"type": "openrouter:web_fetch"},
            ],
        }
        preset = presets.preset_import(user=alice, data=json.dumps(plugin))
        assert preset.name == "Imported Fusion plugin"
        assert [m["model"] for m in preset.config["members"]] == plugin["analysis_models"]
        assert preset.config["analyst"] == preset.config["writer"] == {"model": "~anthropic/claude-opus-latest"}
        assert preset.config["research"] == {
            "web_tools": True,
            "max_tool_calls": 12,
            "excluded_domains": ["example.com"],
            "blocked_domains": [],
        }
        # …and it exports back to the same plugin.
        exported = presets.preset_export(preset)["openrouter_plugin"]
        assert {k: exported[k] for k in ("analysis_models", "model", "max_tool_calls")} == {
            k: plugin[k] for k in ("analysis_models", "model", "max_tool_calls")
        }

    def test_a_request_body_with_plugins(self, alice: Any) -> None:
        body = {
            "model": "openrouter/auto",
            "plugins": [{"id": "web"}, {"id": "fusion", "analysis_models": ["a/b"], "model": "c/d", "tools": []}],
        }
        preset = presets.preset_import(user=alice, data=json.dumps(body).encode())
        assert preset.config["members"] == [{"model": "a/b"}]
        assert preset.config["writer"] == {"model": "c/d"}
        assert preset.config["research"]["web_tools"] is False  # an empty tools list turns tools off

    def test_the_export_keeps_analyst_and_writer_in_the_server_tool_shape(self, alice: Any) -> None:
        # The plugin has one model for both roles: it keeps the writer and loses the analyst.
        exported = presets.preset_export(make_preset(alice))
        assert exported["openrouter_plugin"]["model"] == "sim/writer"
        assert exported["openrouter_server_tool"] == {
            "model": "sim/writer",
            "tools": [
                {
                    "type": "openrouter:fusion",
                    "parameters": {
                        "analysis_models": ["sim/atlas", "sim/borealis", "sim/atlas"],
                        "model": "sim/analyst",
                        "max_tool_calls": 6,
                        "tools": [
                            {"type": "openrouter:web_search", "parameters": {"excluded_domains": ["spam.example"]}},
                            {"type": "openrouter:web_fetch", "parameters": {"blocked_domains": ["private.example"]}},
                        ],
                    },
                }
            ],
        }

    def test_the_server_tool_shape_round_trips_analyst_writer_and_shared_settings(self, alice: Any) -> None:
        members = [{"model": m, "temperature": 0.4, "max_tokens": 900, "reasoning_effort": "high"} for m in "ab"]
        original = make_preset(alice, members=[{**m, "model": f"sim/{m['model']}"} for m in members])
        request = presets.preset_export(original)["openrouter_server_tool"]
        imported = presets.preset_import(user=alice, data=json.dumps(request))
        assert imported.name == "Imported Fusion tool"
        for key in ("members", "analyst", "writer", "research"):
            assert imported.config[key] == original.config[key], key

    def test_the_openrouter_server_tool_shape_imports_like_the_plugin(self, alice: Any) -> None:
        body = {
            "model": "~anthropic/claude-opus-latest",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "openrouter:datetime"},
                {
                    "type": "openrouter:fusion",
                    "parameters": {
                        "analysis_models": ["~openai/gpt-latest", "~google/gemini-pro-latest"],
                        "model": "~openai/gpt-latest",
                        "max_tool_calls": 12,
                        "temperature": 0.7,
                        "reasoning": {"effort": "low"},
                        "max_completion_tokens": 16384,
                        "tools": [{"type": "openrouter:web_search", "parameters": {"excluded_domains": ["a.example"]}}],
                    },
                },
            ],
        }
        config = presets.preset_import(user=alice, data=json.dumps(body)).config
        assert [m["model"] for m in config["members"]] == ["~openai/gpt-latest", "~google/gemini-pro-latest"]
        assert {(m["temperature"], m["reasoning_effort"], m["max_tokens"]) for m in config["members"]} == {
            (0.7, "low", 16384)
        }
        assert config["analyst"] == {"model": "~openai/gpt-latest"}  # the tool's model
        assert config["writer"] == {"model": "~anthropic/claude-opus-latest"}  # the request's model
        assert config["research"] == {
            "web_tools": True,
            "max_tool_calls": 12,
            "excluded_domains": ["a.example"],
            "blocked_domains": [],
        }

    def test_server_tool_defaults_follow_openrouter(self, alice: Any) -> None:
        # Without the tool's model the analyst is the request's model; a bare tool takes the plugin's defaults.
        body = {"model": "c/d", "tools": [{"type": "openrouter:fusion", "parameters": {"analysis_models": ["a/b"]}}]}
        config = presets.preset_import(user=alice, data=json.dumps(body)).config
        assert config["analyst"] == config["writer"] == {"model": "c/d"}
        config = presets.preset_import(user=alice, data='{"type": "openrouter:fusion"}').config
        assert [m["model"] for m in config["members"]] == ["sim/atlas", "sim/borealis"]
        assert config["research"]["web_tools"] is True

    @pytest.mark.parametrize(
        "body, message",
        [
            ({"tools": [{"type": "openrouter:fusion", "parameters": "a/b"}]}, "parameters must be an object"),
            ({"model": 5, "tools": [{"type": "openrouter:fusion"}]}, "model (the writer) must be a model id"),
            (
                {"tools": [{"type": "openrouter:fusion", "parameters": {"analysis_models": ["a/b"], "model": 5}}]},
                "model must be a model id",
            ),
            (
                {
                    "tools": [
                        {"type": "openrouter:fusion", "parameters": {"analysis_models": ["a/b"], "temperature": 9}}
                    ]
                },
                "temperature must be between 0 and 2",
            ),
            (
                {
                    "tools": [
                        {"type": "openrouter:fusion", "parameters": {"analysis_models": ["a/b"], "reasoning": "x"}}
                    ]
                },
                "reasoning must be an object",
            ),
        ],
    )
    def test_a_malformed_server_tool_gets_a_clear_error(self, alice: Any, body: Any, message: str) -> None:
        with pytest.raises(presets.PresetError, match=re.escape(message)):
            presets.preset_import(user=alice, data=json.dumps(body))
        assert not Preset.objects.exists()

    def test_plugin_defaults_follow_openrouter(self, alice: Any) -> None:
        preset = presets.preset_import(user=alice, data='{"id": "fusion"}')
        # Omitted analysis_models: the Quality preset's panel; omitted model: its first model.
        assert [m["model"] for m in preset.config["members"]] == ["sim/atlas", "sim/borealis"]
        assert preset.config["writer"] == {"model": "sim/atlas"}
        assert preset.config["research"]["web_tools"] is True  # omitted tools: both, by default
        assert preset.config["research"]["max_tool_calls"] == 4

    @pytest.mark.parametrize(
        "text, message",
        [
            ("{not json", "This is not valid JSON (line 1, column 2"),
            ("", "Choose a JSON file or paste the JSON."),
            ("[1, 2]", "Expected a JSON object"),
            ('"fusion"', "Expected a JSON object"),
            ('{"hello": "world"}', "neither a preset export"),
            ('{"format": "fusion-preset/2", "config": {}}', "Unsupported format &#x27;fusion-preset/2&#x27;"),
            ('{"format": "fusion-preset/1", "name": "x"}', "The export has no config object"),
            (
                '{"format": "fusion-preset/1", "name": "x", "config": {"members": []}}',
                "The panel needs at least one member.",
            ),
            (
                '{"id": "fusion", "analysis_models": "a/b", "model": "c/d"}',
                "analysis_models must be a list of model ids",
            ),
            ('{"id": "fusion", "analysis_models": [], "model": "c/d"}', "analysis_models is empty"),
            (
                '{"id": "fusion", "analysis_models": ["a/b","a/b","a/b","a/b","a/b","a/b","a/b","a/b","a/b"], "model": "c/d"}',
                "at most 8 members (analysis_models has 9)",
            ),
            ('{"id": "fusion", "analysis_models": ["a/b"], "model": 5}', "model must be a model id"),
            (
                '{"id": "fusion", "analysis_models": ["a/b"], "model": "c/d", "max_tool_calls": 99}',
                "between 1 and 16 (got 99)",
            ),
            (
                '{"id": "fusion", "analysis_models": ["a/b"], "model": "c/d", "tools": [{"type": "openrouter:image"}]}',
                "Unsupported tool &#x27;openrouter:image&#x27;",
            ),
            (
                '{"id": "fusion", "analysis_models": ["a/b"], "model": "c/d", "tools": [{"type": "openrouter:web_search", '
                '"parameters": {"excluded_domains": ["not a domain"]}}]}',
                "&#x27;not a domain&#x27; is not a",
            ),
            ('{"plugins": [{"id": "web"}]}', "No plugin with id &#x27;fusion&#x27;"),
            ('{"plugins": {"id": "fusion"}}', "plugins must be a list"),
            ('{"id": "moderation", "analysis_models": ["a/b"]}', "only the &#x27;fusion&#x27; plugin is a panel"),
        ],
    )
    def test_malformed_imports_get_a_clear_error(
        self, alice_client: Client, alice: Any, text: str, message: str
    ) -> None:
        response = alice_client.post(reverse("preset_import"), {"text": text, "name": ""})
        assert response.status_code == 400
        assert message in response.content.decode()
        assert not Preset.objects.exists()

    def test_too_large_files_are_refused(self, alice_client: Client) -> None:
        big = json.dumps({"format": "fusion-preset/1", "name": "big", "description": "x" * 120_000}).encode()
        response = alice_client.post(reverse("preset_import"), {"file": SimpleUploadedFile("big.json", big)})
        assert response.status_code == 400
        assert "preset files are limited to 100 KB" in response.content.decode()
        response = alice_client.post(reverse("preset_import"), {"text": big.decode()})
        assert "preset files are limited to 100 KB" in response.content.decode()
        assert not Preset.objects.exists()

    def test_a_file_that_is_not_text(self, alice: Any) -> None:
        with pytest.raises(presets.PresetError, match="not UTF-8 text"):
            presets.preset_import(user=alice, data=b"\xff\xfe\x00{")


# --------------------------------------------------------------------------- the composer


class TestComposer:
    def test_the_chooser_lists_own_presets_and_built_ins_with_the_default_selected(
        self, alice_client: Client, alice: Any
    ) -> None:
        mine = make_preset(alice, "Mine")
        other = make_preset(alice, "Other")
        presets.preset_set_default(user=alice, preset=mine)
        html = page(alice_client, reverse("home"))
        assert f'<option value="{mine.pk}" selected>Mine (default)</option>' in html
        assert f'<option value="{other.pk}">Other</option>' in html
        assert '<option value="builtin:quality">Quality</option>' in html
        assert '<option value="">Custom panel</option>' in html

    def test_without_a_default_a_custom_panel_is_selected(self, alice_client: Client) -> None:
        assert '<option value="" selected>Custom panel</option>' in page(alice_client, reverse("home"))

    def test_a_conversation_preselects_its_own_preset(self, alice_client: Client, alice: Any) -> None:
        mine = make_preset(alice, "Mine")
        presets.preset_set_default(user=alice, preset=mine)
        built = Conversation.objects.create(
            user=alice, panel={"members": [{"model": "sim/atlas"}]}, builtin_preset="quality"
        )
        custom = Conversation.objects.create(user=alice, panel={"members": [{"model": "sim/atlas"}]})
        fresh = Conversation.objects.create(user=alice)
        assert '<option value="builtin:quality" selected>' in page(
            alice_client, reverse("conversation", args=[built.pk])
        )
        assert '<option value="" selected>' in page(alice_client, reverse("conversation", args=[custom.pk]))
        assert f'<option value="{mine.pk}" selected>' in page(alice_client, reverse("conversation", args=[fresh.pk]))

    def test_the_first_prompt_with_a_preset_stores_it_on_the_conversation(
        self, alice_client: Client, alice: Any
    ) -> None:
        preset = make_preset(alice)
        alice_client.post(
            reverse("conversation_new"),
            {
                "prompt": "Why is the sea salty?",
                "members": "sim/atlas 0.3\nsim/borealis\nsim/atlas 1.2",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "per_member",
                "preset": str(preset.pk),
            },
        )
        conversation = Conversation.objects.get(user=alice)
        assert conversation.preset == preset and conversation.builtin_preset == ""
        # The whole config, not only what the fields show: labels, system prompts, research.
        assert conversation.panel == presets.panel_from_config(preset.config)
        assert conversation.panel["members"][0]["system_prompt"] == "Answer like a careful librarian."
        assert conversation.panel["research"]["max_tool_calls"] == 6
        assert conversation.follow_up_mode == "per_member"

    def test_use_for_this_conversation_stores_a_built_in(self, alice_client: Client, alice: Any) -> None:
        conversation = Conversation.objects.create(user=alice, panel={"members": [{"model": "sim/x"}]})
        response = alice_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {
                "members": "sim/atlas\nsim/borealis",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "fused",
                "preset": "builtin:quality",
            },
            headers={"Accept": "application/json"},
        )
        assert response.json()["ok"]
        conversation.refresh_from_db()
        assert (conversation.builtin_preset, conversation.preset) == ("quality", None)
        assert [m["model"] for m in conversation.panel["members"]] == ["sim/atlas", "sim/borealis"]

    def test_a_hand_written_panel_forgets_the_preset(self, alice_client: Client, alice: Any) -> None:
        conversation = Conversation.objects.create(
            user=alice, panel={"members": [{"model": "sim/x"}]}, builtin_preset="quality"
        )
        alice_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {
                "members": "sim/cirrus",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "fused",
                "preset": "",
            },
        )
        conversation.refresh_from_db()
        assert (conversation.builtin_preset, conversation.preset) == ("", None)
        assert conversation.panel["members"] == [{"model": "sim/cirrus"}]

    def test_an_unknown_built_in_is_not_found(self, alice_client: Client, alice: Any) -> None:
        conversation = Conversation.objects.create(user=alice)
        response = alice_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {
                "members": "sim/cirrus",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "fused",
                "preset": "builtin:nope",
            },
        )
        assert response.status_code == 404


# --------------------------------------------------------------------------- the websocket


SCRIPTS: dict[str, Any] = {
    "sim/atlas": {"ttft_ms": 30, "tokens_per_s": 600, "chunk_chars": 16},
    "sim/borealis": {"ttft_ms": 30, "tokens_per_s": 600, "chunk_chars": 16},
    "sim/analyst": {},
    "sim/writer": {"ttft_ms": 20, "tokens_per_s": 800},
}
WS_CONFIG = config(
    members=[
        {"model": "sim/atlas", "label": "Librarian", "system_prompt": "Answer like a careful librarian."},
        {"model": "sim/borealis", "temperature": 0.5},
    ],
    research={"web_tools": False},
)


@pytest.fixture
async def upstream(settings: Any, scripted: Any) -> ScriptedUpstream:
    return serve_from(settings, await scripted(SCRIPTS, time_scale=0.1), key="test-key", checkpoint_s=0.2)


@pytest.mark.django_db(transaction=True)
class TestWebsocketStart:
    async def _start(self, user: Any, conversation: Conversation, **fields: Any) -> tuple[Any, list[dict[str, Any]]]:
        comm = await open_ws(user, conversation.pk)
        await comm.send_json_to(
            {"type": "start", "run_id": str(uuid.uuid4()), "prompt": "Why is the sky blue?", **fields}
        )
        events = await collect_until(comm, {"completed", "failed", "error"})
        return comm, events

    async def test_a_preset_id_runs_its_whole_config(self, alice: Any, upstream: Any) -> None:
        preset = await database_sync_to_async(make_preset)(alice, config=WS_CONFIG)
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        comm, events = await self._start(alice, conversation, preset=preset.pk)
        assert events[0]["type"] == "run.started"
        assert events[0]["members"] == [
            {"slot": 0, "model": "sim/atlas", "label": "Librarian"},
            {"slot": 1, "model": "sim/borealis", "label": ""},
        ]
        assert events[-1]["type"] == "completed", events[-1]
        atlas = next(r for r in upstream.requests if r["model"] == "sim/atlas")
        assert atlas["messages"][0] == {"role": "system", "content": "Answer like a careful librarian."}
        borealis = next(r for r in upstream.requests if r["model"] == "sim/borealis")
        assert borealis["params"]["temperature"] == 0.5
        run = await database_sync_to_async(Run.objects.get)()
        assert run.config["members"][0]["system_prompt"] == "Answer like a careful librarian."
        # A conversation without a panel adopts the preset, with its follow-up mode.
        conversation = await database_sync_to_async(Conversation.objects.get)(pk=conversation.pk)
        assert (conversation.preset_id, conversation.follow_up_mode) == (preset.pk, "per_member")
        assert conversation.panel == run.config
        await comm.disconnect()

    async def test_a_built_in_by_name(self, alice: Any, upstream: Any) -> None:
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        comm, events = await self._start(alice, conversation, preset="builtin:quality")
        assert [m["model"] for m in events[0]["members"]] == ["sim/atlas", "sim/borealis"]
        assert events[-1]["type"] == "completed", events[-1]
        conversation = await database_sync_to_async(Conversation.objects.get)(pk=conversation.pk)
        assert conversation.builtin_preset == "quality"
        await comm.disconnect()

    async def test_a_preset_for_one_turn_leaves_the_conversations_panel(self, alice: Any, upstream: Any) -> None:
        preset = await database_sync_to_async(make_preset)(alice, config=WS_CONFIG)
        panel = {
            "members": [{"model": "sim/borealis"}],
            "analyst": {"model": "sim/analyst"},
            "writer": {"model": "sim/writer"},
        }
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, panel=panel)
        comm, events = await self._start(alice, conversation, preset=str(preset.pk))
        assert len(events[0]["members"]) == 2
        assert events[-1]["type"] == "completed", events[-1]
        conversation = await database_sync_to_async(Conversation.objects.get)(pk=conversation.pk)
        assert (conversation.panel, conversation.preset_id) == (panel, None)
        await comm.disconnect()

    @pytest.mark.parametrize("ref", ["alices", "missing", "builtin:nope"])
    async def test_another_users_preset_is_not_found(self, alice: Any, bob: Any, ref: str) -> None:
        alices = await database_sync_to_async(make_preset)(alice, config=WS_CONFIG)
        value = {"alices": alices.pk, "missing": alices.pk + 1000}.get(ref, ref)
        conversation = await database_sync_to_async(Conversation.objects.create)(user=bob)
        comm, events = await self._start(bob, conversation, preset=value)
        assert [(e["type"], e["code"], e["message"]) for e in events] == [("error", "not_found", "No such preset.")]
        assert await database_sync_to_async(Run.objects.count)() == 0
        conversation = await database_sync_to_async(Conversation.objects.get)(pk=conversation.pk)
        assert (conversation.panel, conversation.preset_id) == ({}, None)
        await comm.disconnect()

    @pytest.mark.parametrize(
        "fields",
        [
            {"preset": True},
            {"preset": "quality"},
            {"preset": ["1"]},
            {"preset": -3},
            {"preset": "builtin:quality", "panel": {"members": [{"model": "sim/atlas"}]}},
        ],
    )
    async def test_a_malformed_preset_field_is_invalid(self, alice: Any, fields: dict[str, Any]) -> None:
        conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
        comm, events = await self._start(alice, conversation, **fields)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid"
        await comm.disconnect()


# --------------------------------------------------------------------------- estimate text


class TestEstimateText:
    """Preset pages show dollars exactly as the composer and the usage page do (chat.spend.usd)."""

    def test_it_rounds_like_every_other_page(self) -> None:
        from chat import spend

        for amount in (0.00314, 0.0123, 0.125, 1.005, 0.0):
            assert presets.estimate_text((amount, amount)) == spend.usd(amount)

    def test_a_sub_cent_cost_is_rounded_up_not_down(self) -> None:
        assert presets.estimate_text((0.00311, 0.00311)) == "$0.0032"

    def test_a_range_shows_both_ends_and_an_unusable_estimate_none(self) -> None:
        assert presets.estimate_text((0.0123, 0.0456)) == "$0.01–$0.05"
        assert presets.estimate_text(None) is None
        assert presets.estimate_text(("a", "b")) is None
