"""The model catalogue, Django side: cached per provider, refreshed in the background.

Each configured provider's ``GET /models`` (chat/fusion/catalogue.py) is kept in a
``CatalogueCache`` row. A read never waits for the network: a copy older than
FUSION_CATALOGUE_TTL_S is served as it is while a daemon thread fetches a new one. An
unreachable provider changes nothing but ``last_error``: the last good copy stays.

The one exception is a provider that was never fetched at all: ``validate_models`` (called
before any paid call) fetches it once, synchronously, so the first run of a new install is
checked too. If that fails, models of that provider are accepted unchecked, with a warning in
the log — a provider without a ``/models`` endpoint must not become unusable.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from chat.engine import build_registry, research_settings
from chat.fusion.catalogue import CatalogueError, CatalogueModel, fetch_models, resolve, unknown_models
from chat.fusion.providers import UnknownProvider
from chat.fusion.types import Provider
from chat.memo import memo_get, memo_update
from chat.models import CatalogueCache

log = logging.getLogger(__name__)

# A provider that failed is retried at most this often (or every TTL, if that is shorter).
RETRY_AFTER_FAILURE = timedelta(seconds=60)
SYNC_FETCH_TIMEOUT_S = 8.0

_refreshing: set[str] = set()
_refreshing_lock = threading.Lock()
# Parsed rows per provider, keyed by the cached copy's fetched_at: parsing ~400 rows per
# keystroke of the model picker would be wasted work.
_parsed: dict[str, tuple[datetime | None, list[CatalogueModel]]] = {}


# --------------------------------------------------------------------------- refreshing


def catalogue_refresh(provider: str) -> bool:
    """Fetch *provider*'s catalogue now; keep the last good copy if that fails. True on success."""
    now = timezone.now()
    try:
        endpoint = build_registry().get(provider)
        models = fetch_models(endpoint, timeout=SYNC_FETCH_TIMEOUT_S)
    except (CatalogueError, UnknownProvider) as exc:
        CatalogueCache.objects.update_or_create(
            provider=provider, defaults={"last_attempt_at": now, "last_error": str(exc)}
        )
        log.warning("model catalogue of %s not refreshed: %s", provider, exc)
        return False
    CatalogueCache.objects.update_or_create(
        provider=provider,
        defaults={
            "models_json": [m.to_dict() for m in models],
            "fetched_at": now,
            "last_attempt_at": now,
            "last_error": "",
            "base_url": endpoint.base_url,
        },
    )
    log.info("model catalogue of %s refreshed: %d models", provider, len(models))
    return True


def catalogue_refresh_in_background(providers: Iterable[str]) -> None:
    """Start a daemon thread per provider that is not already being refreshed."""
    for name in providers:
        with _refreshing_lock:
            if name in _refreshing:
                continue
            _refreshing.add(name)
        _start_thread(name)


def _start_thread(provider: str) -> None:
    threading.Thread(target=_refresh_thread, args=(provider,), name=f"catalogue-{provider}", daemon=True).start()


def _refresh_thread(provider: str) -> None:
    try:
        catalogue_refresh(provider)
    except Exception:  # a bug, or the database went away: log it, the next read tries again
        log.exception("refreshing the model catalogue of %s failed", provider)
    finally:
        with _refreshing_lock:
            _refreshing.discard(provider)
        connections.close_all()  # this thread's connections only


def _needs_refresh(row: CatalogueCache | None, now: datetime) -> bool:
    if row is None:
        return True
    ttl = timedelta(seconds=settings.FUSION_CATALOGUE_TTL_S)
    if row.last_attempt_at and now - row.last_attempt_at < min(ttl, RETRY_AFTER_FAILURE):
        return False
    return row.fetched_at is None or now - row.fetched_at >= ttl


# --------------------------------------------------------------------------- reading


def _load(providers: Iterable[str], *, fetch_missing: bool = False) -> dict[str, CatalogueCache | None]:
    """The cached rows of *providers*; stale ones are refreshed in the background."""
    names = list(dict.fromkeys(providers))
    known = memo_get("catalogue")
    if fetch_missing:
        # Rows read in this unit of work do; a provider without a copy yet is fetched now.
        fresh = all(known.get(n) is not None for n in names)
        rows = known if fresh else _load_rows(names, fetch_missing=True)
    else:
        missing = [n for n in names if n not in known]
        rows = {**known, **(_load_rows(missing, fetch_missing=False) if missing else {})}
    memo_update("catalogue", rows)  # a later read in the same unit of work uses these rows
    return {n: rows[n] for n in names}


def prefetch_for_panels(panels: Iterable[Any]) -> None:
    """Before a batch of starts: read every provider's copy once (into ``chat.memo``), fetching
    the ones never fetched yet, outside the batch's transaction."""
    del panels  # every start may name any provider; one query reads them all
    _load(build_registry().names, fetch_missing=True)


