"""The model catalogue: parsing, aliases, the cache (and an unreachable provider), validation before
any paid call, cost estimates, the picker's JSON and the composer's estimate."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import model_catalogue
from chat.fusion.types import Provider
from chat.fusion.catalogue import CatalogueModel, parse_models, resolve, unknown_models
from chat.testing.scripted import ScriptedUpstream
from chat.models import CatalogueCache, Conversation, Run
from chat.runs import RunError
from chat.runs.services import _start_sync
from tests.conftest import serve_from

P_IN, P_OUT = 0.000002, 0.000008  # USD per token of the priced test models
SCRIPTS: dict[str, Any] = {
    "sim/a": {
        "name": "Sim A",
        "context_length": 32000,
        "pricing": {"prompt": f"{P_IN:.6f}", "completion": f"{P_OUT:.6f}"},
        "ttft_ms": 10,
        "tokens_per_s": 4000,
    },
    "sim/b": {"name": "Sim B", "pricing": {"prompt": f"{P_IN:.6f}", "completion": f"{P_OUT:.6f}"}, "ttft_ms": 10},
    "sim/analyst": {"pricing": {"prompt": f"{P_IN:.6f}", "completion": f"{P_OUT:.6f}"}},
    "sim/writer": {"pricing": {"prompt": f"{P_IN:.6f}", "completion": f"{P_OUT:.6f}"}},
    "sim/free": {"pricing": {"prompt": "0", "completion": "0"}},
    "anthropic/claude-3-opus": {"pricing": {"prompt": "0.000015", "completion": "0.000075"}},
    "anthropic/claude-opus-4.1": {"pricing": {"prompt": "0.000015", "completion": "0.000075"}},
    "anthropic/claude-opus-4.5": {"pricing": {"prompt": "0.000005", "completion": "0.000025"}},
    "*": {},  # the upstream would answer anything; the catalogue is what must say no
}
PANEL = {
    "members": [{"model": "sim/a"}, {"model": "sim/b"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}

# OpenRouter's GET /models row shape (shared/reference/openrouter_openapi.yaml, Model).
OPENROUTER_ROWS = [
    {
        "id": "openai/gpt-4",
        "canonical_slug": "openai/gpt-4",
        "name": "GPT-4",
        "created": 1692901234,
        "context_length": 8192,
        "pricing": {"prompt": "0.00003", "completion": "0.00006", "request": "0", "image": "0"},
        "supported_parameters": ["temperature", "top_p", "max_tokens", "tools", "tool_choice"],
        "architecture": {"modality": "text->text"},
        "top_provider": {"context_length": 8192},
    },
    {
        "id": "openai/gpt-4o-mini",
        "name": "GPT-4o mini",
        "created": 1721260800,
        "context_length": 128000,
        "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
        "supported_parameters": ["temperature"],
    },
    {
        "id": "openai/gpt-5.1",
        "name": "GPT-5.1",
        "created": 1763000000,
        "context_length": 400000,
        "pricing": {"prompt": "0.00000125", "completion": "0.00001"},
        "supported_parameters": ["tools"],
    },
    {
        "id": "openai/gpt-5.1-codex",
        "name": "GPT-5.1 Codex",
        "created": 1763500000,
        "pricing": {"prompt": "0.00000125", "completion": "0.00001"},
    },
    {
        "id": "google/gemini-2.5-pro",
        "name": "Gemini 2.5 Pro",
        "created": 1750000000,
        "pricing": {"prompt": "1e-6", "completion": "1e-5"},
    },
    {
        "id": "google/gemini-3-pro-preview",
        "name": "Gemini 3 Pro",
        "created": 1763400000,
        "pricing": {"prompt": "2e-6", "completion": "1.2e-5"},
    },
    {"id": "openrouter/auto", "name": "Auto Router", "pricing": {"prompt": "-1", "completion": "-1"}},
    {
        "id": "~anthropic/claude-sonnet-latest",
        "name": "Claude Sonnet (latest)",
        "pricing": {"prompt": "3e-6", "completion": "1.5e-5"},
        "alias_target": {"slug": "anthropic/claude-sonnet-4.5", "name": "Claude Sonnet 4.5"},
    },
    {
        "id": "anthropic/claude-sonnet-4.5",
        "name": "Claude Sonnet 4.5",
        "pricing": {"prompt": "3e-6", "completion": "1.5e-5"},
    },
    {"no": "id"},
]


@pytest.fixture
def upstream(settings, scripted_thread):
    return serve_from(settings, scripted_thread(SCRIPTS))


@pytest.fixture
def no_background(monkeypatch):
    """Record background refreshes instead of starting threads (they could not write inside a test's transaction)."""
    started: list[str] = []
    monkeypatch.setattr(
        model_catalogue, "_start_thread", lambda name: (started.append(name), model_catalogue._refreshing.discard(name))
    )
    return started


@pytest.fixture
def alice_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def chat_requests(up: ScriptedUpstream) -> list[str]:
    return [r["model"] for r in up.requests]


# --------------------------------------------------------------------------- the framework-free part


class TestParsing:
    def test_it_normalises_openrouter_rows(self):
        models = {m.id: m for m in parse_models(OPENROUTER_ROWS)}
        gpt4 = models["openai/gpt-4"]
        assert (gpt4.name, gpt4.context_length, gpt4.created) == ("GPT-4", 8192, 1692901234)
        assert gpt4.prompt_price == pytest.approx(0.00003) and gpt4.completion_price == pytest.approx(0.00006)
        assert gpt4.supports_tools and not models["openai/gpt-4o-mini"].supports_tools
        assert "tool_choice" in gpt4.supported_parameters

    def test_variable_prices_are_unknown_not_negative(self):
        auto = {m.id: m for m in parse_models(OPENROUTER_ROWS)}["openrouter/auto"]
        assert auto.prompt_price is None and auto.completion_price is None

    def test_rows_without_an_id_are_skipped_and_bare_ids_are_enough(self):
        models = parse_models([{"no": "id"}, {"id": "llama3.1:8b", "object": "model"}, "junk"])
        assert [(m.id, m.name, m.prompt_price) for m in models] == [("llama3.1:8b", "llama3.1:8b", None)]

    def test_it_round_trips_through_the_cache_format(self):
        for model in parse_models(OPENROUTER_ROWS):
            assert CatalogueModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


class TestAliases:
    models = parse_models(OPENROUTER_ROWS)

    def test_a_latest_alias_resolves_to_the_newest_model_of_its_family(self):
        assert resolve("~openai/gpt-latest", self.models).id == "openai/gpt-5.1"
        assert resolve("~google/gemini-pro-latest", self.models).id == "google/gemini-3-pro-preview"

    def test_a_listed_alias_follows_its_alias_target(self):
        assert resolve("~anthropic/claude-sonnet-latest", self.models).id == "anthropic/claude-sonnet-4.5"

    def test_without_dates_the_highest_version_wins(self):
        models = parse_models(
            [
                {"id": "anthropic/claude-opus-4.1"},
                {"id": "anthropic/claude-opus-4.5"},
                {"id": "anthropic/claude-3-opus"},
                {"id": "anthropic/claude-haiku-4.5"},
            ]
        )
        assert resolve("~anthropic/claude-opus-latest", models).id == "anthropic/claude-opus-4.5"

    def test_an_alias_of_a_family_nobody_lists_is_unknown(self):
        assert resolve("~mistral/mistral-large-latest", self.models) is None
        assert unknown_models([("~mistral/mistral-large-latest",) * 2], self.models, provider="OpenRouter") == [
            "Unknown model '~mistral/mistral-large-latest': OpenRouter lists no model of that family."
        ]

    def test_an_unknown_id_gets_a_suggestion(self):
        [message] = unknown_models([("openai/gpt-5.2",) * 2], self.models, provider="OpenRouter")
        assert message == "Unknown model 'openai/gpt-5.2': OpenRouter does not list it. Did you mean 'openai/gpt-5.1'?"


def default_provider(up) -> str:
    """How messages name the default provider when it is a local server, not OpenRouter's."""
    return f"the default provider ({urlsplit(up.base_url).netloc})"


# --------------------------------------------------------------------------- the cache


@pytest.mark.django_db
class TestCache:
    def test_a_refresh_stores_the_providers_models(self, upstream):
        assert model_catalogue.catalogue_refresh("openrouter")
        row = CatalogueCache.objects.get(provider="openrouter")
        ids = {m["id"] for m in row.models_json}
        assert {"sim/a", "anthropic/claude-opus-4.5"} <= ids and "*" not in ids
        assert row.fetched_at is not None and row.last_error == ""

    def test_a_refresh_loads_no_ca_bundle_of_its_own(self, upstream, monkeypatch):
        # Building a TLS context loads the CA bundle (~30 ms holding the GIL): a fetch on a
        # start's path uses the process's one context instead.
        import ssl

        from chat.fusion.transport import shared_ssl_context

        shared_ssl_context()
        loads: list[object] = []
        real = ssl.SSLContext.load_verify_locations

        def counting(ctx: ssl.SSLContext, *args: object, **kwargs: object) -> None:
            loads.append(args or kwargs)
            real(ctx, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
        assert model_catalogue.catalogue_refresh("openrouter")
        assert model_catalogue.catalogue_refresh("openrouter")
        assert loads == []

    def test_an_unreachable_provider_keeps_the_last_good_copy(self, upstream, no_background):
        assert model_catalogue.catalogue_refresh("openrouter")
        good = CatalogueCache.objects.get(provider="openrouter")
        upstream.stop()  # the provider goes down
        assert not model_catalogue.catalogue_refresh("openrouter")
        row = CatalogueCache.objects.get(provider="openrouter")
        assert row.models_json == good.models_json and row.fetched_at == good.fetched_at
        assert "Could not reach 'openrouter'" in row.last_error and row.last_attempt_at > good.fetched_at
        assert "sim/a" in {m["id"] for m in model_catalogue.catalogue_models()}
        assert model_catalogue.validate_models(["sim/a"]) == []
        assert model_catalogue.validate_models(["sim/zzz"]) == [
            f"Unknown model 'sim/zzz': {default_provider(upstream)} does not list it."
        ]

    def test_an_http_error_is_recorded_without_the_key(self, settings, no_background):
        settings.OPENROUTER_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        settings.OPENROUTER_API_KEY = "sk-or-never-in-errors-1234"
        assert not model_catalogue.catalogue_refresh("openrouter")
        row = CatalogueCache.objects.get(provider="openrouter")
        assert row.last_error and "sk-or-never" not in row.last_error and row.fetched_at is None

    def test_a_stale_copy_is_served_at_once_and_refreshed_in_the_background(self, upstream, no_background, settings):
        settings.FUSION_CATALOGUE_TTL_S = 60
        CatalogueCache.objects.create(
            provider="openrouter",
            base_url=settings.OPENROUTER_BASE_URL,
            models_json=[{"id": "sim/old"}],
            fetched_at=timezone.now() - timedelta(hours=2),
            last_attempt_at=timezone.now() - timedelta(hours=2),
        )
        assert [m["id"] for m in model_catalogue.catalogue_models()] == ["sim/old"]
        assert no_background == []  # inside a transaction (this test's): never a thread
        # Outside any transaction (a real request), the stale copy starts a refresh.
        from django.db import transaction

        conn = transaction.get_connection()
        conn.in_atomic_block, saved = False, conn.in_atomic_block
        try:
            model_catalogue.catalogue_models()
        finally:
            conn.in_atomic_block = saved
        assert no_background == ["openrouter"]

    def test_a_failed_provider_is_not_retried_on_every_read(self, settings):
        now = timezone.now()
        settings.FUSION_CATALOGUE_TTL_S = 3600
        row = CatalogueCache(
            provider="x", fetched_at=now - timedelta(hours=3), last_attempt_at=now - timedelta(seconds=5)
        )
        assert not model_catalogue._needs_refresh(row, now)
        row.last_attempt_at = now - timedelta(minutes=5)
        assert model_catalogue._needs_refresh(row, now)
        assert model_catalogue._needs_refresh(None, now)


@pytest.mark.django_db(transaction=True)
class TestBackgroundRefresh:
    def test_a_background_refresh_of_a_provider_that_is_down_keeps_the_copy_and_records_the_error(
        self, upstream, settings
    ):
        settings.FUSION_CATALOGUE_TTL_S = 60
        assert model_catalogue.catalogue_refresh("openrouter")
        CatalogueCache.objects.filter(provider="openrouter").update(
            fetched_at=timezone.now() - timedelta(hours=1), last_attempt_at=timezone.now() - timedelta(hours=1)
        )
        upstream.stop()
        t0 = time.monotonic()
        models = model_catalogue.catalogue_models()  # served from the cache, not waiting for the provider
        assert time.monotonic() - t0 < 1 and "sim/a" in {m["id"] for m in models}
        deadline = time.monotonic() + 10
        while (
            "openrouter" in model_catalogue._refreshing
            or not CatalogueCache.objects.get(provider="openrouter").last_error
        ):
            assert time.monotonic() < deadline, "the background refresh did not finish"
            time.sleep(0.05)
        row = CatalogueCache.objects.get(provider="openrouter")
        assert "Could not reach" in row.last_error and {m["id"] for m in row.models_json} >= {"sim/a"}


# --------------------------------------------------------------------------- validation


@pytest.mark.django_db
class TestValidation:
    def test_known_models_and_latest_aliases_pass(self, upstream):
        assert model_catalogue.validate_models(["sim/a", "~anthropic/claude-opus-latest"]) == []

    def test_each_unknown_model_gets_a_sentence(self, upstream):
        assert model_catalogue.validate_models(["sim/a", "sim/nope", "~openai/gpt-latest"]) == [
            f"Unknown model 'sim/nope': {default_provider(upstream)} does not list it.",
            f"Unknown model '~openai/gpt-latest': {default_provider(upstream)} lists no model of that family.",
        ]

    def test_a_message_names_openrouter_only_for_openrouters_own_server(self):
        local = Provider(name="openrouter", base_url="http://127.0.0.1:11434/v1", api_key="")
        real = Provider(name="openrouter", base_url="https://openrouter.ai/api/v1", api_key="")
        other = Provider(name="ollama", base_url="http://127.0.0.1:11434/v1", api_key="")
        assert model_catalogue.provider_title(real, "openrouter") == "OpenRouter"
        assert model_catalogue.provider_title(local, "openrouter") == "the default provider (127.0.0.1:11434)"
        assert model_catalogue.provider_title(other, "openrouter") == "provider 'ollama'"

    def test_provider_prefixed_ids_are_checked_against_that_providers_catalogue(self, upstream, settings):
        other = ScriptedUpstream({"llama3.1:8b": {}}).start_in_thread()
        try:
            settings.FUSION_PROVIDERS = {"ollama": {"base_url": other.base_url, "api_key": ""}}
            assert model_catalogue.validate_models(["ollama:llama3.1:8b", "sim/a"]) == []
            assert model_catalogue.validate_models(["ollama:llama3.1:70b"]) == [
                "Unknown model 'ollama:llama3.1:70b': provider 'ollama' does not list it. Did you mean 'ollama:llama3.1:8b'?"
            ]
        finally:
            other.stop()

    def test_a_provider_whose_catalogue_could_never_be_fetched_does_not_block(self, settings, caplog, no_background):
        settings.OPENROUTER_BASE_URL = "http://127.0.0.1:9/v1"
        with caplog.at_level("WARNING", logger="chat.model_catalogue"):
            assert model_catalogue.validate_models(["vendor/anything"]) == []
        assert "could never be fetched" in caplog.text and "vendor/anything" in caplog.text

    def test_an_unknown_model_is_refused_before_any_request_reaches_the_upstream(self, upstream, alice):
        conversation = Conversation.objects.create(user=alice)
        panel = {**PANEL, "members": [{"model": "sim/a"}, {"model": "sim/typo"}]}
        with pytest.raises(RunError) as exc:
            _start_sync(
                user=alice,
                conversation_id=conversation.pk,
                client_run_id=str(uuid.uuid4()),
                prompt="hi",
                panel_data=panel,
                follow_up_mode=None,
            )
        assert exc.value.code == "unknown_model" and "Unknown model 'sim/typo'" in exc.value.message
        assert chat_requests(upstream) == [] and not Run.objects.exists() and not conversation.turns.exists()

    def test_a_regenerate_with_an_unknown_writer_is_refused_too(self, upstream, alice):
        from chat.runs.reruns import _rerun_sync
        from chat.models import RunStatus, Turn

        conversation = Conversation.objects.create(user=alice)
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="hi")
        Run.objects.create(
            user=alice,
            conversation=conversation,
            turn=turn,
            client_run_id="old",
            config=PANEL,
            status=RunStatus.COMPLETE,
        ).members.create(slot=0, model="sim/a", status="complete", content="x")
        with pytest.raises(RunError) as exc:
            _rerun_sync(
                user=alice, conversation_id=conversation.pk, client_run_id="old", slot=None, writer="sim/nowriter"
            )
        assert exc.value.code == "unknown_model" and "sim/nowriter" in exc.value.message
        assert Run.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
class TestOverTheWebsocket:
    async def test_start_with_an_unknown_model_gets_an_error_frame_and_no_call(self, alice, settings):
        from chat.runs import manager
        from tests.test_consumers import collect_until, open_ws

        async with ScriptedUpstream(SCRIPTS, time_scale=0.01) as up:
            settings.OPENROUTER_BASE_URL = up.base_url
            settings.OPENROUTER_API_KEY = "server-key-for-tests"
            settings.FUSION_ALLOW_SERVER_KEY = True
            conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
            ws = await open_ws(alice, conversation.pk)
            panel = {**PANEL, "analyst": {"model": "sim/ghost-analyst"}}
            await ws.send_json_to({"type": "start", "run_id": str(uuid.uuid4()), "prompt": "hi", "panel": panel})
            [*_, error] = await collect_until(ws, {"error"})
            assert error["code"] == "unknown_model" and "sim/ghost-analyst" in error["message"]
            assert up.requests == []
            await ws.disconnect()
        await manager.shutdown()


# --------------------------------------------------------------------------- the fuse command


class TestFuseCommand:
    def test_it_refuses_an_unknown_model_before_any_call(self, upstream, capsys):
        with pytest.raises(CommandError, match="Unknown model 'sim/nope'"):
            call_command(
                "fuse", "hi", "--panel", "sim/a,sim/nope", "--analyst", "sim/analyst", "--writer", "sim/writer"
            )
        assert chat_requests(upstream) == []

    def test_it_warns_and_goes_on_when_the_model_list_cannot_be_fetched(self, settings, capsys):
        up = ScriptedUpstream(SCRIPTS, time_scale=0.01).start_in_thread()
        settings.OPENROUTER_BASE_URL = up.base_url
        try:
            with pytest.MonkeyPatch.context() as mp:
                from chat.management.commands import fuse

                def down(provider, **kw):
                    raise fuse.CatalogueError("GET /models answered HTTP 404.")

                mp.setattr(fuse, "fetch_models", down)
                call_command("fuse", "hi", "--panel", "sim/a", "--analyst", "sim/analyst", "--writer", "sim/writer")
            err = capsys.readouterr().err
            assert "could not be fetched" in err and "not checking sim/a" in err
            assert "sim/a" in chat_requests(up)
        finally:
            up.stop()


# --------------------------------------------------------------------------- estimates


@pytest.mark.django_db
class TestEstimate:
    def test_members_analyst_and_writer_are_priced_with_the_answers_in_later_prompts(self, upstream, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        low, high = model_catalogue.estimate_panel_cost(PANEL, prompt_tokens=100, completion_tokens=1000)
        overhead = model_catalogue.PROMPT_OVERHEAD_TOKENS

        def calls(answer: int, analysis: int) -> float:
            members = 2 * (100 * P_IN + answer * P_OUT)
            analyst = (100 + 2 * answer + overhead) * P_IN + analysis * P_OUT
            writer = (100 + 2 * answer + analysis + overhead) * P_IN + answer * P_OUT
            return members + analyst + writer

        assert high == pytest.approx(calls(1000, model_catalogue.ANALYSIS_TOKENS[1]), rel=1e-6)
        assert low == pytest.approx(calls(250, model_catalogue.ANALYSIS_TOKENS[0]), rel=1e-6)

    def test_max_tokens_bounds_the_high_end(self, upstream, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        capped = {**PANEL, "members": [{"model": "sim/a", "max_tokens": 10}, {"model": "sim/b", "max_tokens": 10}]}
        assert (
            model_catalogue.estimate_panel_cost(capped, prompt_tokens=100)[1]
            < model_catalogue.estimate_panel_cost(PANEL, prompt_tokens=100)[1]
        )

    def test_an_alias_is_priced_as_the_newest_model_of_its_family(self, upstream, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        alias = {
            "members": [{"model": "~anthropic/claude-opus-latest"}],
            "analyst": {"model": "sim/free"},
            "writer": {"model": "sim/free"},
        }
        concrete = {**alias, "members": [{"model": "anthropic/claude-opus-4.5"}]}
        assert model_catalogue.estimate_panel_cost(alias, prompt_tokens=10) == model_catalogue.estimate_panel_cost(
            concrete, prompt_tokens=10
        )

    def test_reused_answers_cost_nothing_but_still_fill_the_writers_prompt(self, upstream, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        full = model_catalogue.estimate_panel_cost(PANEL, prompt_tokens=100)
        writer_only = model_catalogue.estimate_panel_cost(
            PANEL, prompt_tokens=100, reused_slots={0, 1}, reuse_analysis=True
        )
        assert 0 < writer_only[1] < full[1]

    def test_unknown_prices_count_as_free_and_are_named(self, upstream, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        panel = {**PANEL, "members": [{"model": "sim/free"}, {"model": "not/listed"}]}
        assert model_catalogue.unpriced_models(panel) == ["not/listed"]


# --------------------------------------------------------------------------- JSON endpoints


@pytest.mark.django_db
class TestModelsJson:
    def test_it_needs_a_signed_in_user(self, client):
        assert client.get(reverse("models_json")).status_code == 302

    def test_it_finds_models_by_words_with_prices_per_million_and_context(self, upstream, alice_client, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        models = alice_client.get(reverse("models_json"), {"q": "opus 4.5"}).json()["models"]
        assert [m["id"] for m in models] == ["anthropic/claude-opus-4.5"]
        [sim_a] = alice_client.get(reverse("models_json"), {"q": "sim/a"}).json()["models"][:1]
        assert sim_a == {
            "id": "sim/a",
            "name": "Sim A",
            "provider": "openrouter",
            "prompt_per_m": 2.0,
            "completion_per_m": 8.0,
            "context_length": 32000,
            "tools": False,
        }

    def test_other_providers_models_are_written_with_their_prefix(
        self, upstream, alice_client, settings, no_background
    ):
        settings.FUSION_PROVIDERS = {"local": {"base_url": upstream.base_url, "api_key": ""}}
        model_catalogue.catalogue_refresh("local")
        ids = [m["id"] for m in alice_client.get(reverse("models_json"), {"q": "sim/b"}).json()["models"]]
        assert "local:sim/b" in ids

    def test_without_a_cached_catalogue_it_answers_at_once_with_nothing(self, alice_client, settings, no_background):
        settings.OPENROUTER_BASE_URL = "http://127.0.0.1:9/v1"
        assert alice_client.get(reverse("models_json"), {"q": "x"}).json() == {"models": []}


@pytest.mark.django_db
class TestEstimateJson:
    def panel_params(self, **extra: Any) -> dict[str, Any]:
        return {"members": "sim/a\nsim/b 0.7", "analyst": "sim/analyst", "writer": "sim/writer", **extra}

    def test_it_estimates_the_composers_panel_for_the_prompt_length(self, upstream, alice_client, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        short = alice_client.get(reverse("estimate"), self.panel_params(chars=10)).json()
        long = alice_client.get(reverse("estimate"), self.panel_params(chars=8000)).json()
        assert short["ok"] and short["low"] < short["high"] < long["high"]
        assert short["text"].startswith("$") and "–" in short["text"] and short["calls"] == 4
        assert short["unknown"] == [] and short["unpriced"] == []

    def test_unknown_models_are_reported_before_sending(self, upstream, alice_client, no_background):
        model_catalogue.catalogue_refresh("openrouter")
        data = alice_client.get(reverse("estimate"), self.panel_params(writer="sim/wrtier")).json()
        assert data["unknown"] == [
            f"Unknown model 'sim/wrtier': {default_provider(upstream)} does not list it. Did you mean 'sim/writer'?"
        ]

    def test_a_bad_panel_says_what_is_wrong(self, alice_client, no_background):
        response = alice_client.get(reverse("estimate"), self.panel_params(members=""))
        assert response.status_code == 400 and response.json()["ok"] is False

    def test_a_conversation_counts_its_history_and_belongs_to_its_owner(self, upstream, alice, bob, no_background):
        from chat.models import RunStatus, Turn

        model_catalogue.catalogue_refresh("openrouter")
        conversation = Conversation.objects.create(user=alice, panel=PANEL)
        client = Client()
        client.force_login(alice)
        before = client.get(reverse("conversation_estimate", args=[conversation.pk]), {"chars": 10}).json()
        turn = Turn.objects.create(conversation=conversation, index=0, prompt="p" * 4000)
        Run.objects.create(
            user=alice,
            conversation=conversation,
            turn=turn,
            client_run_id="r",
            config=PANEL,
            status=RunStatus.COMPLETE,
            answer="a" * 4000,
        )
        after = client.get(reverse("conversation_estimate", args=[conversation.pk]), {"chars": 10}).json()
        assert after["high"] > before["high"]
        client.force_login(bob)
        assert client.get(reverse("conversation_estimate", args=[conversation.pk]), {"chars": 10}).status_code == 404
        assert client.get(reverse("conversation_estimate", args=[999999]), {"chars": 10}).status_code == 404


class TestSyncFetchRace:
    def test_two_threads_never_refresh_one_provider_at_once(self, monkeypatch):
        calls: list[str] = []
        gate = threading.Event()

        def slow_refresh(name: str) -> bool:
            calls.append(name)
            gate.wait(2)
            return True

        monkeypatch.setattr(model_catalogue, "catalogue_refresh", slow_refresh)
        monkeypatch.setattr(model_catalogue.connections, "close_all", lambda: None)
        model_catalogue.catalogue_refresh_in_background(["p"])
        model_catalogue.catalogue_refresh_in_background(["p"])
        gate.set()
        deadline = time.monotonic() + 5
        while "p" in model_catalogue._refreshing and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == ["p"]


@pytest.mark.django_db
class TestBaseUrlChange:
    def test_a_copy_from_another_base_url_is_not_used(self, upstream, settings):
        CatalogueCache.objects.create(
            provider="openrouter",
            base_url="http://127.0.0.1:9/v1",
            models_json=[{"id": "sim/elsewhere"}],
            fetched_at=timezone.now(),
            last_attempt_at=timezone.now(),
        )
        errors = model_catalogue.validate_models(["sim/elsewhere"])
        assert errors and "sim/elsewhere" in errors[0]
        assert CatalogueCache.objects.get(provider="openrouter").base_url == settings.OPENROUTER_BASE_URL
