from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, Any]:
    """Site-wide template flags."""
    return {"FUSION_DEMO": settings.FUSION_DEMO}
