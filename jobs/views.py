"""The public JSON view of a job: what the API answers and what webhooks carry (one shape for both).

Lives in the shared domain because the workers render it too: a webhook's payload is the job as it was
at the moment of the event, snapshotted in the same transaction as the state change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from jobs.models import Job, JobStatus


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
