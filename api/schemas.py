"""Request and response shapes of the HTTP API, built from job rows explicitly (tables live in jobs/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.models import Job, JobStatus

WebhookEvent = Literal["job.running", "job.succeeded", "job.failed", "job.canceled", "job.expired"]


class EditCreate(BaseModel):
    """The fields of ``POST /v1/edits`` (JSON body, or multipart form fields next to the ``image`` file)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "instruction": "make the sky purple",
                    "image_base64": "iVBORw0KGgoAAAANSUhEUgAA...",
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
    image_base64: str | None = Field(None, description="The source image (PNG, JPEG or WebP), base64.")
    image_url: str | None = Field(None, description="Not supported yet; send the image inline.")
    model: str | None = Field(None, description="A model from GET /v1/models; default: the first one.")
    resolution: int | None = Field(None, description="Output side in pixels; default: the model's first.")
    seed: int | None = Field(None, ge=0, description="Default: a random seed, reported in params.seed.")
    cfg: float | None = Field(None, description="Classifier-free guidance scale.")
    tau: float | None = Field(None, gt=0, description="Sampling temperature.")
    priority: int = Field(0, ge=-10, le=10, description="Higher runs first among queued jobs.")
    start_timeout_s: int | None = Field(None, gt=0, description="Expire if not started within this.")
    webhook_url: str | None = Field(None, max_length=2048, pattern=r"^https?://")
    webhook_events: list[WebhookEvent] | None = None


class EditParams(BaseModel):
    model: str
    resolution: int
    seed: int
    cfg: float
    tau: float


class Progress(BaseModel):
    scale: int
    scales: int


class JobErrorPublic(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    url: str
    width: int
    height: int
    content_type: str
    bytes: int


class JobMetrics(BaseModel):
    queue_ms: int | None
    run_ms: int | None


class JobUrls(BaseModel):
    self: str
    cancel: str
    result: str
    events: str


class WebhookPublic(BaseModel):
    url: str
    events: list[str] | None


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else int((end - start).total_seconds() * 1000)


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


class JobPublic(BaseModel):
    """A job as clients see it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11",
                    "status": "running",
                    "instruction": "make the sky purple",
                    "params": {"model": "shapes-64", "resolution": 64, "seed": 42, "cfg": 3.0, "tau": 0.1},
                    "priority": 0,
                    "created_at": "2026-11-27T10:00:00Z",
                    "started_at": "2026-11-27T10:00:01Z",
                    "finished_at": None,
                    "attempts": 1,
                    "cancel_requested": False,
                    "progress": {"scale": 3, "scales": 6},
                    "error": None,
                    "result": None,
                    "metrics": {"queue_ms": 1000, "run_ms": None},
                    "urls": {
                        "self": "/v1/jobs/0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11",
                        "cancel": "/v1/jobs/0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11/cancel",
                        "result": "/v1/jobs/0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11/result",
                        "events": "/v1/jobs/0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11/events",
                    },
                    "webhook": None,
                }
            ]
        }
    )

    id: str
    status: JobStatus
    instruction: str
    params: EditParams
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    cancel_requested: bool
    progress: Progress | None
    error: JobErrorPublic | None
    result: JobResult | None
    metrics: JobMetrics
    urls: JobUrls
    webhook: WebhookPublic | None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        path = job_path(job.id)
        result = None
        if job.status is JobStatus.SUCCEEDED and job.result_content_type is not None:
            result = JobResult(
                url=f"{path}/result",
                width=job.result_width or 0,
                height=job.result_height or 0,
                content_type=job.result_content_type,
                bytes=job.result_bytes or 0,
            )
        return cls(
            id=job.id,
            status=job.status,
            instruction=job.instruction,
            params=EditParams(
                model=job.model, resolution=job.resolution, seed=job.seed, cfg=job.cfg, tau=job.tau
            ),
            priority=job.priority,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            progress=Progress(scale=job.progress[0], scales=job.progress[1]) if job.progress else None,
            error=JobErrorPublic(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            result=result,
            metrics=JobMetrics(
                queue_ms=_ms(job.created_at, job.started_at), run_ms=_ms(job.started_at, job.finished_at)
            ),
            urls=JobUrls(
                self=path, cancel=f"{path}/cancel", result=f"{path}/result", events=f"{path}/events"
            ),
            webhook=WebhookPublic(url=job.webhook_url, events=job.webhook_events)
            if job.webhook_url
            else None,
        )


def render_job(job: Job) -> dict[str, Any]:
    """The job JSON body (also what is stored for idempotent replays)."""
    return JobPublic.from_job(job).model_dump(mode="json")


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null at the end."
    )


class ModelInfo(BaseModel):
    id: str
    resolutions: list[int]
    default_resolution: int
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
