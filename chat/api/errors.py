"""API errors in OpenRouter's shape: ``{"error": {"code": <HTTP status>, "message", "metadata"}}``.

``metadata.reason`` is our machine-readable word (``invalid_request``, ``spend_limit``, …), and
a validation error names its field in ``metadata.field`` (dotted: ``messages.2.role``).
"""

from __future__ import annotations

from typing import Any

from chat.runs.checks import RunError

# What each RunError code of the run service means over HTTP.
_RUN_ERROR_STATUS = {
    "invalid": 400,
    "no_key": 400,
    "not_found": 404,
    "unknown_model": 404,
    "spend_limit": 402,
    "limit": 429,
    "busy": 429,
}
# Seconds a client is told to wait when its concurrent runs are all taken (a run takes that long).
CONCURRENCY_RETRY_AFTER_S = 10


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.metadata: dict[str, Any] = {"reason": reason, **metadata}
        if field is not None:
            self.metadata["field"] = field
        if retry_after is not None:
            self.metadata["retry_after"] = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "metadata": self.metadata}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after + 0.49)))}


def invalid(message: str, *, field: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, field=field)


def from_run_error(exc: RunError, **metadata: Any) -> ApiError:
    status = _RUN_ERROR_STATUS.get(exc.code, 400)
    retry = CONCURRENCY_RETRY_AFTER_S if status == 429 else None
    return ApiError(status, exc.code, exc.message, retry_after=retry, **metadata)
