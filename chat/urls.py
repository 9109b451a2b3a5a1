from __future__ import annotations

from django.urls import path

from chat import views

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
]
