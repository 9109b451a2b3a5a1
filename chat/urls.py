"""Every page and JSON endpoint of the app (accounts and admin are routed in fusionsite/urls.py)."""

from __future__ import annotations

from django.urls import path

from chat.views import catalogue, conversations, health, invites, keys, presets, tokens, usage

urlpatterns = [
    # conversations (chat/views/conversations.py)
    path("", conversations.home, name="home"),
    path("c/new", conversations.conversation_new, name="conversation_new"),
    path("c/<int:pk>/", conversations.conversation_detail, name="conversation"),
    path("c/<int:pk>/state.json", conversations.conversation_state, name="conversation_state"),
    path("c/<int:pk>/rename", conversations.conversation_rename, name="conversation_rename"),
    path("c/<int:pk>/delete", conversations.conversation_delete, name="conversation_delete"),
    path("c/<int:pk>/settings", conversations.conversation_settings, name="conversation_settings"),
    path("c/<int:pk>/export.md", conversations.conversation_export_md, name="conversation_export_md"),
    path("c/<int:pk>/export.json", conversations.conversation_export_json, name="conversation_export_json"),
    path("healthz", health.healthz, name="healthz"),
    # the composer's model picker and estimate (chat/views/catalogue.py)
    path("models.json", catalogue.models_json, name="models_json"),
    path("estimate.json", catalogue.estimate_json, name="estimate"),
    path("c/<int:pk>/estimate", catalogue.estimate_json, name="conversation_estimate"),
    # settings
    path("settings/keys", keys.keys_page, name="keys"),
    path("settings/keys/<int:pk>/delete", keys.key_delete, name="key_delete"),
    path("usage", usage.usage_page, name="usage"),
    path("settings/invites", invites.invites_page, name="invites"),
    path("settings/invites/<int:pk>/revoke", invites.invite_revoke, name="invite_revoke"),
    path("settings/api-tokens", tokens.api_tokens_page, name="api_tokens"),
    path("settings/api-tokens/<int:pk>/revoke", tokens.api_token_revoke, name="api_token_revoke"),
    # presets (chat/views/presets.py)
    path("presets/", presets.preset_list, name="presets"),
    path("presets/new", presets.preset_new, name="preset_new"),
    path("presets/import", presets.preset_import, name="preset_import"),
    path("presets/<int:pk>/", presets.preset_detail, name="preset_detail"),
    path("presets/<int:pk>/edit", presets.preset_edit, name="preset_edit"),
    path("presets/<int:pk>/duplicate", presets.preset_duplicate, name="preset_duplicate"),
    path("presets/<int:pk>/delete", presets.preset_delete, name="preset_delete"),
    path("presets/<int:pk>/default", presets.preset_default, name="preset_default"),
    path("presets/<int:pk>/share", presets.preset_share, name="preset_share"),
    path("presets/<int:pk>/unshare", presets.preset_unshare, name="preset_unshare"),
    path("presets/<int:pk>/export.json", presets.preset_export, name="preset_export"),
    path("presets/builtin/<slug:key>/", presets.builtin_detail, name="builtin_preset"),
    path("presets/builtin/<slug:key>/copy", presets.builtin_copy, name="builtin_preset_copy"),
    path("presets/builtin/<slug:key>/export.json", presets.builtin_export, name="builtin_preset_export"),
    path("p/s/<slug:token>/", presets.shared_detail, name="shared_preset"),
    path("p/s/<slug:token>/copy", presets.shared_copy, name="shared_preset_copy"),
]
