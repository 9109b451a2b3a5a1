"""JSON for the composer: the searchable model picker and the estimated cost of a run.

Both read the cached catalogue only (chat/model_catalogue.py): they never wait for a provider.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from chat import conversations, model_catalogue, presets, spend
from chat.forms.conversations import PanelForm
from chat.models import Conversation
from chat.panels import default_panel
from chat.runs import history_messages
from chat.views._common import AuthedRequest, not_found_is_404

MAX_QUERY_CHARS = 200


@login_required
@require_GET
def models_json(request: AuthedRequest) -> JsonResponse:
    """``?q=`` → up to 40 models: id, name, provider, price per 1M tokens in/out, context length."""
    q = request.GET.get("q", "")[:MAX_QUERY_CHARS]
    return JsonResponse({"models": model_catalogue.catalogue_search(q)})


def _history_chars(conversation: Conversation, *, panel_size: int) -> int:
    """How much of the conversation so far the next run sends along with the prompt."""
    fused, threads = history_messages(conversation, conversation.turns.count(), panel_size=panel_size)
    return max(sum(len(str(m["content"])) for m in thread) for thread in [fused, *threads.values()])


@login_required
@require_GET
@not_found_is_404
def estimate_json(request: AuthedRequest, pk: int | None = None) -> JsonResponse:
    """``?chars=N`` plus the composer's panel fields (or ``preset``) → the run's estimated cost
    range in USD, and what is left of today's limit.

    On a conversation page (``pk``) the conversation so far counts towards the prompt, as it
    will in the run. Without panel fields, the conversation's own panel (or the default) is used.
    """
    try:
        chars = max(0, min(int(request.GET.get("chars", "0")), settings.FUSION_MAX_PROMPT_CHARS))
    except ValueError:
        chars = 0
    history = 0
    panel = default_panel()
    if pk is not None:
        conversation = conversations.conversation_get_for_user(user=request.user, pk=pk)
        panel = conversations.conversation_panel(conversation=conversation)
        history = _history_chars(conversation, panel_size=len(panel["members"]))
    if request.GET.get("preset"):
        # The chosen preset runs with its full config (max_tokens, system prompts, research), as
        # ``start`` does; the panel fields only show its models.
        try:
            panel = presets.preset_resolve(user=request.user, ref=request.GET["preset"]).panel
        except presets.PresetError as exc:
            return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    elif "members" in request.GET:
        form = PanelForm({**request.GET.dict(), "follow_up_mode": "fused"})
        if not form.is_valid():
            message = " ".join(str(e) for errors in form.errors.values() for e in errors)
            return JsonResponse({"ok": False, "error": message}, status=400)
        panel = form.cleaned_data["panel"]
    models = [s["model"] for s in (*panel["members"], panel["analyst"], panel["writer"])]
    unknown = model_catalogue.validate_models(models, fetch_missing=False)
    low, high = model_catalogue.estimate_panel_cost(
        panel, prompt_tokens=model_catalogue.tokens_of_chars(chars + history)
    )
    limit = spend.daily_limit(user=request.user)
    left = None if limit is None else max(Decimal(0), limit - spend.spent_today(user=request.user))
    return JsonResponse(
        {
            "ok": True,
            "low": low,
            "high": high,
            "text": f"{spend.usd(low)}–{spend.usd(high)}",
            "unknown": unknown,
            "unpriced": model_catalogue.unpriced_models(panel),
            "calls": len(panel["members"]) + 2,
            "left_today": None if left is None else float(left),
            "left_text": None if left is None else spend.usd(left),
            "fits": left is None or spend.to_decimal(high) <= left,
        }
    )
