"""The client's exceptions: one class per kind of answer a caller handles differently.

Every error answer of the API has the body ``{"error": {"code", "message", "details"}}``; `from_response`
turns it into the matching `ApiError` subclass, so callers catch ``NotFound`` or ``RateLimited`` instead
of comparing status numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from varedit_client.types import JobPublic


class VareditError(Exception):
    """Base of everything this client raises on purpose."""


class ConnectionFailed(VareditError):
    """The API could not be reached (refused, reset, timed out) after the allowed attempts; names the URL
    because a wrong URL is the usual cause. ``unanswered`` when it was reached but did not answer in time,
    where the URL is not the problem."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.unanswered = isinstance(cause, httpx.ReadTimeout | httpx.WriteTimeout)
        what = "the API at {} did not answer in time" if self.unanswered else "cannot reach the API at {}"
        super().__init__(f"{what.format(url)} ({type(cause).__name__}: {str(cause) or 'no detail'})")
        self.url = url
        self.cause = cause


class ApiError(VareditError):
    """An error answer of the API: HTTP ``status``, snake_case ``code``, ``message`` and ``details``."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        details: Any = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        where = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{where}{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or httpx.Headers()

    @property
    def body(self) -> dict[str, Any]:
        """The error envelope as the API sent it (kept for callers of the first client)."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidRequest(ApiError):
    """400, 413, 415, 422: the request itself is wrong (fix it; retrying cannot help)."""


class Unauthorized(ApiError):
    """401: no API key, or one the server does not know."""


class Forbidden(ApiError):
    """403: the key may not do this (e.g. a priority above its right)."""


class NotFound(ApiError):
    """404: no such job for this caller."""


class Conflict(ApiError):
    """409: not possible in the job's current state (e.g. the result before the job succeeded)."""


class Gone(ApiError):
    """410: the result was deleted after its retention period."""


class RateLimited(ApiError):
    """429: too many requests or jobs in flight; ``retry_after`` seconds is when to try again."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_s(self.headers)


class ServiceUnavailable(ApiError):
    """503: a transient outage (database, storage, a model no worker has loaded yet)."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_s(self.headers)


class ServerError(ApiError):
    """Any other 5xx: a bug or an outage in front of the API."""


class JobFailed(ApiError):
    """The job ended without a result: failed, canceled or expired. ``job`` is the job as it ended."""

    def __init__(self, job: JobPublic) -> None:
        error = job.error
        code = error.code if error is not None else job.status.value
        message = error.message if error is not None else f"the job was {job.status.value}"
        super().__init__(None, code, f"job {job.id} {job.status.value}: {message}", {"status": job.status})
        self.job = job


class WebhookVerificationFailed(VareditError):
    """A webhook delivery whose signature, headers or timestamp do not check out: do not trust its body."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


def from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error answer (its body must have been read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict):
        code = str(envelope.get("code") or "error")
        message = str(envelope.get("message") or response.reason_phrase)
        details = envelope.get("details")
    else:  # not the API's envelope: a proxy's page, an S3 error document
        code, message, details = "http_error", response.reason_phrase or "error", response.text[:500] or None
    cls = error_class(response.status_code)
    return cls(response.status_code, code, message, details, response.headers)


def retry_after_s(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (the API sends whole seconds; an HTTP date is not used by it)."""
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
