from __future__ import annotations

from django.urls import include, path

from chat import views, views_accounts, views_catalogue, views_keys, views_usage

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new", views.conversation_new, name="conversation_new"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation"),
    path("c/<int:pk>/state.json", views.conversation_state, name="conversation_state"),
    path("c/<int:pk>/rename", views.conversation_rename, name="conversation_rename"),
    path("c/<int:pk>/delete", views.conversation_delete, name="conversation_delete"),
    path("c/<int:pk>/settings", views.conversation_settings, name="conversation_settings"),
    path("c/<int:pk>/export.md", views.conversation_export_md, name="conversation_export_md"),
    path("c/<int:pk>/export.json", views.conversation_export_json, name="conversation_export_json"),
    path("healthz", views.healthz, name="healthz"),
    path("models.json", views_catalogue.models_json, name="models_json"),
    path("estimate.json", views_catalogue.estimate_json, name="estimate"),
    path("c/<int:pk>/estimate", views_catalogue.estimate_json, name="conversation_estimate"),
    path("settings/keys", views_keys.keys_page, name="keys"),
    path("settings/keys/<int:pk>/delete", views_keys.key_delete, name="key_delete"),
    path("usage", views_usage.usage_page, name="usage"),
    path("settings/invites", views_accounts.invites_page, name="invites"),
    path("settings/invites/<int:pk>/revoke", views_accounts.invite_revoke, name="invite_revoke"),
    path("", include("chat.urls_presets")),
]
