"""The public JSON view of a job: what the API answers and what webhooks carry (one shape for both,
defined in `varedit_client/types.py`, which the client parses answers with).

Lives in the shared domain because the workers render it too: a webhook's payload is the job as it was
at the moment of the event, snapshotted in the same transaction as the state change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobs.models import Job, JobStatus
from varedit_client.types import (
    EditParams,
    JobErrorPublic,
    JobMetrics,
    JobPreviewEvent,
    JobPublic,
    JobResult,
    JobUrls,
    Progress,
    WebhookPublic,
)


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else int((end - start).total_seconds() * 1000)


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def preview_path(job_id: str, scale: int) -> str:
    return f"{job_path(job_id)}/previews/{scale}"


def preview_events(job: Job, after: int) -> list[JobPreviewEvent]:
    """The previews stored since scale ``after``, in order (a job that records previews knows K)."""
    if not job.previews or job.preview_scale is None or job.progress_scales is None:
        return []
    return [
        JobPreviewEvent(id=job.id, scale=k, scales=job.progress_scales, url=preview_path(job.id, k))
        for k in range(after + 1, job.preview_scale + 1)
    ]


def public_job(job: Job) -> JobPublic:
    """A job row as clients see it."""
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
    return JobPublic(
        id=job.id,
        status=job.status,
        instruction=job.instruction,
        params=EditParams(
            model=job.model,
            resolution=job.resolution,
            seed=job.seed,
            cfg=job.cfg,
            tau=job.tau,
            previews=job.previews,
            negative_instruction=job.negative_instruction,
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
        urls=JobUrls(self=path, cancel=f"{path}/cancel", result=f"{path}/result", events=f"{path}/events"),
        webhook=WebhookPublic(url=job.webhook_url, events=job.webhook_events) if job.webhook_url else None,
        deleted_at=job.purged_at,
    )


def render_job(job: Job) -> dict[str, Any]:
    """The job JSON body (also what is stored for idempotent replays)."""
    return public_job(job).model_dump(mode="json")
