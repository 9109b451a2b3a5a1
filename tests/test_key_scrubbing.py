"""Provider error text never shows a key the process knows, however the provider spelled it."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from chat.fusion.client import ChatClient
from chat.fusion.providers import ProviderRegistry
from chat.fusion.types import Message, ModelSpec, Provider, StreamError
from chat.testing.scripted import ScriptedUpstream

SERVER_KEY = "SERVER-secret-key-123"
OWN_KEY = "sk-or-alice-own-key-ABCD9876"


def spellings(key: str) -> list[str]:
    return [
        key,
        key.upper(),
        key.lower(),
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote_plus(key),
        base64.b64encode(key.encode()).decode(),
        base64.b64encode(f":{key}".encode()).decode(),
        base64.b64encode(f"{key}:".encode()).decode().rstrip("="),
    ]


@pytest.mark.asyncio
class TestEncodedKeysAreScrubbed:
    @pytest.mark.parametrize("shown", spellings(SERVER_KEY) + spellings(OWN_KEY))
    async def test_a_key_echoed_in_any_spelling_is_redacted(self, shown):
        message = f"Invalid credentials: {shown} (request 42)"
        scripts = {"sim/a": {"faults": [{"type": "http", "status": 401, "message": message, "times": -1}]}}
        async with ScriptedUpstream(scripts, time_scale=0.01) as up:
            registry = ProviderRegistry(
                {"openrouter": Provider(name="openrouter", base_url=up.base_url, api_key=OWN_KEY)}, default="openrouter"
            )
            async with ChatClient(registry, extra_secrets=[SERVER_KEY]) as client:
                messages: list[Message] = [{"role": "user", "content": "hi"}]
                events = [e async for e in client.stream(ModelSpec(model="sim/a"), messages)]
        error = next(e for e in events if isinstance(e, StreamError)).error
        assert shown not in error.message
        assert "[redacted]" in error.message
        assert "request 42" in error.message  # the rest of the provider's text is kept
