from __future__ import annotations

from django.contrib import admin

from chat.models import Conversation, MemberResponse, Run, Turn


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
    fields = ("slot", "model", "status", "attempt", "ttft_ms", "duration_ms", "usage", "error_kind", "error_message", "content")
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
