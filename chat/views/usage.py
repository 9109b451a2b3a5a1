"""The usage page: what a user spent per day and per model, and what is left of today's limit."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chat import spend
from chat.views._common import AuthedRequest, sidebar

DAYS = 30


@login_required
@require_GET
def usage_page(request: AuthedRequest) -> HttpResponse:
    report = spend.usage_report(user=request.user, days=DAYS)
    return render(request, "settings/usage.html", {**sidebar(request), "report": report, "days": DAYS})
