"""Pages: accounts, ownership of every conversation view, exports, untrusted output, CSP, demo banner."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, MemberResponse, Run, RunStatus, Turn

pytestmark = pytest.mark.django_db

XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)> and [link](javascript:alert(2))'


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def alice_client(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob: Any) -> Client:
    c = Client()
    c.force_login(bob)
    return c


def make_conversation(user: Any, title: str = "A conversation", *, age_minutes: int = 0) -> Conversation:
    when = timezone.now() - timedelta(minutes=age_minutes)
    return Conversation.objects.create(user=user, title=title, created_at=when, updated_at=when)


def make_turn(
    conversation: Conversation,
    *,
    prompt: str = "Is the sky blue?",
    member_content: str = "Yes, mostly.",
    answer: str = "The sky looks blue because of Rayleigh scattering.",
) -> Run:
    """A finished turn written straight through the ORM: two members (one failed), analysis, answer."""
    turn = Turn.objects.create(conversation=conversation, index=conversation.turns.count(), prompt=prompt)
    run = Run.objects.create(
        user=conversation.user,
        conversation=conversation,
        turn=turn,
        client_run_id=f"client-{turn.pk}",
        status=RunStatus.COMPLETE,
        config={
            "members": [{"model": "sim/atlas"}, {"model": "sim/borealis"}],
            "analyst": {"model": "sim/analyst"},
            "writer": {"model": "sim/writer"},
        },
        analysis={
            "consensus": ["Rayleigh scattering explains the colour"],
            "contradictions": [{"topic": "Sunsets", "stances": [{"model": "sim/atlas", "stance": "red from dust"}]}],
            "partial_coverage": [{"models": ["sim/atlas"], "point": "Ozone absorption"}],
            "unique_insights": [{"model": "sim/atlas", "insight": "Violet is absorbed high up"}],
            "blind_spots": ["Human colour perception"],
        },
        label_map={"Response A": "sim/atlas"},
        analyst_model="sim/analyst",
        writer_model="sim/writer",
        answer=answer,
        failed_models=["sim/borealis"],
        usage={
            "prompt_tokens": 120,
            "completion_tokens": 80,
            "reasoning_tokens": 0,
            "total_tokens": 200,
            "cost": 0.0042,
        },
        timings={"panel": 900, "analysis": 300, "synthesis": 400, "total": 1600},
        finished_at=timezone.now(),
    )
    MemberResponse.objects.create(
        run=run,
        slot=0,
        model="sim/atlas",
        status="complete",
        content=member_content,
        ttft_ms=120,
        duration_ms=880,
        usage={"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70, "cost": 0.001},
    )
    MemberResponse.objects.create(
        run=run,
        slot=1,
        model="sim/borealis",
        status="failed",
        error_kind="rate_limited",
        error_message="The provider is rate limiting requests. Wait a moment and retry.",
    )
    return run


def pending_start(response: Any) -> Any:
    """The prompt the page hands its script to start (the json_script "pending-start")."""
    match = re.search(r'<script id="pending-start" type="application/json">(.*?)</script>', response.content.decode())
    return json.loads(match.group(1))


def sidebar_titles(html: str) -> list[str]:
    return re.findall(r'class="conv-link"[^>]*>([^<]*)</a>', html)


# --------------------------------------------------------------------------- accounts


class TestLoginRequired:
    @pytest.mark.parametrize(
        "name, args",
        [
            ("home", []),
            ("conversation", [1]),
            ("conversation_state", [1]),
            ("conversation_delete", [1]),
            ("conversation_export_md", [1]),
            ("conversation_export_json", [1]),
            ("password_change", []),
        ],
    )
    def test_it_redirects_anonymous_visitors_to_sign_in(self, client: Client, name: str, args: list[int]) -> None:
        url = reverse(name, args=args)
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
        assert "next=" in response["Location"]

    @pytest.mark.parametrize("name", ["conversation_new", "conversation_rename", "conversation_settings"])
    def test_it_redirects_anonymous_posts_too(self, client: Client, name: str) -> None:
        url = reverse(name) if name == "conversation_new" else reverse(name, args=[1])
        response = client.post(url, {"title": "x"})
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))

    def test_health_needs_no_login(self, client: Client) -> None:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.content == b"ok"

    def test_sign_in_and_sign_up_pages_are_public(self, client: Client) -> None:
        assert client.get(reverse("login")).status_code == 200
        assert client.get(reverse("signup")).status_code == 200


class TestSignUp:
    def test_it_creates_the_account_and_signs_in(self, client: Client) -> None:
        response = client.post(
            reverse("signup"), {"username": "carol", "password1": "violet-kettle-93", "password2": "violet-kettle-93"}
        )
        assert response.status_code == 302
        assert response["Location"] == reverse("home")
        assert get_user_model().objects.filter(username="carol").exists()
        # Signed in: home is reachable (empty state, no conversation yet).
        home = client.get(reverse("home"))
        assert home.status_code == 200
        assert b"Ask a panel of models" in home.content

    @pytest.mark.parametrize(
        "password, reason",
        [
            ("password", "too common"),
            ("1234567890", "entirely numeric"),
            ("short1", "too short"),
            ("carol-carol", "too similar"),
        ],
    )
    def test_validators_reject_weak_passwords(self, client: Client, password: str, reason: str) -> None:
        response = client.post(
            reverse("signup"), {"username": "carol-carol", "password1": password, "password2": password}
        )
        assert response.status_code == 400
        assert not get_user_model().objects.filter(username="carol-carol").exists()
        assert reason.split()[-1] in response.content.decode().lower()

    def test_it_rejects_a_taken_username(self, client: Client, alice: Any) -> None:
        response = client.post(
            reverse("signup"), {"username": "alice", "password1": "violet-kettle-93", "password2": "violet-kettle-93"}
        )
        assert response.status_code == 400


class TestSignInOut:
    def test_it_signs_in_with_the_right_password(self, client: Client, alice: Any) -> None:
        response = client.post(reverse("login"), {"username": "alice", "password": "correct-horse-battery-1"})
        assert response.status_code == 302
        assert client.get(reverse("home")).status_code == 200

    def test_it_refuses_a_wrong_password(self, client: Client, alice: Any) -> None:
        response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
        assert response.status_code == 200
        assert b"correct username and password" in response.content

    def test_sign_out_is_a_post(self, alice_client: Client) -> None:
        assert alice_client.get(reverse("logout")).status_code == 405
        response = alice_client.post(reverse("logout"))
        assert response.status_code == 302
        assert alice_client.get(reverse("home")).status_code == 302

    def test_it_changes_the_password(self, alice_client: Client, alice: Any) -> None:
        response = alice_client.post(
            reverse("password_change"),
            {
                "old_password": "correct-horse-battery-1",
                "new_password1": "quiet-lantern-77",
                "new_password2": "quiet-lantern-77",
            },
        )
        assert response.status_code == 302
        alice.refresh_from_db()
        assert alice.check_password("quiet-lantern-77")


# --------------------------------------------------------------------------- sidebar & home


class TestSidebar:
    def test_it_lists_only_own_conversations_newest_first(self, alice_client: Client, alice: Any, bob: Any) -> None:
        make_conversation(alice, "Old one", age_minutes=60 * 24 * 30)
        newest = make_conversation(alice, "Newest one", age_minutes=1)
        make_conversation(alice, "Middle one", age_minutes=60)
        make_conversation(bob, "Bob's secret plan")
        html = alice_client.get(reverse("conversation", args=[newest.pk])).content.decode()
        assert sidebar_titles(html) == ["Newest one", "Middle one", "Old one"]
        assert "Bob&#x27;s secret plan" not in html and "Bob's secret plan" not in html

    def test_search_filters_titles(self, alice_client: Client, alice: Any) -> None:
        c = make_conversation(alice, "Rust lifetimes")
        make_conversation(alice, "Sourdough starter")
        html = alice_client.get(reverse("conversation", args=[c.pk]), {"q": "sourDOUGH"}).content.decode()
        assert sidebar_titles(html) == ["Sourdough starter"]
        html = alice_client.get(reverse("conversation", args=[c.pk]), {"q": "nothing like it"}).content.decode()
        assert sidebar_titles(html) == []
        assert "No titles match" in html


class TestHome:
    def test_it_shows_the_empty_state_without_conversations(self, alice_client: Client) -> None:
        response = alice_client.get(reverse("home"))
        assert response.status_code == 200
        assert b'action="/c/new"' in response.content

    def test_it_opens_a_fresh_composer_even_with_conversations(self, alice_client: Client, alice: Any) -> None:
        make_conversation(alice, "older", age_minutes=10)
        make_conversation(alice, "newer")
        response = alice_client.get(reverse("home"))
        assert response.status_code == 200  # never a silent continuation of "newer"
        assert b'action="/c/new"' in response.content

    def test_first_send_creates_the_conversation_and_hands_the_prompt_to_the_page(
        self, alice_client: Client, alice: Any
    ) -> None:
        response = alice_client.post(
            reverse("conversation_new"),
            {
                "prompt": "Why is the sea salty?",
                "members": "sim/atlas 0.3\nsim/borealis",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "per_member",
            },
        )
        conversation = Conversation.objects.get(user=alice)
        assert response["Location"] == reverse("conversation", args=[conversation.pk])
        assert conversation.follow_up_mode == "per_member"
        assert conversation.panel["members"] == [{"model": "sim/atlas", "temperature": 0.3}, {"model": "sim/borealis"}]
        pending = pending_start(alice_client.get(response["Location"]))
        assert pending["prompt"] == "Why is the sea salty?"
        # A reload before the socket started it hands the same run id out again…
        assert pending_start(alice_client.get(response["Location"])) == pending
        # …and once a run with that id exists, the page stops handing it out.
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="Why is the sea salty?")
        Run.objects.create(
            user=alice, conversation=conversation, turn=turn, client_run_id=pending["run_id"], status="complete"
        )
        assert pending_start(alice_client.get(response["Location"])) is None

    def test_first_send_with_a_bad_panel_says_what_to_fix(self, alice_client: Client, alice: Any) -> None:
        response = alice_client.post(
            reverse("conversation_new"),
            {
                "prompt": "hi",
                "members": "sim/atlas 7",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "fused",
            },
        )
        assert response.status_code == 400
        assert b"temperature must be between 0 and 2" in response.content
        assert not Conversation.objects.filter(user=alice).exists()

    def test_first_send_rejects_an_over_long_prompt(self, alice_client: Client, settings: Any) -> None:
        settings.FUSION_MAX_PROMPT_CHARS = 10
        response = alice_client.post(
            reverse("conversation_new"),
            {
                "prompt": "x" * 11,
                "members": "sim/atlas",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "fused",
            },
        )
        assert response.status_code == 400
        assert b"the limit is 10" in response.content

    def test_new_conversation_button_reuses_an_empty_one(self, alice_client: Client, alice: Any) -> None:
        first = alice_client.post(reverse("conversation_new"))
        second = alice_client.post(reverse("conversation_new"))
        assert first["Location"] == second["Location"]
        assert Conversation.objects.filter(user=alice).count() == 1
        make_turn(Conversation.objects.get(user=alice))
        alice_client.post(reverse("conversation_new"))
        assert Conversation.objects.filter(user=alice).count() == 2


# --------------------------------------------------------------------------- the conversation page


class TestConversationPage:
    def test_it_embeds_each_turns_state_for_the_script(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        run = make_turn(conversation, member_content="**Bold** claim")
        html = alice_client.get(reverse("conversation", args=[conversation.pk])).content.decode()
        data = json.loads(re.search(r'<script id="turns-data" type="application/json">(.*?)</script>', html).group(1))
        assert len(data) == 1
        state = data[0]
        assert state["run"] == str(run.pk)
        assert state["turn"]["prompt"] == "Is the sky blue?"
        assert state["members"][0]["html"].strip() == "<p><strong>Bold</strong> claim</p>"
        assert state["members"][1]["error"]["message"].startswith("The provider is rate limiting")
        assert "Rayleigh" in state["final"]["html"]
        assert 'src="/static/js/conversation.js"' in html

    def test_state_json_returns_the_same_turns(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        run = make_turn(conversation)
        data = alice_client.get(reverse("conversation_state", args=[conversation.pk])).json()
        assert [t["run"] for t in data["turns"]] == [str(run.pk)]

    def test_untrusted_model_output_is_never_served_as_markup(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, title='<img src=x onerror=alert("title")>')
        make_turn(conversation, prompt=XSS, member_content=XSS, answer=XSS)
        html = alice_client.get(reverse("conversation", args=[conversation.pk])).content.decode()
        assert "<script>alert" not in html
        assert not re.search(r"<img[^>]*onerror", html, re.IGNORECASE)
        assert 'href="javascript' not in html
        # Every <script> element is either our module or inert JSON data.
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'type="module" src="/static/' in tag or 'type="application/json"' in tag, tag

    def test_the_json_export_is_not_served_as_html(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        make_turn(conversation, member_content=XSS)
        response = alice_client.get(reverse("conversation_export_json", args=[conversation.pk]))
        assert response["Content-Type"].startswith("application/json")
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response.json()["turns"][0]["runs"][0]["members"][0]["content"] == XSS

    def test_pages_carry_a_strict_content_security_policy(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        make_turn(conversation)
        for url in (reverse("conversation", args=[conversation.pk]), reverse("login")):
            response = alice_client.get(url)
            csp = response["Content-Security-Policy"]
            script_src = re.search(r"script-src ([^;]*)", csp).group(1)
            assert "'unsafe-inline'" not in script_src
            assert "'unsafe-eval'" not in script_src
            assert "style=" not in response.content.decode()  # CSP forbids inline style attributes

    def test_the_demo_banner_shows_only_in_demo_mode(self, alice_client: Client, alice: Any, settings: Any) -> None:
        conversation = make_conversation(alice)
        url = reverse("conversation", args=[conversation.pk])
        settings.FUSION_DEMO = False
        assert b"Demo mode" not in alice_client.get(url).content
        settings.FUSION_DEMO = True
        for page in (url, reverse("login"), reverse("conversation_delete", args=[conversation.pk])):
            body = Client().get(page).content if page == reverse("login") else alice_client.get(page).content
            assert "Demo mode</strong> — answers come from simulated models (sim/…), not real LLMs" in body.decode()


# --------------------------------------------------------------------------- rename, delete, settings


class TestRenameDelete:
    def test_it_renames_without_reordering(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, "Old title", age_minutes=30)
        before = conversation.updated_at
        response = alice_client.post(reverse("conversation_rename", args=[conversation.pk]), {"title": "  New title  "})
        assert response.status_code == 302
        conversation.refresh_from_db()
        assert conversation.title == "New title"
        assert conversation.updated_at == before

    def test_rename_goes_back_to_a_safe_next_url_only(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        url = reverse("conversation_rename", args=[conversation.pk])
        assert alice_client.post(url, {"title": "a", "next": "/c/1/?q=x"})["Location"] == "/c/1/?q=x"
        assert alice_client.post(url, {"title": "b", "next": "https://evil.example/"})["Location"] == reverse(
            "conversation", args=[conversation.pk]
        )

    def test_an_empty_title_is_refused(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, "Keep me")
        alice_client.post(reverse("conversation_rename", args=[conversation.pk]), {"title": "   "})
        conversation.refresh_from_db()
        assert conversation.title == "Keep me"

    def test_delete_asks_first_then_deletes_everything(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, "Doomed")
        make_turn(conversation)
        url = reverse("conversation_delete", args=[conversation.pk])
        page = alice_client.get(url)
        assert page.status_code == 200
        assert b"Delete \xe2\x80\x9cDoomed\xe2\x80\x9d?" in page.content
        assert Conversation.objects.filter(pk=conversation.pk).exists()
        response = alice_client.post(url)
        assert response["Location"] == reverse("home")
        assert not Conversation.objects.filter(pk=conversation.pk).exists()
        assert not Run.objects.exists() and not MemberResponse.objects.exists()


class TestSettings:
    def test_it_saves_the_panel_and_follow_up_mode(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice)
        response = alice_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {
                "members": "sim/atlas\nsim/atlas 1.2\n\nollama:llama3.1:8b",
                "analyst": "sim/analyst",
                "writer": "sim/writer",
                "follow_up_mode": "per_member",
            },
        )
        assert response.status_code == 302
        conversation.refresh_from_db()
        assert [m["model"] for m in conversation.panel["members"]] == ["sim/atlas", "sim/atlas", "ollama:llama3.1:8b"]
        assert conversation.panel["members"][1]["temperature"] == 1.2
        assert conversation.panel["writer"] == {"model": "sim/writer"}
        assert conversation.follow_up_mode == "per_member"
        # The composer starts from the saved panel.
        html = alice_client.get(reverse("conversation", args=[conversation.pk])).content.decode()
        assert "sim/atlas 1.2" in html

    @pytest.mark.parametrize(
        "members, message",
        [
            ("\n".join(f"sim/m{i}" for i in range(9)), "at most 8 members"),
            ("sim/atlas hot", "temperature must be a number"),
            ("", "This field is required"),
            ("not a model id", "write a model id"),
        ],
    )
    def test_it_refuses_a_bad_panel_with_a_reason(
        self, alice_client: Client, alice: Any, members: str, message: str
    ) -> None:
        conversation = make_conversation(alice)
        response = alice_client.post(
            reverse("conversation_settings", args=[conversation.pk]),
            {"members": members, "analyst": "sim/analyst", "writer": "sim/writer", "follow_up_mode": "fused"},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 400
        assert message in response.json()["error"]
        conversation.refresh_from_db()
        assert conversation.panel == {}


# --------------------------------------------------------------------------- ownership


class TestOwnership:
    @pytest.fixture
    def alices(self, alice: Any) -> Conversation:
        conversation = make_conversation(alice, "Alice's plans")
        make_turn(conversation)
        return conversation

    @pytest.mark.parametrize(
        "method, name",
        [
            ("get", "conversation"),
            ("post", "conversation"),
            ("get", "conversation_state"),
            ("post", "conversation_rename"),
            ("get", "conversation_delete"),
            ("post", "conversation_delete"),
            ("post", "conversation_settings"),
            ("get", "conversation_export_md"),
            ("get", "conversation_export_json"),
        ],
    )
    def test_bob_gets_not_found_for_alices_conversation(
        self, bob_client: Client, alices: Conversation, method: str, name: str
    ) -> None:
        url = reverse(name, args=[alices.pk])
        data = {
            "title": "mine now",
            "prompt": "hi",
            "members": "sim/x",
            "analyst": "sim/a",
            "writer": "sim/w",
            "follow_up_mode": "fused",
        }
        response = getattr(bob_client, method)(url, data) if method == "post" else bob_client.get(url)
        assert response.status_code == 404
        alices.refresh_from_db()
        assert alices.title == "Alice's plans"
        assert alices.panel == {}

    def test_a_missing_id_looks_the_same(self, bob_client: Client, alices: Conversation) -> None:
        missing = bob_client.get(reverse("conversation", args=[alices.pk + 1000]))
        foreign = bob_client.get(reverse("conversation", args=[alices.pk]))
        assert missing.status_code == foreign.status_code == 404
        assert missing.content == foreign.content


# --------------------------------------------------------------------------- NotFound → 404


class TestNotFoundIsA404:
    """Services raise chat.errors.NotFound; every view that looks something up answers it with a 404."""

    def test_selectors_raise_the_domain_error_not_an_http_one(self, alice: Any, bob: Any) -> None:
        from django.http import Http404

        from chat import accounts, conversations, keys, presets
        from chat.errors import NotFound
        from chat.models import Preset

        alices_conversation = make_conversation(alice)
        alices_preset = Preset.objects.create(user=alice, name="Alice's", config={})
        alices_key = keys.key_set(user=alice, provider="openrouter", raw="sk-or-alice-0123456789")
        lookups = [
            lambda: conversations.conversation_get_for_user(user=bob, pk=alices_conversation.pk),
            lambda: presets.preset_get_for_user(user=bob, pk=alices_preset.pk),
            lambda: presets.preset_resolve(user=bob, ref=str(alices_preset.pk)),
            lambda: presets.preset_resolve(user=bob, ref="builtin:nope"),
            lambda: presets.preset_get_shared(token="no-such-token"),
            lambda: presets.builtin_get(key="nope"),
            lambda: keys.key_get_for_user(user=bob, pk=alices_key.pk),
            lambda: accounts.invite_get(pk=12345),
        ]
        for lookup in lookups:
            with pytest.raises(NotFound) as exc:
                lookup()
            assert not isinstance(exc.value, Http404)

    def test_the_decorator_turns_not_found_into_http404_with_its_message(self, rf: Any) -> None:
        from django.http import Http404

        from chat.errors import NotFound
        from chat.views._common import not_found_is_404

        @not_found_is_404
        def view(request: Any, pk: int) -> Any:
            raise NotFound("No such thing.")

        with pytest.raises(Http404, match="No such thing."):
            view(rf.get("/"), pk=1)

    def test_every_view_with_an_id_in_its_url_answers_a_missing_one_with_404(self, client: Client, alice: Any) -> None:
        """A view that forgot the mapping would let NotFound escape (the test client re-raises it)."""
        from django.urls import URLPattern

        from chat.urls import urlpatterns

        alice.is_staff = True  # so Settings → Invites is reachable too
        alice.save()
        client.force_login(alice)
        missing = {
            "pk": 999_999,
            "key": "no-such-builtin",
            "token": "no-such-token",
            "run": "00000000-0000-0000-0000-000000000000",
            "task_id": "no/such task?",
        }
        checked = []
        for pattern in urlpatterns:
            assert isinstance(pattern, URLPattern)
            params = set(pattern.pattern.converters)
            if not params:
                continue
            url = reverse(pattern.name, kwargs={name: missing[name] for name in params})
            statuses = {client.get(url).status_code, client.post(url, {"preset": "999999"}).status_code}
            assert 404 in statuses and statuses <= {404, 405}, (pattern.name, statuses)
            checked.append(pattern.name)
        assert {
            "conversation",
            "conversation_estimate",
            "key_delete",
            "invite_revoke",
            "preset_edit",
            "builtin_preset",
            "shared_preset_copy",
        } <= set(checked)

    @pytest.mark.parametrize(
        "method, name, data",
        [
            ("get", "conversation_estimate", {}),
            ("get", "conversation_export_json", {}),
            ("post", "conversation_settings", {}),
            ("get", "preset_edit", {}),
            ("post", "preset_share", {}),
            ("post", "key_delete", {}),
        ],
    )
    def test_another_users_object_gets_the_same_page_as_a_missing_one(
        self, bob_client: Client, alice: Any, method: str, name: str, data: dict[str, str]
    ) -> None:
        from chat import keys
        from chat.models import Preset

        owned = {
            "conversation": make_conversation(alice).pk,
            "preset": Preset.objects.create(user=alice, name="Alice's", config={}).pk,
            "key": keys.key_set(user=alice, provider="openrouter", raw="sk-or-alice-0123456789").pk,
        }
        pk = owned[name.split("_")[0]]
        send = getattr(bob_client, method)
        foreign = send(reverse(name, args=[pk]), data)
        absent = send(reverse(name, args=[pk + 1000]), data)
        assert foreign.status_code == absent.status_code == 404
        assert foreign.content == absent.content


class TestLimitsOnThePage:
    """The scripts read the panel limit from the page: the engine declares it once."""

    def test_the_composer_and_the_preset_editor_carry_the_engines_panel_limit(self, alice_client: Client) -> None:
        from chat.fusion.types import MAX_PANEL_MEMBERS

        for url in (reverse("home"), reverse("preset_new")):
            html = alice_client.get(url).content.decode()
            assert f'data-max-members="{MAX_PANEL_MEMBERS}"' in html, url


# --------------------------------------------------------------------------- admin


class TestAdmin:
    def test_staff_can_browse_every_model(self, client: Client, alice: Any) -> None:
        alice.is_staff = alice.is_superuser = True
        alice.save()
        client.force_login(alice)
        run = make_turn(make_conversation(alice))
        for url in (
            "/admin/chat/conversation/",
            f"/admin/chat/conversation/{run.conversation_id}/change/",
            "/admin/chat/turn/",
            "/admin/chat/run/",
            f"/admin/chat/run/{run.pk}/change/",
            "/admin/chat/memberresponse/",
        ):
            assert client.get(url).status_code == 200, url


# --------------------------------------------------------------------------- exports


class TestExports:
    def test_json_export_holds_every_part_of_a_turn(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, "Sky")
        run = make_turn(conversation)
        response = alice_client.get(reverse("conversation_export_json", args=[conversation.pk]))
        assert response.status_code == 200
        assert response["Content-Disposition"] == f'attachment; filename="fusion-{conversation.pk}-sky.json"'
        data = response.json()
        assert data["conversation"]["title"] == "Sky"
        turn = data["turns"][0]
        assert turn["prompt"] == "Is the sky blue?"
        exported = turn["runs"][0]
        assert exported["id"] == str(run.pk)
        ok, failed = exported["members"]
        assert ok == {
            "slot": 0,
            "model": "sim/atlas",
            "label": "",
            "status": "complete",
            "attempt": 1,
            "content": "Yes, mostly.",
            "reasoning": "",
            "error": None,
            "metrics": {"ttft_ms": 120, "duration_ms": 880},
            "usage": {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70, "cost": 0.001},
            "tool_calls": [],
            "sources": [],
            "notes": [],
        }
        assert failed["status"] == "failed"
        assert failed["error"] == {
            "kind": "rate_limited",
            "message": "The provider is rate limiting requests. Wait a moment and retry.",
        }
        assert exported["analysis"]["consensus"] == ["Rayleigh scattering explains the colour"]
        assert exported["label_map"] == {"Response A": "sim/atlas"}
        assert exported["answer"].startswith("The sky looks blue")
        assert exported["usage"]["total_tokens"] == 200 and exported["usage"]["cost"] == 0.0042
        assert exported["timings"]["total"] == 1600
        assert exported["failed_models"] == ["sim/borealis"]

    def test_markdown_export_reads_as_a_transcript(self, alice_client: Client, alice: Any) -> None:
        conversation = make_conversation(alice, "Sky")
        make_turn(conversation)
        response = alice_client.get(reverse("conversation_export_md", args=[conversation.pk]))
        assert response["Content-Type"].startswith("text/markdown")
        assert response["Content-Disposition"] == f'attachment; filename="fusion-{conversation.pk}-sky.md"'
        text = response.content.decode()
        for expected in (
            "# Sky",
            "### Prompt\n\nIs the sky blue?",
            "#### sim/atlas — complete\n\nYes, mostly.",
            "> Error (rate_limited): The provider is rate limiting requests.",
            "- [x] Rayleigh scattering explains the colour",
            "  - sim/atlas: red from dust",
            "Labels: Response A = sim/atlas",
            "### Fused answer (sim/writer)\n\nThe sky looks blue",
            "200 tokens (120 in, 80 out), cost 0.004200",
            "failed: sim/borealis",
        ):
            assert expected in text, expected