def _load_rows(names: list[str], *, fetch_missing: bool) -> dict[str, CatalogueCache | None]:
    rows: dict[str, CatalogueCache | None] = {name: None for name in names}
    # The models' JSON (hundreds of KB for OpenRouter) is read only when this process has not
    # parsed that copy yet (``_models_of``): the rest of the row says which copy it is.
    rows.update({row.provider: row for row in CatalogueCache.objects.filter(provider__in=names).defer("models_json")})
    # A copy fetched from another base URL (the administrator moved the provider) is no copy.
    urls = _base_urls()
    for name, row in rows.items():
        if row is not None and row.fetched_at is not None and row.base_url != urls.get(name, row.base_url):
            rows[name] = None
    if fetch_missing:
        for name in [n for n, row in rows.items() if row is None]:
            catalogue_refresh(name)
            row = CatalogueCache.objects.filter(provider=name).first()
            rows[name] = row if row is not None and row.base_url == urls.get(name) else None
    # A thread's write would only queue behind an open transaction (and could not see what it
    # holds): inside one, serve the cache and leave refreshing to the next read outside.
    if not transaction.get_connection().in_atomic_block:
        now = timezone.now()
        catalogue_refresh_in_background([n for n, row in rows.items() if _needs_refresh(row, now)])
    return rows


def _base_urls() -> dict[str, str]:
    registry = build_registry()
    return {name: registry.get(name).base_url for name in registry.names}


def _models_of(row: CatalogueCache | None) -> list[CatalogueModel]:
    if row is None or row.fetched_at is None:
        return []
    cached = _parsed.get(row.provider)
    if cached is not None and cached[0] == row.fetched_at:
        return cached[1]
    models = [CatalogueModel.from_dict(d) for d in row.models_json if isinstance(d, dict) and d.get("id")]
    _parsed[row.provider] = (row.fetched_at, models)
    return models


def catalogue_models(provider: str | None = None) -> list[dict[str, Any]]:
    """Every cached model (of one provider, or of all), as dicts with ``provider`` and ``ref``."""
    registry = build_registry()
    result = []
    for name, row in _load([provider] if provider else registry.names).items():
        for model in _models_of(row):
            # The id to write in a panel: plain for the default provider, "provider:id" otherwise.
            ref = model.id if name == registry.default else f"{name}:{model.id}"
            result.append({**model.to_dict(), "provider": name, "ref": ref, "supports_tools": model.supports_tools})
    return result


def catalogue_search(q: str, *, limit: int = 40) -> list[dict[str, Any]]:
    """Models whose id or name contains every word of *q*, best matches first (the picker's list)."""
    words = q.lower().split()
    scored = []
    for m in catalogue_models():
        hay = f"{m['ref']} {m['name']}".lower()
        if not all(w in hay for w in words):
            continue
        ref = m["ref"].lower()
        rank = 0 if words and ref.startswith(words[0]) else 1 if words and f"/{words[0]}" in ref else 2
        scored.append((rank, m["ref"], m))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [
        {
            "id": m["ref"],
            "name": m["name"],
            "provider": m["provider"],
            "prompt_per_m": _per_million(m["prompt_price"]),
            "completion_per_m": _per_million(m["completion_price"]),
            "context_length": m["context_length"],
            "tools": m["supports_tools"],
        }
        for _, _, m in scored[:limit]
    ]


def _per_million(price: float | None) -> float | None:
    return None if price is None else round(price * 1_000_000, 4)


# --------------------------------------------------------------------------- validation


def validate_models(model_ids: Iterable[str], *, fetch_missing: bool = True) -> list[str]:
    """A human sentence per model id that no configured provider lists (empty: all known).

    ``provider:model`` ids are resolved through the registry; ``~vendor/family-latest`` aliases
    pass when the catalogue has that family. A provider whose catalogue could never be fetched
    does not block: its models are accepted unchecked, with a warning in the log.

    Before a run (the default) a provider never fetched yet is fetched now; pages that only
    give early feedback pass ``fetch_missing=False`` and never wait for the network.
    """
    registry = build_registry()
    errors: list[str] = []
    wanted: dict[str, list[tuple[str, str]]] = {}
    providers: dict[str, Provider] = {}
    for model_id in dict.fromkeys(model_ids):
        try:
            provider, sent = registry.resolve(model_id)
        except UnknownProvider as exc:
            errors.append(str(exc))
            continue
        wanted.setdefault(provider.name, []).append((model_id, sent))
        providers[provider.name] = provider
    rows = _load(wanted, fetch_missing=fetch_missing)
    for name, requested in wanted.items():
        row = rows[name]
        if row is None or row.fetched_at is None:
            if not fetch_missing:
                continue
            log.warning(
                "the model catalogue of %s could never be fetched (%s); accepting %s unchecked",
                name,
                row.last_error if row else "no attempt",
                ", ".join(w for w, _ in requested),
            )
            continue
        errors += unknown_models(requested, _models_of(row), provider=provider_title(providers[name], registry.default))
    return errors


def provider_title(provider: Provider, default: str) -> str:
    """How messages name a provider: "OpenRouter" only when it is OpenRouter's own server."""
    host = urlsplit(provider.base_url).netloc or provider.base_url
    if provider.name == default:
        return "OpenRouter" if host.lower().endswith("openrouter.ai") else f"the default provider ({host})"
    return f"provider {provider.name!r}"


