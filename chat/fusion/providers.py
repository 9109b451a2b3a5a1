"""Which OpenAI-compatible endpoint serves a model id.

``"ollama:llama3.1:8b"`` goes to the provider named ``ollama`` as ``llama3.1:8b`` when such a
provider is configured; every other id (``"openai/gpt-4o:free"``) goes, whole, to the default
provider, normally OpenRouter.

Owns resolving a model id to its provider. Imports the engine's types only: no Django, no httpx.
"""

from __future__ import annotations

from chat.fusion.types import Provider


class UnknownProvider(ValueError):
    """No configured provider can serve this model id."""


class ProviderRegistry:
    def __init__(self, providers: dict[str, Provider], default: str = "openrouter") -> None:
        for name in providers:
            if "/" in name or ":" in name or not name:
                # "/" and ":" would make resolve() ambiguous against model ids.
                raise ValueError(f"Invalid provider name {name!r}: it must not contain '/' or ':'.")
        self._providers = dict(providers)
        self.default = default

    def __repr__(self) -> str:
        return f"ProviderRegistry(providers={sorted(self._providers)}, default={self.default!r})"

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(f"No provider named {name!r} is configured.") from None

    def resolve(self, model: str) -> tuple[Provider, str]:
        """``(provider, model id to send)`` for a ``provider:model`` or plain id."""
        prefix, colon, rest = model.partition(":")
        if colon and "/" not in prefix and prefix in self._providers:
            if not rest.strip():
                raise UnknownProvider(f"Model id {model!r} names provider {prefix!r} but no model.")
            return self._providers[prefix], rest
        if not model.strip():
            raise UnknownProvider("The model id is empty.")
        if self.default not in self._providers:
            raise UnknownProvider(
                f"No provider is configured for {model!r}: the default provider {self.default!r} is not set up."
            )
        return self._providers[self.default], model

    def secrets(self) -> list[str]:
        """Every configured API key, for scrubbing them out of error text."""
        return [p.api_key for p in self._providers.values() if p.api_key]
