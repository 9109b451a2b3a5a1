"""Conversation pages: the list, a conversation, its settings and exports.

Views parse, authorize (every conversation goes through ``conversation_get_for_user``), call one
service and respond. Runs themselves are started over the websocket (chat/consumers.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import conversations as svc
from chat import presets
from chat.forms.conversations import ComposerForm, PanelForm, RenameForm
from chat.models import Conversation, FollowUpMode
from chat.views._common import AuthedRequest, not_found_is_404, sidebar

PENDING_KEY = "pending_start:{pk}"


# --------------------------------------------------------------------------- helpers


def _composer(*, conversation: Conversation | None, form: PanelForm | None = None) -> dict[str, Any]:
    panel = svc.conversation_panel(conversation=conversation)
    mode = conversation.follow_up_mode if conversation else FollowUpMode.FUSED
    if form is None:
        form = ComposerForm(initial=PanelForm.initial_for(panel=panel, follow_up_mode=mode))
    return {
        "form": form,
        "panel": panel,
        "max_prompt_chars": settings.FUSION_MAX_PROMPT_CHARS,
    }


def _next_url(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _stash_pending_start(request: HttpRequest, conversation: Conversation, prompt: str) -> None:
    """Remember a prompt to start on the conversation page, with its client run id.

    The page hands it to the browser, which sends ``start`` once its websocket is open. It stays
    in the session until a run with that id exists, so a reload before the socket connected
    still starts it; a second ``start`` with the same id only attaches, so nothing runs twice.
    """
    request.session[PENDING_KEY.format(pk=conversation.pk)] = {"run_id": str(uuid.uuid4()), "prompt": prompt}


def _take_pending_start(request: AuthedRequest, conversation: Conversation) -> dict[str, str] | None:
    key = PENDING_KEY.format(pk=conversation.pk)
    pending = request.session.get(key)
    if not pending:
        return None
    if svc.run_started(user=request.user, client_run_id=pending["run_id"]):
        del request.session[key]
        return None
    return pending


# --------------------------------------------------------------------------- conversations


@login_required
@require_GET
def home(request: AuthedRequest) -> HttpResponse:
    """A fresh composer whose first send creates a new conversation.

    Never the newest conversation: continuing an old one is the user's choice, in the sidebar.
    Asked for JSON with ``?q=``, it answers the sidebar's search as you type: the ids of the
    conversations whose title, prompts or fused answers match (static/js/app.js).
    """
    if _wants_json(request) and "q" in request.GET:
        q = request.GET["q"].strip()[:200]
        ids = svc.conversation_list_for_user(user=request.user, q=q).values_list("pk", flat=True)
        return JsonResponse({"q": q, "ids": list(ids)})
    return render(request, "chat/home.html", {**sidebar(request), **_composer(conversation=None)})


@login_required
@require_POST
@not_found_is_404
def conversation_new(request: AuthedRequest) -> HttpResponse:
    """Create (or reuse an empty) conversation; with a prompt, start it on the next page.

    The sidebar's button posts nothing. The home page's composer posts the prompt and the panel:
    the prompt is stashed in the session and started by the conversation page's websocket.
    """
    if "prompt" not in request.POST:
        conversation = svc.conversation_create(user=request.user)
        return redirect("conversation", pk=conversation.pk)
    form = ComposerForm(request.POST)
    if not form.is_valid():
        context = {**sidebar(request), **_composer(conversation=None, form=form)}
        return render(request, "chat/home.html", context, status=400)
    chosen = presets.preset_resolve_posted(user=request.user, ref=request.POST.get("preset", ""))
    conversation = svc.conversation_create(
        user=request.user, panel=form.cleaned_data["panel"], follow_up_mode=form.cleaned_data["follow_up_mode"]
    )
    if chosen is not None:
        presets.preset_apply_to_conversation(
            conversation=conversation, resolved=chosen, follow_up_mode=form.cleaned_data["follow_up_mode"]
        )
    _stash_pending_start(request, conversation, form.cleaned_data["prompt"])
    return redirect("conversation", pk=conversation.pk)


@login_required
@require_http_methods(["GET", "POST"])
@not_found_is_404
def conversation_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    if request.method == "POST":
        # The composer without its script (not loaded yet, or blocked): start via the session.
        form = ComposerForm(request.POST)
        if form.is_valid():
            chosen = presets.preset_resolve_posted(user=request.user, ref=request.POST.get("preset", ""))
            svc.conversation_update_settings(
                conversation=conversation,
                panel=form.cleaned_data["panel"],
                follow_up_mode=form.cleaned_data["follow_up_mode"],
            )
            if chosen is not None:
                presets.preset_apply_to_conversation(
                    conversation=conversation, resolved=chosen, follow_up_mode=form.cleaned_data["follow_up_mode"]
                )
            _stash_pending_start(request, conversation, form.cleaned_data["prompt"])
        else:
            for error in form.errors.values():
                messages.error(request, " ".join(str(e) for e in error))
        return redirect("conversation", pk=conversation.pk)
    context = {
        **sidebar(request, current=conversation),
        **_composer(conversation=conversation),
        "conversation": conversation,
        "turns_state": svc.conversation_turns_state(conversation=conversation),
        "pending_start": _take_pending_start(request, conversation),
        "page_config": {
            "conversation": conversation.pk,
            "ws_path": f"/ws/conversations/{conversation.pk}/",
            "state_url": reverse("conversation_state", args=[conversation.pk]),
            "max_prompt_chars": settings.FUSION_MAX_PROMPT_CHARS,
            "title": conversation.title,
        },
    }
    return render(request, "chat/conversation.html", context)


@login_required
@require_GET
@not_found_is_404
def conversation_state(request: AuthedRequest, pk: int) -> JsonResponse:
    """The page's turns state again, for a client that reconnected after runs finished."""
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    return JsonResponse({"turns": svc.conversation_turns_state(conversation=conversation)})


