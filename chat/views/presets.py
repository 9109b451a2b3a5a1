"""Preset pages: the list, the editor, sharing by link, JSON import/export.

Views parse, authorize (every preset goes through ``preset_get_for_user``; a shared one only
through its token), call one service in chat/presets.py and respond. Everything a preset holds is
user text — and a shared one is someone else's — so templates only ever escape it.
"""

from __future__ import annotations

import json
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import accounts, presets
from chat.errors import NotFound
from chat.forms.accounts import SignInForm
from chat.forms.presets import ImportForm, MemberFormSet, PresetForm, member_initial
from chat.models import Preset
from chat.panels import default_panel, default_research
from chat.views._common import AuthedRequest, not_found_is_404, sidebar

MEMBERS_PREFIX = "members"


def _page(request: AuthedRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render(request, template, {**sidebar(request), **context}, status=status)


def _summary(config: dict[str, Any]) -> dict[str, Any]:
    """What the read-only pages show: the config and the estimated cost of one run."""
    return {
        "config": config,
        "estimate": presets.preset_estimate(config=config),
        "estimate_prompt_tokens": presets.ESTIMATE_PROMPT_TOKENS,
    }


def _json_download(data: dict[str, Any], filename: str) -> HttpResponse:
    response = HttpResponse(
        json.dumps(data, ensure_ascii=False, indent=2), content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --------------------------------------------------------------------------- list & pages


@login_required
@require_GET
def preset_list(request: AuthedRequest) -> HttpResponse:
    return _page(
        request,
        "presets/list.html",
        {
            "own": presets.preset_list_for_user(user=request.user),
            "builtins": presets.builtin_presets(),
        },
    )


@login_required
@require_GET
@not_found_is_404
def preset_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    preset = presets.preset_get_for_user(user=request.user, pk=pk)
    share_url = (
        request.build_absolute_uri(reverse("shared_preset", args=[preset.share_token])) if preset.share_token else ""
    )
    return _page(
        request,
        "presets/detail.html",
        {
            "preset": preset,
            "share_url": share_url,
            **_summary(presets.parse_preset_config(preset.config)),
        },
    )


@login_required
@require_GET
@not_found_is_404
def builtin_detail(request: AuthedRequest, key: str) -> HttpResponse:
    builtin = presets.builtin_get(key=key)
    return _page(request, "presets/builtin.html", {"preset": builtin, **_summary(builtin.config)})


# --------------------------------------------------------------------------- editor


def _editor(request: AuthedRequest, *, preset: Preset | None) -> HttpResponse:
    """Create (``preset`` None) or edit a preset: the form, a row per member, one error list."""
    error = ""
    if request.method == "POST":
        form = PresetForm(request.POST)
        members = MemberFormSet(request.POST, prefix=MEMBERS_PREFIX)
        if form.is_valid() and members.is_valid():
            rows = [m for m in (f.member() for f in members.forms) if m is not None]
            fields = {
                "name": form.cleaned_data["name"],
                "description": form.cleaned_data["description"],
                "config": form.config(rows),
            }
            try:
                if preset is None:
                    preset = presets.preset_create(user=request.user, **fields)
                    messages.success(request, f"Created “{preset.name}”.")
                else:
                    presets.preset_update(preset=preset, **fields)
                    messages.success(request, f"Saved “{preset.name}”.")
                return redirect("preset_detail", pk=preset.pk)
            except presets.PresetError as exc:
                error = str(exc)
        elif not members.is_valid():
            error = " ".join(str(e) for e in members.non_form_errors()) or "Check the members below."
    else:
        if preset is None:
            config = {**default_panel(), "follow_up_mode": "fused", "research": default_research()}
            name, description = "", ""
        else:
            config, name, description = preset.config, preset.name, preset.description
        form = PresetForm(initial=PresetForm.initial_for(name=name, description=description, config=config))
        members = MemberFormSet(initial=member_initial(config), prefix=MEMBERS_PREFIX)
    invalid = request.method == "POST"
    return _page(
        request,
        "presets/edit.html",
        {
            "preset": preset,
            "form": form,
            "members": members,
            "error": error,
        },
        status=400 if invalid else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def preset_new(request: AuthedRequest) -> HttpResponse:
    return _editor(request, preset=None)


@login_required
@require_http_methods(["GET", "POST"])
@not_found_is_404
def preset_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    return _editor(request, preset=presets.preset_get_for_user(user=request.user, pk=pk))


# --------------------------------------------------------------------------- actions


@login_required
@require_POST
@not_found_is_404
def preset_duplicate(request: AuthedRequest, pk: int) -> HttpResponse:
    made = presets.preset_duplicate(preset=presets.preset_get_for_user(user=request.user, pk=pk))
    messages.success(request, f"Made “{made.name}”. Edit it as you like.")
    return redirect("preset_edit", pk=made.pk)


@login_required
@require_http_methods(["GET", "POST"])
@not_found_is_404
def preset_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    preset = presets.preset_get_for_user(user=request.user, pk=pk)
    if request.method == "POST":
        presets.preset_delete(preset=preset)
        messages.success(request, f"Deleted “{preset.name}”.")
        return redirect("presets")
    return _page(request, "presets/confirm_delete.html", {"preset": preset})


@login_required
@require_POST
@not_found_is_404
def preset_default(request: AuthedRequest, pk: int) -> HttpResponse:
    """``default=1`` makes it the preset new conversations start with; ``default=0`` clears that."""
    preset = presets.preset_get_for_user(user=request.user, pk=pk)
    make_default = request.POST.get("default", "1") != "0"
    presets.preset_set_default(user=request.user, preset=preset if make_default else None)
    if make_default:
        messages.success(request, f"New conversations start with “{preset.name}”.")
    else:
        messages.success(request, "No default preset: new conversations start with the server's panel.")
    if request.POST.get("next") == "detail":
        return redirect("preset_detail", pk=pk)
    return redirect("presets")


@login_required
@require_POST
@not_found_is_404
def preset_share(request: AuthedRequest, pk: int) -> HttpResponse:
    preset = presets.preset_get_for_user(user=request.user, pk=pk)
    had_link = bool(preset.share_token)
    presets.preset_share(preset=preset)
    messages.success(request, "New share link made; the old one no longer works." if had_link else "Share link made.")
    return redirect("preset_detail", pk=pk)


@login_required
@require_POST
@not_found_is_404
def preset_unshare(request: AuthedRequest, pk: int) -> HttpResponse:
    presets.preset_unshare(preset=presets.preset_get_for_user(user=request.user, pk=pk))
    messages.success(request, "Stopped sharing: the link no longer works.")
    return redirect("preset_detail", pk=pk)


@login_required
@require_GET
@not_found_is_404
def preset_export(request: AuthedRequest, pk: int) -> HttpResponse:
    preset = presets.preset_get_for_user(user=request.user, pk=pk)
    return _json_download(presets.preset_export(preset), presets.export_filename(preset))


@login_required
@require_http_methods(["GET", "POST"])
def preset_import(request: AuthedRequest) -> HttpResponse:
    form = ImportForm(request.POST or None, request.FILES or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            preset = presets.preset_import(
                user=request.user, data=form.cleaned_data["payload"], name=form.cleaned_data["name"]
            )
        except presets.PresetError as exc:
            error = str(exc)
        else:
            messages.success(request, f"Imported “{preset.name}”.")
            return redirect("preset_detail", pk=preset.pk)
    status = 400 if request.method == "POST" else 200
    return _page(request, "presets/import.html", {"form": form, "error": error}, status=status)


@login_required
@require_POST
@not_found_is_404
def builtin_copy(request: AuthedRequest, key: str) -> HttpResponse:
    made = presets.preset_copy_builtin(user=request.user, key=key)
    messages.success(request, f"Copied “{made.name}” into your presets.")
    return redirect("preset_detail", pk=made.pk)


@login_required
@require_GET
@not_found_is_404
def builtin_export(request: AuthedRequest, key: str) -> HttpResponse:
    builtin = presets.builtin_get(key=key)
    return _json_download(presets.preset_export(builtin), presets.export_filename(builtin))


# --------------------------------------------------------------------------- shared by link


def _shared_missing(request: AuthedRequest) -> HttpResponse:
    """A revoked, replaced or unknown share link: the same page for all three (no token is listed)."""
    return _page(request, "presets/shared_missing.html", {}, status=404)


def _sign_in_to_see(request: HttpRequest) -> HttpResponse:
    """The sign-in page in place of a share link, saying why, with ``next`` back to the link.

    Nothing about the preset is looked up for a signed-out visitor: the notice is the same for a
    working link and a dead one.
    """
    context = {
        "form": SignInForm(request),
        "next": request.get_full_path(),
        "signup_mode": accounts.signup_mode(),
        "share_notice": True,
    }
    return render(request, "accounts/login.html", context)


@require_GET
def shared_detail(request: HttpRequest, token: str) -> HttpResponse:
    """The read-only page behind a share link: the panel, its settings, the owner's display name."""
    if not request.user.is_authenticated:
        return _sign_in_to_see(request)
    authed = cast(AuthedRequest, request)
    try:
        shared = presets.preset_get_shared(token=token)
    except NotFound:
        return _shared_missing(authed)
    owner = shared.user
    return _page(
        authed,
        "presets/shared.html",
        {
            # Only these reach the template: never the owner's row, e-mail or other presets.
            "name": shared.name,
            "description": shared.description,
            "owner_name": owner.get_full_name() or owner.get_username(),
            "is_own": owner.pk == authed.user.pk,
            "token": token,
            **_summary(presets.parse_preset_config(shared.config)),
        },
    )


@login_required
@require_POST
def shared_copy(request: AuthedRequest, token: str) -> HttpResponse:
    try:
        made = presets.preset_copy_shared(user=request.user, token=token)
    except NotFound:  # revoked while the page was open
        return _shared_missing(request)
    messages.success(
        request,
        f"Copied “{made.name}” into your presets. It is yours now: later changes to the shared one do not affect it.",
    )
    return redirect("preset_detail", pk=made.pk)
