"""The bridge from Django settings to the framework-free engine in chat/fusion/."""
from __future__ import annotations

from django.conf import settings

from chat.fusion.providers import ProviderRegistry
from chat.fusion.types import Limits, Provider


def build_registry() -> ProviderRegistry:
    providers = {
        "openrouter": Provider(
            name="openrouter",
            base_url=settings.OPENROUTER_BASE_URL,
            api_key=settings.OPENROUTER_API_KEY,
            extra_headers={"X-Title": "Fusion chatroom"},
        )
    }
    for name, conf in settings.FUSION_PROVIDERS.items():
        providers[name] = Provider(
            name=name,
            base_url=conf["base_url"],
            api_key=conf.get("api_key", ""),
            supports_response_format=bool(conf.get("supports_response_format", True)),
        )
    return ProviderRegistry(providers, default="openrouter")


def build_limits() -> Limits:
    return Limits(
        connect=settings.FUSION_CONNECT_TIMEOUT,
        first_token=settings.FUSION_FIRST_TOKEN_TIMEOUT,
        idle=settings.FUSION_IDLE_TIMEOUT,
        total=settings.FUSION_TOTAL_TIMEOUT,
    )
