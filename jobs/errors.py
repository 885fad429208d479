"""Domain errors: a machine-readable ``code`` and a message; they know nothing of HTTP.

The API maps each class to a status code in one table (``api/errors.py``).
"""

from __future__ import annotations

from typing import Any


class JobsError(Exception):
    """Base of the domain errors: a snake_case code, a message and optional details."""

    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class JobNotFound(JobsError):
    code = "job_not_found"


class IdempotencyConflict(JobsError):
    """The same Idempotency-Key was used with a different request body."""

    code = "idempotency_key_reused"


class IdempotencyInFlight(JobsError):
    """The first request with this Idempotency-Key has not finished yet; retry later."""

    code = "idempotency_request_in_flight"


class StorageError(JobsError):
    code = "storage_unavailable"


class NoWebhook(JobsError):
    code = "no_webhook"


class JobNotTerminal(JobsError):
    code = "job_not_terminal"


class ApiKeyNotFound(JobsError):
    code = "api_key_not_found"


class ModelNotReady(JobsError):
    """No worker has announced the model yet, so its resolutions and defaults are unknown."""

    code = "model_not_ready"


class InFlightLimit(JobsError):
    """The owner already has as many queued and running jobs as it may."""

    code = "too_many_jobs_in_flight"