@login_required
@require_POST
@not_found_is_404
def conversation_rename(request: AuthedRequest, pk: int) -> HttpResponse:
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        svc.conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    else:
        messages.error(request, "A title needs 1 to 200 characters.")
    return redirect(_next_url(request, reverse("conversation", args=[conversation.pk])))


@login_required
@require_http_methods(["GET", "POST"])
@not_found_is_404
def conversation_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    if request.method == "POST":
        title = conversation.title
        svc.conversation_delete(conversation=conversation)
        messages.success(request, f"Deleted “{title}”.")
        return redirect("home")
    return render(
        request, "chat/confirm_delete.html", {**sidebar(request, current=conversation), "conversation": conversation}
    )


@login_required
@require_POST
@not_found_is_404
def conversation_settings(request: AuthedRequest, pk: int) -> HttpResponse:
    """Save the composer's panel and follow-up mode as this conversation's defaults."""
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    form = PanelForm(request.POST)
    if not form.is_valid():
        message = " ".join(str(e) for errors in form.errors.values() for e in errors)
        if _wants_json(request):
            return JsonResponse({"ok": False, "error": message}, status=400)
        messages.error(request, message)
        return redirect("conversation", pk=conversation.pk)
    # The composer's preset chooser: the preset's whole config (labels, system prompts…) is
    # stored, not just the models and temperatures the fields show.
    chosen = presets.preset_resolve_posted(user=request.user, ref=request.POST.get("preset", ""))
    svc.conversation_update_settings(
        conversation=conversation, panel=form.cleaned_data["panel"], follow_up_mode=form.cleaned_data["follow_up_mode"]
    )
    if chosen is not None:
        presets.preset_apply_to_conversation(
            conversation=conversation, resolved=chosen, follow_up_mode=form.cleaned_data["follow_up_mode"]
        )
    if _wants_json(request):
        return JsonResponse({"ok": True, "panel": conversation.panel, "follow_up_mode": conversation.follow_up_mode})
    messages.success(request, "Saved the panel for this conversation.")
    return redirect("conversation", pk=conversation.pk)


@login_required
@require_GET
@not_found_is_404
def conversation_export_md(request: AuthedRequest, pk: int) -> HttpResponse:
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    response = HttpResponse(
        svc.conversation_export_markdown(conversation=conversation), content_type="text/markdown; charset=utf-8"
    )
    filename = svc.conversation_export_filename(conversation=conversation, ext="md")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
@not_found_is_404
def conversation_export_json(request: AuthedRequest, pk: int) -> HttpResponse:
    conversation = svc.conversation_get_for_user(user=request.user, pk=pk)
    body = json.dumps(svc.conversation_export_json(conversation=conversation), ensure_ascii=False, indent=2)
    response = HttpResponse(body, content_type="application/json; charset=utf-8")
    filename = svc.conversation_export_filename(conversation=conversation, ext="json")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
