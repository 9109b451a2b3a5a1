from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from chat import accounts
from chat.api.tokens import api_token_revoke
from chat.models import (
    ApiToken,
    CatalogueCache,
    Conversation,
    Invite,
    MemberResponse,
    Preset,
    ProviderKey,
    Run,
    Turn,
    UserLimits,
)


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    fields = ("index", "prompt", "created_at")
    readonly_fields = fields
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "user", "follow_up_mode", "updated_at", "created_at")
    list_filter = ("follow_up_mode",)
    search_fields = ("title", "user__username")
    raw_id_fields = ("user",)
    inlines = [TurnInline]


class RunInline(admin.TabularInline):
    model = Run
    extra = 0
    fields = ("status", "writer_model", "created_at", "finished_at")
    readonly_fields = fields
    show_change_link = True


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ("conversation", "index", "created_at")
    search_fields = ("prompt", "conversation__title")
    raw_id_fields = ("conversation",)
    inlines = [RunInline]


class MemberResponseInline(admin.StackedInline):
    model = MemberResponse
    extra = 0
    fields = (
        "slot",
        "model",
        "status",
        "attempt",
        "ttft_ms",
        "duration_ms",
        "usage",
        "error_kind",
        "error_message",
        "content",
    )
    readonly_fields = fields


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "status", "analyst_model", "writer_model", "created_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("id", "client_run_id", "user__username")
    raw_id_fields = ("user", "turn", "conversation")
    readonly_fields = ("id", "created_at", "heartbeat_at", "finished_at", "process_id")
    inlines = [MemberResponseInline]


@admin.register(MemberResponse)
class MemberResponseAdmin(admin.ModelAdmin):
    list_display = ("run", "slot", "model", "status", "ttft_ms", "duration_ms")
    list_filter = ("status",)
    search_fields = ("model", "run__id")
    raw_id_fields = ("run",)


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "is_default", "is_shared", "copied_from_share", "updated_at")
    list_filter = ("is_default", "copied_from_share")
    search_fields = ("name", "user__username")
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "updated_at")

    @admin.display(boolean=True, description="shared")
    def is_shared(self, obj: Preset) -> bool:
        return bool(obj.share_token)


# --------------------------------------------------------------------------- keys, limits, catalogue


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    """Per-user overrides: empty fields fall back to FUSION_DAILY_SPEND_LIMIT_USD / FUSION_ALLOW_SERVER_KEY."""

    list_display = ("user", "daily_spend_limit_usd", "allow_server_key")
    search_fields = ("user__username",)
    raw_id_fields = ("user",)


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    """Which users stored a key for which provider. The key itself is never shown, not even encrypted."""

    list_display = ("user", "provider", "masked", "updated_at")
    list_filter = ("provider",)
    search_fields = ("user__username", "provider")
    fields = ("user", "provider", "masked", "created_at", "updated_at")
    readonly_fields = fields

    @admin.display(description="key")
    def masked(self, obj: ProviderKey) -> str:
        return f"…{obj.last4}"

    def has_add_permission(self, request: object) -> bool:
        return False  # users add their own keys in Settings → Keys


@admin.register(CatalogueCache)
class CatalogueCacheAdmin(admin.ModelAdmin):
    list_display = ("provider", "model_count", "fetched_at", "last_attempt_at", "last_error")
    fields = ("provider", "model_count", "fetched_at", "last_attempt_at", "last_error")
    readonly_fields = fields

    @admin.display(description="models")
    def model_count(self, obj: CatalogueCache) -> int:
        return len(obj.models_json or [])


# --------------------------------------------------------------------------- accounts


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Read-only: invites are made and revoked in Settings → Invites, and redeemed by sign-up."""

    list_display = ("__str__", "note", "created_by", "created_at", "expires_at", "status", "used_by")
    list_filter = ("revoked",)
    search_fields = ("note", "created_by__username", "used_by__username")
    fields = ("note", "created_by", "created_at", "expires_at", "used_by", "used_at", "revoked")
    readonly_fields = fields

    @admin.display(description="status")
    def status(self, obj: Invite) -> str:
        return accounts.invite_status(invite=obj)

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Which users hold which API tokens. Read-only: users make and revoke their own in Settings →
    API tokens; staff can revoke here. Neither the token nor its hash is shown."""

    list_display = ("name", "user", "hint", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "hint", "user__username")
    fields = ("user", "name", "hint", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(revoked_at=None))
        for token in tokens:
            api_token_revoke(token=token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a token is shown once, to its user, in Settings → API tokens
