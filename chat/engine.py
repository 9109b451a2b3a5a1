"""The bridge from Django settings to the framework-free engine in chat/fusion/."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat import keys
from chat.fusion.providers import ProviderRegistry
from chat.fusion.types import Limits, Provider, ResearchSettings

log = logging.getLogger(__name__)


def build_registry(*, user: User | None = None) -> ProviderRegistry:
    """The providers with the server's keys, or, for *user*, the keys a run of theirs may use.

    For a user: their own key for each provider where they stored one; otherwise the server's
    key only if they are allowed it (chat.keys.server_key_allowed), else no key — runs that
    need such a provider are refused up front by chat.keys.key_problems.
    """
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
    if user is not None:
        own = keys.user_keys_decrypted(user=user)
        allowed = keys.server_key_allowed(user=user)
        for name, provider in providers.items():
            mine = own.get(name)
            api_key = mine if isinstance(mine, str) else (provider.api_key if allowed else "")
            providers[name] = replace(provider, api_key=api_key)
    return ProviderRegistry(providers, default="openrouter")


def build_limits() -> Limits:
    return Limits(
        connect=settings.FUSION_CONNECT_TIMEOUT,
        first_token=settings.FUSION_FIRST_TOKEN_TIMEOUT,
        idle=settings.FUSION_IDLE_TIMEOUT,
        total=settings.FUSION_TOTAL_TIMEOUT,
        max_output_chars=settings.FUSION_MAX_OUTPUT_CHARS,
    )


def known_secrets() -> list[str]:
    """Every key this process holds in its settings: the OpenRouter key, each FUSION_PROVIDERS
    key and the search API key. Give them to ``ChatClient(extra_secrets=...)``: provider error
    text is scrubbed of these as well as of the keys of the run's own registry."""
    secrets = [settings.OPENROUTER_API_KEY, settings.FUSION_SEARCH_API_KEY]
    secrets += [str(conf.get("api_key") or "") for conf in settings.FUSION_PROVIDERS.values()]
    return [s for s in secrets if s]


# --------------------------------------------------------------------------- web research tools


def research_settings(research: dict[str, Any] | None) -> ResearchSettings | None:
    """A panel's ``research`` dict (chat.panels.parse_research) as the engine's settings."""
    if not research or not research.get("web_tools"):
        return None
    return ResearchSettings(
        web_tools=True,
        max_tool_calls=int(research.get("max_tool_calls") or 4),
        server_tools=bool(research.get("server_tools")),
        excluded_domains=tuple(research.get("excluded_domains") or ()),
        blocked_domains=tuple(research.get("blocked_domains") or ()),
        allowed_domains=tuple(research.get("allowed_domains") or ()),
        analyst_tools=bool(research.get("analyst_tools")),
    )


def _search_backend() -> tuple[Any, str | None]:
    """(backend or None, why there is none)."""
    from chat.fusion.tools import make_search_backend

    if not settings.FUSION_SEARCH_BACKEND:
        return (
            None,
            "No search backend is configured on this server (FUSION_SEARCH_BACKEND), so only web_fetch is offered.",
        )
    try:
        backend = make_search_backend(
            {
                "backend": settings.FUSION_SEARCH_BACKEND,
                "url": settings.FUSION_SEARCH_URL,
                "api_key": settings.FUSION_SEARCH_API_KEY,
            }
        )
    except ValueError as exc:
        log.error("web search is off: %s", exc)
        return None, f"The search backend is misconfigured ({exc}), so only web_fetch is offered."
    return backend, None


def search_unavailable_reason() -> str | None:
    """Why web_search is not offered (a sentence for the UI), or None when it is."""
    return _search_backend()[1]


def _fetch_policy() -> Any:
    from chat.fusion.tools import FetchPolicy

    # "host" trusts that host on ports 80/443; "host:port" trusts that one port of that host only.
    hosts: set[str] = set()
    endpoints: set[tuple[str, int]] = set()
    for entry in settings.FUSION_FETCH_TRUSTED_HOSTS:
        host, port = entry, None
        if entry.startswith("["):  # [::1]:8080
            host, _, rest = entry[1:].partition("]")
            port = rest.lstrip(":") or None
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        if port:
            endpoints.add((host, int(port)))
        else:
            hosts.add(host)
    return FetchPolicy(
        trusted_hosts=frozenset(hosts),
        trusted_endpoints=frozenset(endpoints),
        max_bytes=settings.FUSION_FETCH_MAX_BYTES,
        max_chars=settings.FUSION_FETCH_MAX_CHARS,
        timeout=settings.FUSION_FETCH_TIMEOUT_S,
    )


def build_web_tools(research: dict[str, Any] | ResearchSettings | None) -> Any:
    """The run's ``WebTools`` when its research settings ask for web tools, else None.

    Without a search backend the tools offer web_fetch only; ``search_unavailable_reason()``
    says why. The domain lists of the settings are fixed into the tools here.
    """
    from chat.fusion.tools import WebTools

    if isinstance(research, dict) or research is None:
        research = research_settings(research)
    if research is None or not research.web_tools:
        return None
    backend, _ = _search_backend()
    return WebTools(
        search=backend,
        fetch_policy=_fetch_policy(),
        allowed_domains=research.allowed_domains,
        excluded_domains=research.excluded_domains,
        blocked_domains=research.blocked_domains,
    )
