"""The API description, finished so that a client can be generated from it.

FastAPI derives most of the document from the routes. This module adds what it cannot know:

- operation ids from the route functions' names (`createEdit`, `getJob`, ...), not `create_edit_v1_...`;
- the JSON body of ``POST /v1/edits`` (the route reads its body itself, so `EditCreate` is registered);
- the real error envelope on every error answer, with an example, instead of FastAPI's ``{"detail"}``;
  401 on every ``/v1`` route (API keys), 422 and 503 wherever a request is read or the database asked;
- the SSE events of ``GET /v1/jobs/{id}/events`` and the ``Location`` of the result's 307;
- the webhook messages a job's ``webhook_url`` receives (the OpenAPI 3.1 ``webhooks`` section).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from api.body_limit import BODY_IDLE_TIMEOUT_S
from api.schemas import EditCreate, ErrorBody
from varedit_client.types import JobPublic

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERROR_EXAMPLES = {
    401: ("unauthorized", "send the API key as `Authorization: Bearer <key>`"),
    403: ("forbidden", "not for this caller"),
    404: ("job_not_found", "no job 0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11"),
    408: ("request_timeout", f"no byte of the request body arrived for {BODY_IDLE_TIMEOUT_S:g} s"),
    409: ("conflict", "the request conflicts with the job's state"),
    410: ("result_expired", "the result was deleted after its time to live"),
    413: ("payload_too_large", "the request is larger than 27984554 bytes"),
    415: ("unsupported_media_type", "send multipart/form-data or application/json"),
    422: ("invalid_request", "the request is not valid"),
    429: ("rate_limited", "more than 120 per 1 minute write requests"),
    503: ("service_unavailable", "the database is unavailable; retry later"),
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before retrying"}
}


class WebhookMessage(BaseModel):
    """A webhook message (Standard Webhooks 1.0): signed with `webhook-id`, `webhook-timestamp` and
    `webhook-signature` headers; deduplicate on `webhook-id`."""

    type: str = Field(examples=["job.succeeded"])
    timestamp: str = Field(description="When the event happened (RFC 3339, UTC).")
    data: JobPublic = Field(description="The job as it was at that moment.")


class StatusEvent(BaseModel):
    """SSE `event: status` (also sent once when the stream opens): the job's status changed."""

    id: str
    status: str
    scale: int | None
    scales: int | None


WEBHOOK_EVENTS = ["job.running", "job.succeeded", "job.failed", "job.canceled", "job.expired"]


def operation_id(route: APIRoute) -> str:
    """`create_edit` -> `createEdit`: ids a generated client can use as method names."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _error_response(status: int) -> dict[str, Any]:
    code, message = ERROR_EXAMPLES[status]
    answer: dict[str, Any] = {
        "description": message,
        "content": {
            "application/json": {
                "schema": ERROR_REF,
                "example": {"error": {"code": code, "message": message, "details": None}},
            }
        },
    }
    if status in (429, 503):
        answer["headers"] = RETRY_AFTER
    return answer


def _complete_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    statuses = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
    if path.startswith("/v1/"):
        statuses |= {401, 503}
        if method in ("post", "delete") or "{" in path or operation.get("parameters"):
            statuses.add(422)
    for status in sorted(statuses):
        description = responses.get(str(status), {}).get("description")
        responses[str(status)] = _error_response(status)
        if description and description != "Validation Error":
            responses[str(status)]["description"] = description


def _document_streams(paths: dict[str, Any]) -> None:
    events = paths.get("/v1/jobs/{job_id}/events", {}).get("get")
    if events is not None:
        events["responses"]["200"] = {
            "description": "Server-Sent Events until the job is terminal: `status` events "
            '(StatusEvent) and `progress` events (`{"scale": k, "scales": K}`); a comment line '
            "every few seconds keeps the connection open.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": (
                        'event: status\ndata: {"id": "...", "status": "running", '
                        '"scale": null, "scales": null}\n\n'
                        'event: progress\ndata: {"scale": 2, "scales": 5}\n\n'
                    ),
                }
            },
        }
    result = paths.get("/v1/jobs/{job_id}/result", {}).get("get")
    if result is not None and "307" in result["responses"]:
        result["responses"]["307"]["headers"] = {
            "Location": {"schema": {"type": "string"}, "description": "a short-lived presigned URL"}
        }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The finished document (cached on the app, as FastAPI does)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        webhooks=app.webhooks.routes,
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (EditCreate, ErrorBody, StatusEvent):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in definition.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas[model.__name__] = definition
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_errors(path, method, operation)
    _document_streams(spec["paths"])
    for operations in spec.get("webhooks", {}).values():
        for operation in operations.values():  # what the receiver answers is the receiver's own
            operation["responses"] = {"2XX": {"description": "settles the message"}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = spec
    return spec


def describe_webhooks(app: FastAPI) -> None:
    """Each event a job's webhook_url receives, as an OpenAPI 3.1 webhook with its payload."""
    for event in WEBHOOK_EVENTS:

        def receive(message: WebhookMessage) -> None:
            """Answer 2xx to settle the message; 410 stops this job's messages to the URL."""

        name = event.replace(".", "_")
        app.webhooks.post(event, name=name, summary=f"`{event}` message", status_code=204)(receive)
