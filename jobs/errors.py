"""Domain errors; the API turns each into the error envelope with its ``code`` and ``status``."""

from __future__ import annotations

from typing import Any


class JobsError(Exception):
    """Base of the domain errors: a snake_case code, an HTTP status hint and optional details."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class JobNotFound(JobsError):
    code, status = "job_not_found", 404


class InvalidTransition(JobsError):
    code, status = "invalid_transition", 409


class IdempotencyConflict(JobsError):
    """The same Idempotency-Key was used with a different request body."""

    code, status = "idempotency_key_reused", 422


class IdempotencyInFlight(JobsError):
    """The first request with this Idempotency-Key has not finished yet; retry later."""

    code, status = "idempotency_request_in_flight", 409


class StorageError(JobsError):
    code, status = "storage_unavailable", 503


class NoWebhook(JobsError):
    code, status = "no_webhook", 409


class JobNotTerminal(JobsError):
    code, status = "job_not_terminal", 409


class ApiKeyNotFound(JobsError):
    code, status = "api_key_not_found", 404
