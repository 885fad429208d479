"""Request and response shapes of the HTTP API, built from job rows explicitly (tables live in jobs/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.models import DeliveryStatus
from jobs.netguard import lower_scheme
from jobs.views import JobPublic, job_path, render_job

__all__ = ["EditCreate", "JobList", "JobPublic", "ModelList", "WebhookDeliveryList", "job_path", "render_job"]

# An 8x8 sky-blue PNG: a documented request that can be sent as it is.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mOM6nnGgA0wMeAAg1MCAGpTAdzURJmaAAAAAElFTkSuQmCC"
)
WebhookEvent = Literal["job.running", "job.succeeded", "job.failed", "job.canceled", "job.expired"]


class EditCreate(BaseModel):
    """The fields of ``POST /v1/edits`` (JSON body, or multipart form fields next to the ``image`` file)."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,  # NaN and infinities (also 1e999, "Infinity") are refused with 422
        json_schema_extra={
            "examples": [
                {
                    "instruction": "make the sky purple",
                    "negative_instruction": "blurry, low quality",
                    "image_base64": EXAMPLE_PNG_BASE64,
                    "model": "shapes-64",
                    "resolution": 64,
                    "seed": 42,
                    "cfg": 3.0,
                    "tau": 0.1,
                }
            ]
        },
    )

    instruction: str = Field(description="What to change in the image.")
    negative_instruction: str | None = Field(
        None,
        description="What guidance steers away from, e.g. `blurry, low quality`: its text replaces the "
        "model's learned null text in classifier-free guidance (no effect with cfg 1). At most as long "
        "as `instruction` may be; default: none.",
    )
    image_base64: str | None = Field(None, description="The source image (PNG, JPEG or WebP), base64.")
    image_url: str | None = Field(
        None, max_length=2048, description="Or: the source image's http(s) URL (public addresses only)."
    )
    model: str | None = Field(None, description="A model from GET /v1/models; default: the first one.")
    resolution: int | None = Field(None, description="Output side in pixels; default: the model's first.")
    seed: int | None = Field(None, ge=0, description="Default: a random seed, reported in params.seed.")
    cfg: float | None = Field(None, description="Classifier-free guidance scale; default: the model's.")
    tau: float | None = Field(None, gt=0, description="Sampling temperature; default: the model's.")
    priority: int = Field(
        0,
        ge=-10,
        le=10,
        description="Higher runs first among the model's queued jobs; equal ones run oldest first.",
    )
    start_timeout_s: int | None = Field(None, gt=0, description="Expire if not started within this.")
    webhook_url: str | None = Field(None, max_length=2048, pattern=r"^https?://")
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="The events to send to webhook_url; default: all of them."
    )
    previews: bool | None = Field(
        None,
        description="Store a small preview after every scale: SSE `preview` events and "
        "GET /v1/jobs/{id}/previews/{k}. Default false.",
    )

    @field_validator("resolution", "seed", "cfg", "tau", "priority", "start_timeout_s", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        """JSON `true` is no number, though lax validation would read it as 1."""
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("image_url", "webhook_url", mode="before")
    @classmethod
    def _lower_scheme(cls, url: object) -> object:
        """`HTTP://` is `http://` (RFC 3986 3.1): matched, checked and stored in lower case."""
        return lower_scheme(url) if isinstance(url, str) else url

    @model_validator(mode="after")
    def _events_need_a_url(self) -> EditCreate:
        if self.webhook_events and not self.webhook_url:  # else they would be ignored without a word
            raise ValueError("webhook_events needs a webhook_url to send them to")
        return self


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null at the end."
    )


class WebhookDeliveryPublic(BaseModel):
    """One webhook message and what its attempts got (the secret and the payload are not shown)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    message_id: str = Field(description="The `webhook-id` header: the same for retries and redeliveries.")
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryPublic]


class ModelExample(BaseModel):
    """An edit the model does well, to try with one click."""

    instruction: str
    image_url: str = Field(description="The source image, from this server.")


class ModelInfo(BaseModel):
    id: str
    resolutions: list[int] = Field(description="Square output sides it serves; empty until a worker reports")
    default_resolution: int | None
    sampling: dict[str, int | float] | None = Field(
        description="Recommended sampling settings, used for parameters a job leaves out (cfg, tau, ...)",
        examples=[{"cfg": 2.0, "tau": 0.3, "top_k": 900, "top_p": 0.97}],
    )
    description: str = Field("", description="What the model understands, for people trying it.")
    examples: list[ModelExample] = Field(
        default_factory=list, description="Edits it does well; none for a release."
    )
    ready_workers: int
    queue_depth: int
    oldest_queued_age_s: float


class ModelList(BaseModel):
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["job_not_found"])
    message: str
    details: object | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error envelope."""
    return {status: {"model": ErrorBody} for status in statuses}
