"""``/api/v1/…`` (chat/views/api.py)."""

from __future__ import annotations

from django.urls import path

from chat.views import api

urlpatterns = [
    path("chat/completions", api.chat_completions, name="api_chat_completions"),
    path("responses", api.create_response, name="api_responses"),
    path("models", api.models, name="api_models"),
    path("openapi.json", api.openapi_json, name="api_openapi"),
]
