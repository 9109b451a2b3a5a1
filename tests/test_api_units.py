"""The API's parts without a server: choosing the panel, the per-token rate limit, message splitting."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from chat import ratelimit
from chat.api.auth import api_authenticate
from chat.api.choose import choose
from chat.api.errors import ApiError
from chat.api.runs import split_messages
from chat.api.tokens import api_token_create
from chat.presets import preset_create, preset_set_default

SIM = {"members": [{"model": "sim/a"}], "analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}


@pytest.fixture
def builtins(settings):
    settings.FUSION_BUILTIN_PRESETS = {
        "quality": {
            "name": "Quality",
            "members": [{"model": "sim/a"}, {"model": "sim/b"}],
            **{k: SIM[k] for k in ("analyst", "writer")},
        },
        "fast": {"name": "Fast", "members": [{"model": "sim/a"}], **{k: SIM[k] for k in ("analyst", "writer")}},
    }


@pytest.mark.django_db
class TestChoosingThePanel:
    def test_fusion_is_the_users_default_preset(self, alice, builtins):
        preset = preset_create(user=alice, name="Mine", config={**SIM, "members": [{"model": "sim/z"}]})
        preset_set_default(user=alice, preset=preset)
        chosen = choose(user=alice, model="fusion")
        assert [m["model"] for m in chosen.config["members"]] == ["sim/z"] and chosen.preset == preset

    def test_flash_is_the_fast_builtin_and_a_slug_names_a_preset(self, alice, builtins):
        assert choose(user=alice, model="openrouter/fusion-flash").builtin_key == "fast"
        preset_create(user=alice, name="Deep dive!", config=SIM)
        assert choose(user=alice, model="fusion/deep-dive").preset is not None

    def test_a_users_preset_named_like_a_builtin_gets_another_slug(self, alice, builtins):
        assert preset_create(user=alice, name="Quality", config=SIM).slug == "quality-2"

    def test_another_users_slug_is_not_found(self, alice, bob, builtins):
        preset_create(user=alice, name="Private", config=SIM)
        with pytest.raises(ApiError) as exc:
            choose(user=bob, model="fusion/private")
        assert exc.value.status == 404

    def test_plugin_fields_override_the_preset_and_forwarded_parameters_reach_members_and_writer(self, alice, builtins):
        chosen = choose(
            user=alice,
            model="fusion/quality",
            plugins=[{"id": "fusion", "analysis_models": ["sim/c"], "max_tool_calls": 7}],
            temperature=0.2,
            max_tokens=300,
            reasoning_effort="high",
        )
        config = chosen.config
        assert [m["model"] for m in config["members"]] == ["sim/c"]
        assert config["research"]["max_tool_calls"] == 7
        assert config["members"][0]["temperature"] == 0.2 and config["writer"]["temperature"] == 0.2
        assert config["writer"]["max_tokens"] == 300 and "max_tokens" not in config["members"][0]
        assert "temperature" not in config["analyst"]  # the analyst keeps temperature 0
        assert config["members"][0]["reasoning_effort"] == "high"

    def test_a_plain_model_is_404_and_other_plugins_are_400(self, alice, builtins):
        with pytest.raises(ApiError) as exc:
            choose(user=alice, model="openai/gpt-5")
        assert exc.value.status == 404
        with pytest.raises(ApiError) as exc:
            choose(user=alice, model="fusion", plugins=[{"id": "web"}])
        assert exc.value.status == 400 and exc.value.metadata["field"] == "plugins.0.id"


class TestMessages:
    def test_the_last_user_message_is_the_prompt_and_the_rest_its_context(self):
        context, prompt = split_messages(
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
            ]
        )
        assert prompt == "q2" and [m["role"] for m in context] == ["system", "user", "assistant"]

    def test_an_outer_model_may_have_tool_round_trips_after_the_prompt(self):
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "r"},
        ]
        with pytest.raises(ApiError):
            split_messages(messages)
        assert split_messages(messages, outer=True) == ([], "q")


@pytest.mark.django_db(transaction=True)
class TestRateLimit:
    async def test_each_token_has_its_own_bucket(self, settings, alice, bob):
        from asgiref.sync import sync_to_async

        settings.FUSION_API_RATE_PER_MIN = 0.001
        settings.FUSION_API_BURST = 2
        settings.REDIS_URL = ""
        ratelimit.reset_local()
        mine = await sync_to_async(api_token_create)(user=alice, name="a")
        theirs = await sync_to_async(api_token_create)(user=bob, name="b")
        factory = RequestFactory()

        def request(secret: str):
            return factory.post("/api/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {secret}")

        for _ in range(2):
            await api_authenticate(request(mine.secret))
        with pytest.raises(ApiError) as exc:
            await api_authenticate(request(mine.secret))
        assert exc.value.status == 429 and int(exc.value.headers()["Retry-After"]) >= 1
        assert (await api_authenticate(request(theirs.secret))).user_id == bob.pk
