"""Accept or reject a fused answer: ``POST /c/<pk>/runs/<run>/feedback`` (static/js/feedback.js).

The body is form-encoded or JSON, ``{"accepted": true | false | null, "note": "…"}``; null takes
the verdict back. The answer is ``{"accepted", "note"}``, or ``{"error", "field"}`` with 400 for
input the user can fix and 404 for a conversation or run that is not theirs (chat.feedback).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from chat import feedback as svc
from chat.errors import NotFound
from chat.runs.state import feedback_summary
from chat.views._common import AuthedRequest

# How a form (or a script) may spell each verdict; "" and "null" take it back.
_VERDICTS: dict[Any, bool | None] = {
    True: True,
    False: False,
    None: None,
    "true": True,
    "accept": True,
    "accepted": True,
    "false": False,
    "reject": False,
    "rejected": False,
    "": None,
    "null": None,
}


def _error(message: str, field: str | None, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message, "field": field}, status=status)


def _parse(request: AuthedRequest) -> tuple[bool | None, str]:
    """(accepted, note) from the body; FeedbackError when it says neither accept, reject nor null."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            raise svc.FeedbackError("The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise svc.FeedbackError('Send an object: {"accepted": true | false | null, "note": "…"}.')
    else:
        data = request.POST
    if "accepted" not in data:
        raise svc.FeedbackError("Say whether you accept the answer: accepted is true, false or null.", field="accepted")
    raw = data["accepted"]
    if isinstance(raw, str):
        raw = raw.strip().lower()
    elif not (raw is None or isinstance(raw, bool)):
        raw = "?"  # a number or an object is no verdict (1 == True would match below)
    if raw not in _VERDICTS:
        raise svc.FeedbackError("accepted must be true, false or null.", field="accepted")
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        raise svc.FeedbackError("The note must be text.", field="note")
    return _VERDICTS[raw], note or ""


@login_required
@require_POST
def run_feedback(request: AuthedRequest, pk: int, run: uuid.UUID) -> JsonResponse:
    try:
        svc.run_get_for_user(user=request.user, conversation_pk=pk, run_id=run)  # a 404 before any 400
        accepted, note = _parse(request)
        if accepted is None:
            svc.feedback_clear(user=request.user, conversation_pk=pk, run_id=run)
            return JsonResponse({"accepted": None, "note": ""})
        saved = svc.feedback_set(user=request.user, conversation_pk=pk, run_id=run, accepted=accepted, note=note)
    except NotFound as exc:
        return _error(str(exc), None, status=404)
    except svc.FeedbackError as exc:
        return _error(str(exc), exc.field)
    return JsonResponse(feedback_summary(saved))
