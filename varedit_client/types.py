"""The API's public shapes, shared: the API renders jobs with them (`jobs/views.py`) and the client parses
answers into them, so neither side types a job by hand. Plain pydantic; no platform imports."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})


class EditParams(BaseModel):
    model: str
    resolution: int
    seed: int
    cfg: float
    tau: float
    previews: bool = False
    negative_instruction: str = Field(
        "", description="What guidance steered away from; empty: the model's learned null text."
    )


class Progress(BaseModel):
    scale: int
    scales: int


class JobPreviewEvent(BaseModel):
    """SSE ``preview``: the preview image of scale ``scale`` of ``scales`` is at ``url`` (a small PNG; the
    last one is the result at preview size). Sent once per scale, in order, for jobs with previews."""

    id: str
    scale: int
    scales: int
    url: str


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
    deleted_at: datetime | None = Field(
        None,
        description="When the job's images (source, result, previews) were deleted, by DELETE "
        "/v1/jobs/{id} or at the end of the result retention period; its result answers 410 from then on.",
    )
    queue_position: int | None = Field(
        None,
        description="On GET /v1/jobs/{id} while queued: how many queued jobs of its model were accepted "
        "before it (the order workers receive them; a republished job or a batch can change it).",
    )


class JobStatusEvent(BaseModel):
    """SSE ``status`` (``GET /v1/jobs/{id}/events``): the job after a state change; a stream's first event
    is the job as it was when the stream opened."""

    type: Literal["status"] = "status"
    job: JobPublic


class JobProgressEvent(BaseModel):
    """SSE ``progress``: a running job finished scale ``scale`` of ``scales``."""

    type: Literal["progress"] = "progress"
    id: str
    status: JobStatus
    scale: int
    scales: int


JobEvent = JobStatusEvent | JobProgressEvent | JobPreviewEvent


class WebhookEvent(BaseModel):
    """A webhook delivery's body: ``job.running``, ``job.succeeded``, ... with the job as it was then."""

    type: str
    timestamp: datetime
    data: JobPublic
