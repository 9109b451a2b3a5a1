"""The usage page: what a user spent per day and per model, and what is left of today's limit."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chat import spend
from chat.views import _sidebar

DAYS = 30


@login_required
@require_GET
def usage_page(request: HttpRequest) -> HttpResponse:
    report = spend.usage_report(user=request.user, days=DAYS)
    return render(request, "settings/usage.html", {**_sidebar(request), "report": report, "days": DAYS})
