"""The one error envelope, ``{"error": {"code", "message", "details"}}``, for every error the API returns.

Domain errors (``jobs/errors.py``) carry a code and a message; `DOMAIN_STATUS` is the one table that
gives each its HTTP status. Errors that only exist at the HTTP edge are `ApiError` subclasses here.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from jobs import errors as domain

log = structlog.get_logger(__name__)

DOMAIN_STATUS: dict[type[domain.JobsError], int] = {
    domain.JobNotFound: 404,
    domain.ApiKeyNotFound: 404,
    domain.IdempotencyConflict: 422,
    domain.IdempotencyInFlight: 409,
    domain.NoWebhook: 409,
    domain.JobNotTerminal: 409,
    domain.StorageError: 503,
    domain.ModelNotReady: 503,
    domain.InFlightLimit: 429,
}
RETRY_AFTER_S: dict[type[domain.JobsError], int] = {
    domain.ModelNotReady: 10,
    domain.StorageError: 5,
    domain.InFlightLimit: 5,  # a guess at when one of the caller's jobs will have finished
}
OUTAGE_RETRY_AFTER_S = 5
# Raised when the database cannot be reached or a pooled connection died; other database errors are bugs.
DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
)

ROUTE_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")  # what a 405's `Allow` may name, with HEAD

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


class ApiError(Exception):
    """An error of the HTTP edge: a snake_case code, its status, a message, details and headers."""

    code = "internal_error"
    status = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Unauthorized(ApiError):
    code, status = "unauthorized", 401
    headers = {"WWW-Authenticate": 'Bearer realm="varedit"'}


class RateLimited(ApiError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_s: int, details: Any = None) -> None:
        super().__init__(message, details)
        self.headers = {"Retry-After": str(retry_after_s)}


class InvalidRequest(ApiError):
    code, status = "invalid_request", 422


class ImageUrlNotAllowed(ApiError):
    code, status = "image_url_not_allowed", 422


class ImageUrlFetchFailed(ApiError):
    code, status = "image_url_fetch_failed", 422


class WebhookUrlNotAllowed(ApiError):
    code, status = "webhook_url_not_allowed", 422


class WebhooksNotConfigured(ApiError):
    code, status = "webhooks_not_configured", 422


class InvalidImage(ApiError):
    code, status = "invalid_image", 422


class UnsupportedImageFormat(ApiError):
    code, status = "unsupported_image_format", 415


class UnsupportedMediaType(ApiError):
    code, status = "unsupported_media_type", 415


class PayloadTooLarge(ApiError):
    code, status = "payload_too_large", 413


class RequestTimeout(ApiError):
    code, status = "request_timeout", 408
    headers = {"Connection": "close"}  # the rest of the body may still come: the connection is done


class PriorityNotAllowed(ApiError):
    code, status = "priority_not_allowed", 403


class RedeliveryLimit(RateLimited):
    code = "redelivery_limit"


class NotFound(ApiError):
    code, status = "not_found", 404


class PreviewNotFound(ApiError):
    code, status = "preview_not_found", 404


class ResultNotReady(ApiError):
    code, status = "result_not_ready", 409


class ResultExpired(ApiError):
    code, status = "result_expired", 410


class ImageTooLarge(ApiError):
    code, status = "image_too_large", 422


class ImageAspectRatio(ApiError):
    code, status = "image_aspect_ratio", 422


class TooManyFetches(RateLimited):
    code = "too_many_fetches"


class TooManyWaits(RateLimited):
    code = "too_many_waits"


def json_safe(value: Any) -> Any:
    """`value` as strict JSON can carry it: non-finite floats (an echoed NaN or 1e999) and anything
    without a JSON form become strings, so rendering an error can never fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):  # a lone surrogate ("\ud800" in JSON) has no UTF-8 form: escaped
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, int | bool):
        return value
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    try:
        return json_safe(jsonable_encoder(value))
    except (TypeError, ValueError, RecursionError):
        return str(value)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": json_safe(message), "details": json_safe(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.JobsError)
    kind = type(exc)
    retry_after = RETRY_AFTER_S.get(kind)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    if isinstance(exc, domain.StorageError):  # its message names the backend: for the log only
        log.warning("storage_unavailable", error=exc.message)
        return error_response(503, exc.code, "object storage is unavailable; retry later", headers=headers)
    return error_response(DOMAIN_STATUS.get(kind, 500), exc.code, exc.message, exc.details, headers)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (restart, failover, pool exhausted): a transient outage the
    client should retry, not a bug."""
    log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}"[:500])
    return error_response(
        503,
        "service_unavailable",
        "the database is unavailable; retry later",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
    return error_response(422, "invalid_request", "the request is not valid", details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), **_allow(request)}
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def _allow(request: Request) -> dict[str, str]:
    """`Allow` for a 405: every method some route answers at this path, found by asking the routes
    (Starlette names those of the one route it matched, and FastAPI makes a route per method). A route
    that matches any method (a mount) says nothing: its app answers for itself."""

    def answers(route: BaseRoute, method: str) -> bool:
        return route.matches({**request.scope, "method": method})[0] is Match.FULL

    routes = [route for route in request.app.routes if not answers(route, "")]
    allowed = {method for method in ROUTE_METHODS if any(answers(route, method) for route in routes)}
    if "GET" in allowed:
        allowed.add("HEAD")  # answered as GET (`HeadAsGetMiddleware`)
    return {"Allow": ", ".join(sorted(allowed))} if allowed else {}


async def _client_disconnected(_: Request, exc: Exception) -> JSONResponse:
    """The client hung up before its body ended: nobody reads this answer, and it is the client's doing,
    not a server error (the error log and the 5xx rate are for those)."""
    log.info("client_disconnected")
    return error_response(400, "client_disconnected", "the connection closed before the request body ended")


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(domain.JobsError, _domain_error)
    for outage in DATABASE_OUTAGES:
        app.add_exception_handler(outage, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unhandled)
