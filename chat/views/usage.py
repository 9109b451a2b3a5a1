"""The usage page: what a user spent per day and per model, what is left of today's limit, and
how many fused answers they accepted per preset (chat.feedback)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chat import feedback, usage
from chat.views._common import AuthedRequest, sidebar

DAYS = 30


@login_required
@require_GET
def usage_page(request: AuthedRequest) -> HttpResponse:
    report = usage.usage_report(user=request.user, days=DAYS)
    acceptance = feedback.feedback_by_preset(user=request.user, days=DAYS)
    context = {**sidebar(request), "report": report, "acceptance": acceptance, "days": DAYS}
    return render(request, "settings/usage.html", context)
