"""Exceptions raised by the SDK: one base class, the server's JSON errors mapped by status."""

from __future__ import annotations

import email.utils
import time

import httpx


class MetaNetError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(MetaNetError):
    """The server could not be reached, or the connection failed (after any retries)."""


class APIError(MetaNetError):
    """The server answered with an error: `{"error": {"code": ..., "message": ...}}`."""

    def __init__(self, message: str, *, code: str, status_code: int, response: httpx.Response) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.response = response

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked the client to wait before sending the call again (`Retry-After`)."""
        return retry_after(self.response)


class InvalidRequestError(APIError):
    """400 (bad image, label or task id) or 422 (request does not match the schema)."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: unknown task (or label); tasks of other tenants are invisible, so they are unknown too."""


class PayloadTooLargeError(APIError):
    """413: request body, image size or task size over the server's limits."""


class RateLimitError(APIError):
    """429: the tenant is over a rate limit (`rate_limited`) or its share of the server's queue
    (`over_share`); `retry_after` says when to come back."""


class QuotaExceededError(APIError):
    """507: the tenant's storage quota (`quota_exceeded`: tasks, examples or stored bytes, named in the
    message) or a task too large for the server's memory (`task_too_large`); nothing was written."""


class ServerError(APIError):
    """5xx: the server failed; idempotent calls were retried before this was raised."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    507: QuotaExceededError,
}


def retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (given as seconds or as an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from_response(response: httpx.Response) -> APIError:
    """Build the exception for an error response, tolerating bodies that are not the server's format."""
    status = response.status_code
    code, message = f"http_{status}", response.text or response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
        elif "detail" in body:
            message = str(body["detail"])
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(message, code=code, status_code=status, response=response)
