"""Every page and JSON endpoint of the app (accounts and admin are routed in fusionsite/urls.py)."""

from __future__ import annotations

from django.urls import path
from django.urls import register_converter

from chat.views import catalogue, conversations, feedback, health, invites, keys, presets, tokens, usage
from chat.views import evaluation_task, evaluations

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
    path("c/<int:pk>/runs/<uuid:run>/feedback", feedback.run_feedback, name="run_feedback"),
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

# evaluations (chat/views/evaluations.py); a task id may hold any character, "/" too
register_converter(evaluations.TaskIdConverter, "taskid")
urlpatterns += [
    path("evaluations/", evaluations.evaluation_list, name="evaluations"),
    path("evaluations/new", evaluations.evaluation_new, name="evaluation_new"),
    path("evaluations/<int:pk>", evaluations.evaluation_detail, name="evaluation_detail"),
    path("evaluations/<int:pk>/progress.json", evaluations.evaluation_progress, name="evaluation_progress"),
    path("evaluations/<int:pk>/start", evaluations.evaluation_start, name="evaluation_start"),
    path("evaluations/<int:pk>/stop", evaluations.evaluation_stop_view, name="evaluation_stop"),
    path("evaluations/<int:pk>/delete", evaluations.evaluation_delete_view, name="evaluation_delete"),
    path("evaluations/<int:pk>/report.json", evaluations.evaluation_report_json, name="evaluation_report_json"),
    path("evaluations/<int:pk>/report.csv", evaluations.evaluation_report_csv, name="evaluation_report_csv"),
    path(
        "evaluations/<int:pk>/score-cost.svg",
        evaluations.evaluation_chart_score_cost,
        name="evaluation_chart_score_cost",
    ),
    path("evaluations/<int:pk>/domains.svg", evaluations.evaluation_chart_domains, name="evaluation_chart_domains"),
    path("evaluations/<int:pk>/tasks/<taskid:task_id>", evaluation_task.evaluation_task, name="evaluation_task"),
]
