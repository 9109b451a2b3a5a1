"""What must hold before a run makes a paid call: run limits, known models, keys, and spend.

Each check raises ``RunError`` with a message the user can act on; ``reserve_spend`` holds the
run's highest estimated cost against the user's daily limit inside the run's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from chat import keys, model_catalogue, spend
from chat.engine import build_registry
from chat.fusion.types import FusionRequest
from chat.memo import MISSING, memo_entry, memo_update
from chat.models import Conversation, Run, RunStatus


class RunError(Exception):
    """A request about runs that cannot be honoured; ``code`` and ``message`` go to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionEnded(Exception):
    """The socket's session no longer signs its user in (checked with the start, in its batch)."""


def search_price_usd() -> float:
    return float(settings.FUSION_SEARCH_PRICE_USD or 0)


def check_limits(*, user: User, conversation: Conversation) -> None:
    """The user's concurrent runs. A second running run in one conversation is refused by the
    database (constraint one_running_run_per_conversation) when the run is written: the caller
    turns that IntegrityError into "busy", so there is no query for it here."""
    limit = settings.FUSION_MAX_CONCURRENT_RUNS_PER_USER
    running = memo_entry("running_runs", user.pk)
    if running is MISSING:
        running = Run.objects.filter(user=user, status=RunStatus.RUNNING).count()
    if running >= limit:
        raise RunError("limit", f"You already have {limit} runs going. Wait for one to finish or stop one.")


def count_started(*, user: User) -> None:
    """A run of *user* was written: a batch's later starts count it (see ``check_limits``)."""
    running = memo_entry("running_runs", user.pk)
    if running is not MISSING:
        memo_update("running_runs", {user.pk: running + 1})


def check_models_and_keys(*, user: User, panel: dict[str, Any]) -> None:
    """Before any paid call: every model is in its provider's catalogue, every provider has a key."""
    models = [
        s["model"]
        for s in (
            *panel["members"],
            panel["analyst"],
            panel["writer"],
            panel.get("fallback_analyst"),
            panel.get("fallback_writer"),
        )
        if s
    ]
    errors = model_catalogue.validate_models(models)
    if errors:
        raise RunError("unknown_model", " ".join(errors))
    registry = build_registry()
    problems = keys.key_problems(user=user, providers=[registry.resolve(m)[0].name for m in models])
    if problems:
        raise RunError("no_key", " ".join(problems))


def spend_hold(
    *,
    user: User,
    config: dict[str, Any],
    request: FusionRequest,
    reused_slots: Iterable[int] = (),
    reuse_analysis: bool = False,
) -> tuple[Decimal, bool]:
    """Check that a run of *config* fits today's limit: (the amount to reserve, whether it uses a
    server key). Inside the transaction that writes the run with them.

    The estimate is chat.model_catalogue.estimate_panel_cost, the one the composer and the
    preset pages show.
    """
    threads = [request.messages, *(request.member_messages or {}).values()]
    chars = max(sum(len(str(m.get("content") or "")) for m in thread) for thread in threads)
    _, high = model_catalogue.estimate_panel_cost(
        config,
        prompt_tokens=model_catalogue.tokens_of_chars(chars),
        reused_slots=reused_slots,
        reuse_analysis=reuse_analysis,
    )
    registry = build_registry()
    specs = [config.get(k) for k in ("analyst", "writer", "fallback_analyst", "fallback_writer")]
    providers = [registry.resolve(s["model"])[0].name for s in (*config["members"], *specs) if s]
    server_key = keys.uses_server_key(user=user, providers=providers)
    try:
        return spend.spend_reserve(user=user, high_usd=high, server_key=server_key), server_key
    except spend.SpendLimitExceeded as exc:
        raise RunError("spend_limit", str(exc)) from None


def reserve_spend(
    *, user: User, run: Run, request: FusionRequest, reused_slots: Iterable[int] = (), reuse_analysis: bool = False
) -> None:
    """``spend_hold`` for a run already written: its reservation is saved on it."""
    run.reserved_usd, run.uses_server_key = spend_hold(
        user=user, config=run.config, request=request, reused_slots=reused_slots, reuse_analysis=reuse_analysis
    )
    Run.objects.filter(pk=run.pk).update(reserved_usd=run.reserved_usd, uses_server_key=run.uses_server_key)
