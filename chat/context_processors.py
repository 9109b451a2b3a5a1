from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from chat.fusion.types import MAX_PANEL_MEMBERS
from chat.runs.state import vocabulary

RUN_VOCABULARY = vocabulary()  # the status and phase names, for the conversation page's scripts


def site(request: HttpRequest) -> dict[str, Any]:
    """Site-wide template flags and the engine's limits (the scripts read them from the page)."""
    return {
        "FUSION_DEMO": settings.FUSION_DEMO,
        "MAX_PANEL_MEMBERS": MAX_PANEL_MEMBERS,
        "RUN_VOCABULARY": RUN_VOCABULARY,
    }
