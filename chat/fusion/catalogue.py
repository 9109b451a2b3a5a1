"""A provider's model catalogue: fetch and parse ``GET {base_url}/models``, resolve model ids.

Framework-free (no Django): the web app caches what ``fetch_models`` returns (chat/model_catalogue.py),
and ``manage.py fuse`` uses it live. OpenRouter's rows carry names, context length, prices per
token (as strings) and the supported parameters; other OpenAI-compatible servers (Ollama, vLLM,
OpenAI) list bare ids, so every field but ``id`` is optional here.

OpenRouter's ``~vendor/family-latest`` ids are aliases for the newest model of a family.
``resolve`` maps one onto a concrete row: the alias's own ``alias_target`` when the catalogue
lists the alias, else the newest row of that vendor whose name has the family's words in order.

Imports httpx and the engine's types only: no Django (the cached, database-backed
catalogue is ``chat.model_catalogue``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from chat.fusion.transport import shared_ssl_context
from chat.fusion.types import Provider

MAX_PAGES = 20  # OpenRouter returns the whole list without paging; this only bounds a loop


class CatalogueError(Exception):
    """The catalogue could not be fetched or read; the message is safe to show and log."""


@dataclass(frozen=True)
class CatalogueModel:
    id: str
    name: str = ""
    context_length: int | None = None
    prompt_price: float | None = None  # USD per prompt token; None when unknown
    completion_price: float | None = None  # USD per completion token
    supported_parameters: tuple[str, ...] = field(default_factory=tuple)
    created: int | None = None  # Unix time, for "newest of a family"
    alias_target: str | None = None  # the concrete id a ``~…-latest`` alias row points to

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.supported_parameters

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["supported_parameters"] = list(self.supported_parameters)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogueModel:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or data["id"]),
            context_length=data.get("context_length"),
            prompt_price=data.get("prompt_price"),
            completion_price=data.get("completion_price"),
            supported_parameters=tuple(data.get("supported_parameters") or ()),
            created=data.get("created"),
            alias_target=data.get("alias_target"),
        )


# --------------------------------------------------------------------------- fetching


def fetch_models(
    provider: Provider, *, timeout: float = 15.0, transport: httpx.BaseTransport | None = None
) -> list[CatalogueModel]:
    """``GET {base_url}/models`` with the provider's key; raise CatalogueError on any trouble.

    The key goes only to the provider's own base URL, and never into the error text.
    """
    headers = {"Accept": "application/json", **provider.extra_headers}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    url: str | None = provider.base_url.rstrip("/") + "/models"
    rows: list[Any] = []
    try:
        # The process's one TLS context: building one loads the CA bundle (~30 ms holding the
        # GIL, so every live stream waits), and a catalogue is fetched on a start's path.
        verify = shared_ssl_context()
        with httpx.Client(timeout=timeout, transport=transport, verify=verify, follow_redirects=False) as http:
            for _ in range(MAX_PAGES):
                response = http.get(url, headers=headers)  # type: ignore[arg-type]
                if response.status_code != 200:
                    raise CatalogueError(f"GET /models answered HTTP {response.status_code}.")
                try:
                    payload = response.json()
                except ValueError:
                    raise CatalogueError("GET /models did not return JSON.") from None
                if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
                    raise CatalogueError('GET /models did not return a {"data": [...]} object.')
                rows.extend(payload["data"])
                url = _next_page(provider.base_url, payload)
                if url is None:
                    break
    except httpx.HTTPError as exc:
        raise CatalogueError(f"Could not reach {provider.name!r}: {type(exc).__name__}.") from None
    return parse_models(rows)


def _next_page(base_url: str, payload: dict[str, Any]) -> str | None:
    """OpenRouter's ``links.next`` (``/api/v1/models?offset=…``), made absolute on the same host."""
    links = payload.get("links")
    nxt = links.get("next") if isinstance(links, dict) else None
    if not isinstance(nxt, str) or not nxt:
        return None
    base = httpx.URL(base_url)
    target = base.join(nxt)
    # A next link to another host would carry the key there: never follow one.
    return str(target) if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port) else None


# --------------------------------------------------------------------------- parsing


