"""What providers send back, read: HTTP statuses as error kinds, Retry-After, usage, citations.

Plain functions over OpenAI-compatible (OpenRouter-shaped) response fields; ``chat.fusion.client``
uses them and re-exports the public ones.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from chat.fusion.types import Usage

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_STATUS_KINDS = {
    400: "bad_request",
    401: "invalid_key",
    402: "insufficient_credits",
    403: "moderation",
    404: "model_not_found",
    408: "timeout",
    429: "rate_limited",
}


def error_kind(status: int | None, message: str = "") -> str:
    """The ErrorKind for an HTTP status (or in-stream error code) and the provider's text."""
    if "not a valid model id" in message.lower():
        return "model_not_found"  # OpenRouter sends this with 400 as well as 404
    if status in _STATUS_KINDS:
        return _STATUS_KINDS[status]
    if status is not None and 400 <= status < 500:
        return "bad_request"
    return "upstream_error"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_usage(raw: dict[str, Any]) -> Usage:
    """types.Usage from an OpenAI/OpenRouter ``usage`` object (missing fields count as zero)."""
    details = raw.get("completion_tokens_details") or {}
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    cost = raw.get("cost")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=_int(details.get("reasoning_tokens") if isinstance(details, dict) else 0),
        total_tokens=_int(raw.get("total_tokens")) or prompt + completion,
        cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )


def parse_citations(raw: Any) -> list[dict[str, str]]:
    """``url_citation`` annotations (OpenRouter nests them: ``{"type": "url_citation",
    "url_citation": {url, title, content}}``; the Responses shape is flat) → [{url, title, content}]."""
    citations: list[dict[str, str]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or item.get("type") not in (None, "url_citation"):
            continue
        nested = item.get("url_citation")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else item
        url = inner.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            citations.append(
                {
                    "url": url,
                    "title": str(inner.get("title") or "")[:300],
                    "content": str(inner.get("content") or "")[:500],
                }
            )
    return citations


def parse_server_tool_use(raw: dict[str, Any]) -> dict[str, int] | None:
    """``usage.server_tool_use`` (or ``server_tool_use_details``) as {name: count}, or None."""
    value = raw.get("server_tool_use") or raw.get("server_tool_use_details")
    if not isinstance(value, dict):
        return None
    counts = {str(k): _int(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return counts or None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
