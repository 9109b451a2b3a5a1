"""The HTTP API's views (``/api/v1/…``): parse, authenticate, call one service, serialize.

Errors are OpenRouter's ``{"error": {"code", "message", "metadata"}}`` with their HTTP status
(chat.api.errors); docs/api.md has the details and ``/api/v1/openapi.json`` the schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat.api import completions, responses
from chat.api.models_list import api_models_for_user
from chat.dbthread import in_db_thread
from chat.api.auth import api_authenticate, refuse_inner_calls
from chat.api.errors import ApiError, invalid
from chat.api.schemas import ChatCompletionsBody, ResponsesBody, parse_body
from chat.models import ApiToken

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(exc: ApiError) -> JsonResponse:
    return JsonResponse(exc.body(), status=exc.status, headers=exc.headers())


def api_view(method: str) -> Callable[[View], View]:
    """An API endpoint: *method* only, token authenticated (``request.api_token``), errors as JSON."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method != method:
                    raise ApiError(405, "method_not_allowed", f"Use {method} for this endpoint.")
                token = await api_authenticate(request)
                return await view(request, token, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc)

        return wrapper

    return decorate


def json_body(request: HttpRequest) -> Any:
    too_large = ApiError(413, "too_large", f"The request body is limited to {MAX_BODY_BYTES // 1024} KiB.")
    try:
        body = request.body
    except RequestDataTooBig:  # over Django's DATA_UPLOAD_MAX_MEMORY_SIZE, refused before our check
        raise too_large from None
    if len(body) > MAX_BODY_BYTES:
        raise too_large
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise invalid("The request body must be JSON.") from None


@api_view("POST")
async def chat_completions(request: HttpRequest, token: ApiToken) -> HttpResponseBase:
    refuse_inner_calls(request)
    body = parse_body(ChatCompletionsBody, json_body(request))
    run = await completions.completion_start(user=token.user, body=body)
    if body.stream:
        return StreamingHttpResponse(
            completions.completion_stream(run), content_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        return JsonResponse(await completions.completion_json(run))
    except ApiError as exc:
        return error_response(exc)


@api_view("POST")
async def create_response(request: HttpRequest, token: ApiToken) -> HttpResponseBase:
    refuse_inner_calls(request)
    body = parse_body(ResponsesBody, json_body(request))
    run = await responses.response_start(user=token.user, body=body)
    if body.stream:
        return StreamingHttpResponse(
            responses.response_stream(run), content_type="text/event-stream", headers=SSE_HEADERS
        )
    try:
        return JsonResponse(await responses.response_json(run))
    except ApiError as exc:
        return error_response(exc)


@api_view("GET")
async def models(request: HttpRequest, token: ApiToken) -> HttpResponseBase:
    return JsonResponse(await in_db_thread(api_models_for_user, user=token.user))


@csrf_exempt
def openapi_json(request: HttpRequest) -> JsonResponse:
    """``GET /api/v1/openapi.json``: the API's OpenAPI 3.1 description, public like the docs."""
    from chat.api.openapi import openapi_document  # kept with its one user, at the end of the file

    if request.method not in ("GET", "HEAD"):
        return error_response(ApiError(405, "method_not_allowed", "Use GET for this endpoint."))
    return JsonResponse(openapi_document())