def parse_models(rows: list[Any]) -> list[CatalogueModel]:
    """Normalise rows of a ``/models`` response; rows without an id are skipped."""
    models: dict[str, CatalogueModel] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not row["id"].strip():
            continue
        raw_pricing = row.get("pricing")
        pricing: dict[str, Any] = raw_pricing if isinstance(raw_pricing, dict) else {}
        params = row.get("supported_parameters")
        alias = row.get("alias_target")
        model = CatalogueModel(
            id=row["id"].strip(),
            name=str(row.get("name") or row["id"]).strip(),
            context_length=_positive_int(row.get("context_length")),
            prompt_price=_price(pricing.get("prompt")),
            completion_price=_price(pricing.get("completion")),
            supported_parameters=tuple(str(p) for p in params) if isinstance(params, list) else (),
            created=_positive_int(row.get("created")),
            alias_target=str(alias["slug"]) if isinstance(alias, dict) and alias.get("slug") else None,
        )
        models[model.id] = model
    return sorted(models.values(), key=lambda m: m.id)


def _price(value: Any) -> float | None:
    """A price per token from OpenRouter's decimal string; "-1" (variable, e.g. auto routers) is unknown."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if price >= 0 else None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


# --------------------------------------------------------------------------- resolving

_ALIAS = re.compile(r"^~(?P<vendor>[^/~]+)/(?P<family>.+)-latest$")
_VERSIONISH = re.compile(r"^(\d[\w.]*|v\d[\w.]*|preview|exp|latest)$")


def is_alias(model_id: str) -> bool:
    return bool(_ALIAS.match(model_id))


_indexes: dict[int, tuple[list[CatalogueModel], dict[str, CatalogueModel]]] = {}


def _index(models: list[CatalogueModel]) -> dict[str, CatalogueModel]:
    """Models by id, built once per catalogue list (a process keeps a few: one per provider copy)."""
    cached = _indexes.get(id(models))
    if cached is not None and cached[0] is models:
        return cached[1]
    if len(_indexes) >= 16:
        _indexes.clear()
    index = {m.id: m for m in models}
    if len(models) >= 32:  # small lists (a test's) are cheaper to index than to remember
        _indexes[id(models)] = (models, index)
    return index


def resolve(model_id: str, models: list[CatalogueModel]) -> CatalogueModel | None:
    """The catalogue row of *model_id*; a ``~vendor/family-latest`` alias gives the newest match."""
    by_id = _index(models)
    found = by_id.get(model_id)
    if found is not None and found.alias_target and found.alias_target in by_id:
        return by_id[found.alias_target]
    alias = _ALIAS.match(model_id)
    if alias is None:
        return found
    family = _words(alias["family"])
    candidates = [
        m for m in models if m.id.startswith(alias["vendor"] + "/") and ":" not in m.id and not m.id.startswith("~")
    ]
    # Strict: the family's words, in order, plus only version-like words ("claude-opus-4.5",
    # "gemini-3-pro-preview"), so "~openai/gpt-latest" does not pick "gpt-4o-mini".
    strict = [m for m in candidates if _family_match(_words(m.id.split("/", 1)[1]), family, strict=True)]
    loose = strict or [m for m in candidates if _family_match(_words(m.id.split("/", 1)[1]), family, strict=False)]
    if not loose:
        return found
    return max(loose, key=lambda m: (m.created or 0, _version(m.id), m.id))


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[-_\s]+", text.lower()) if w]


def _family_match(words: list[str], family: list[str], *, strict: bool) -> bool:
    """Whether *family* is a subsequence of *words* (strict: the other words look like versions)."""
    i = 0
    for word in words:
        if i < len(family) and word == family[i]:
            i += 1
        elif strict and not _VERSIONISH.match(word):
            return False
    return i == len(family)


def _version(model_id: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", model_id))


def unknown_models(requested: list[tuple[str, str]], models: list[CatalogueModel], *, provider: str) -> list[str]:
    """A message per requested id the catalogue does not have.

    ``requested`` holds ``(id as the user wrote it, id sent to the provider)`` pairs.
    """
    ids = [m.id for m in models]
    errors = []
    for written, sent in requested:
        if resolve(sent, models) is not None:
            continue
        message = f"Unknown model {written!r}: {provider} does not list it."
        if is_alias(sent):
            message = f"Unknown model {written!r}: {provider} lists no model of that family."
        close = difflib.get_close_matches(sent, ids, n=1, cutoff=0.75)
        if close:
            prefix = written[: len(written) - len(sent)]  # keep "ollama:" on a provider-prefixed id
            message += f" Did you mean {prefix + close[0]!r}?"
        errors.append(message)
    return errors
