"""Preset pages (chat/views_presets.py), included from chat/urls.py."""
from __future__ import annotations

from django.urls import path

from chat import views_presets as views

urlpatterns = [
    path("presets/", views.preset_list, name="presets"),
    path("presets/new", views.preset_new, name="preset_new"),
    path("presets/import", views.preset_import, name="preset_import"),
    path("presets/<int:pk>/", views.preset_detail, name="preset_detail"),
    path("presets/<int:pk>/edit", views.preset_edit, name="preset_edit"),
    path("presets/<int:pk>/duplicate", views.preset_duplicate, name="preset_duplicate"),
    path("presets/<int:pk>/delete", views.preset_delete, name="preset_delete"),
    path("presets/<int:pk>/default", views.preset_default, name="preset_default"),
    path("presets/<int:pk>/share", views.preset_share, name="preset_share"),
    path("presets/<int:pk>/unshare", views.preset_unshare, name="preset_unshare"),
    path("presets/<int:pk>/export.json", views.preset_export, name="preset_export"),
    path("presets/builtin/<slug:key>/", views.builtin_detail, name="builtin_preset"),
    path("presets/builtin/<slug:key>/copy", views.builtin_copy, name="builtin_preset_copy"),
    path("presets/builtin/<slug:key>/export.json", views.builtin_export, name="builtin_preset_export"),
    path("p/s/<slug:token>/", views.shared_detail, name="shared_preset"),
    path("p/s/<slug:token>/copy", views.shared_copy, name="shared_preset_copy"),
]