def model_resolver() -> Callable[[str], CatalogueModel | None]:
    """A lookup of model ids in every cached catalogue (one query), for pricing several ids."""
    registry = build_registry()
    rows = _load(registry.names)

    def lookup(model_id: str) -> CatalogueModel | None:
        try:
            provider, sent = registry.resolve(model_id)
        except UnknownProvider:
            return None
        return resolve(sent, _models_of(rows.get(provider.name)))

    return lookup


# --------------------------------------------------------------------------- cost estimates

# How long an answer is assumed to be when the panel sets no max_tokens: the high end of the
# range, and the low end as a fraction of it.
DEFAULT_COMPLETION_TOKENS = 1500
LOW_FRACTION = 0.25
ANALYSIS_TOKENS = (300, 1200)  # the analyst's JSON, low and high
PROMPT_OVERHEAD_TOKENS = 600  # instructions around the answers in the analyst's and writer's prompts


def tokens_of_chars(chars: int) -> int:
    """About four characters per token, as providers bill English text."""
    return math.ceil(max(0, chars) / 4)


def call_price(row: CatalogueModel | None, *, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD of one call at the catalogue prices of *row*; None when the catalogue gives no price."""
    if row is None or (row.prompt_price is None and row.completion_price is None):
        return None
    return (row.prompt_price or 0.0) * prompt_tokens + (row.completion_price or 0.0) * completion_tokens


def estimate_panel_cost(
    config: dict[str, Any],
    *,
    prompt_tokens: int,
    completion_tokens: int = DEFAULT_COMPLETION_TOKENS,
    reused_slots: Iterable[int] = (),
    reuse_analysis: bool = False,
) -> tuple[float, float]:
    """``(low, high)`` USD of one run of the panel *config* for a prompt of *prompt_tokens*.

    Members answer the prompt; the analyst reads the prompt and every answer; the writer reads
    those and the analysis. An answer is ``max_tokens`` long at most (else *completion_tokens*);
    at the low end, a quarter of *completion_tokens*. Models without a known price count as free.
    ``reused_slots`` and ``reuse_analysis`` (a retried member, a regenerated answer) cost
    nothing themselves but still fill the later prompts. The high end includes paid web
    searches (``search_reserve_usd``).

    The one estimator: the preset pages, the composer (chat.views.catalogue.estimate_json) and
    the spend reservation (chat.runs.checks.reserve_spend) all call it, so they agree.
    """
    lookup = model_resolver()
    reused = set(reused_slots)

    def length(spec: dict[str, Any], low: int, high: int) -> tuple[int, int]:
        high = int(spec.get("max_tokens") or high)
        return min(low, high), high

    answer_range = (max(1, round(completion_tokens * LOW_FRACTION)), completion_tokens)

    def cost(spec: dict[str, Any], prompt: int, completion: int) -> float:
        prompt += tokens_of_chars(len(spec.get("system_prompt") or ""))
        return call_price(lookup(spec["model"]), prompt_tokens=prompt, completion_tokens=completion) or 0.0

    members = config.get("members") or []
    analyst, writer = config.get("analyst"), config.get("writer")
    totals = []
    for end in (0, 1):  # the low end, then the high end
        total = 0.0
        answers = 0
        for slot, member in enumerate(members):
            tokens = length(member, *answer_range)[end]
            answers += tokens
            if slot not in reused:
                total += cost(member, prompt_tokens, tokens)
        analysis = 0
        if analyst:
            analysis = length(analyst, *ANALYSIS_TOKENS)[end]
            if not reuse_analysis:
                total += cost(analyst, prompt_tokens + answers + PROMPT_OVERHEAD_TOKENS, analysis)
        if writer:
            prompt = prompt_tokens + answers + analysis + PROMPT_OVERHEAD_TOKENS
            total += cost(writer, prompt, length(writer, *answer_range)[end])
        if end == 1:
            members_asked = len([slot for slot in range(len(members)) if slot not in reused])
            total += search_reserve_usd(config, members=members_asked)
        totals.append(round(total, 6))
    return totals[0], totals[1]


def search_reserve_usd(config: dict[str, Any], *, members: int | None = None) -> float:
    """The most a run's paid searches can cost: every member asked spending its whole tool budget on them."""
    price = float(settings.FUSION_SEARCH_PRICE_USD or 0)
    research = research_settings(config.get("research"))
    if price <= 0 or research is None or not settings.FUSION_SEARCH_BACKEND:
        return 0.0
    return price * research.budget * (len(config.get("members") or []) if members is None else members)


def unpriced_models(config: dict[str, Any]) -> list[str]:
    """Model ids of *config* whose price the catalogue does not give (counted as free)."""
    lookup = model_resolver()
    specs = [*(config.get("members") or []), config.get("analyst"), config.get("writer")]
    result = []
    for model_id in dict.fromkeys(s["model"] for s in specs if s):
        row = lookup(model_id)
        if row is None or row.prompt_price is None or row.completion_price is None:
            result.append(model_id)
    return result
