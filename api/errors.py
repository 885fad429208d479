"""The one error envelope, ``{"error": {"code", "message", "details"}}``, for every error the API returns."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import JobsError

log = structlog.get_logger(__name__)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}


class Unauthorized(JobsError):
    code, status = "unauthorized", 401
    headers = {"WWW-Authenticate": 'Bearer realm="varedit"'}


class RateLimited(JobsError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_s: int, details: Any = None) -> None:
        super().__init__(message, details)
        self.headers = {"Retry-After": str(retry_after_s)}


class TooManyInFlight(RateLimited):
    code = "too_many_jobs_in_flight"


class InvalidRequest(JobsError):
    code, status = "invalid_request", 422


class ImageUrlNotAllowed(JobsError):
    code, status = "image_url_not_allowed", 422


class ImageUrlFetchFailed(JobsError):
    code, status = "image_url_fetch_failed", 422


class WebhookUrlNotAllowed(JobsError):
    code, status = "webhook_url_not_allowed", 422


class WebhooksNotConfigured(JobsError):
    code, status = "webhooks_not_configured", 422


class InvalidImage(JobsError):
    code, status = "invalid_image", 422


class UnsupportedImageFormat(JobsError):
    code, status = "unsupported_image_format", 415


class UnsupportedMediaType(JobsError):
    code, status = "unsupported_media_type", 415


class PayloadTooLarge(JobsError):
    code, status = "payload_too_large", 413


class ResultNotReady(JobsError):
    code, status = "result_not_ready", 409


class ResultExpired(JobsError):
    code, status = "result_expired", 410


class NotReady(JobsError):
    code, status = "not_ready", 503


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _jobs_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobsError)
    return error_response(exc.status, exc.code, exc.message, exc.details, getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
    return error_response(422, "invalid_request", "the request is not valid", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobsError, _jobs_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
