"""Jobs: read (with ``Prefer: wait``), list, cancel, fetch the result and previews, stream events."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse

from api.deps import (
    NotifierDep,
    OwnedJobDep,
    PrincipalDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    WatcherDep,
)
from api.errors import InvalidRequest, PreviewNotFound, ResultExpired, ResultNotReady
from api.limits import WriterDep
from api.schemas import JobList, JobPublic, error_responses, render_job
from api.waiting import changes, held_until_done, preferred_wait_s, take_wait
from api.watch import JobWatcher
from jobs import queries, service
from jobs.models import Job, JobStatus
from jobs.service import cancel_job
from jobs.storage import preview_key
from jobs.views import preview_events

router = APIRouter(prefix="/v1", tags=["jobs"])

SSE_PING_S = 15  # keeps proxies from closing an idle event stream


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=error_responses(404, 429))
async def get_job(
    job: OwnedJobDep,
    principal: PrincipalDep,
    sessions: SessionsDep,
    watcher: WatcherDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    prefer: Annotated[str | None, Header(description="`wait=N` holds the reply until done or N s")] = None,
) -> dict[str, Any]:
    """The job; `Prefer: wait=N` (N <= 60) holds the reply until the job is terminal or N seconds pass
    (429 `too_many_waits` when the caller already holds `max_waits` waits open here)."""
    wait_s = preferred_wait_s(prefer, settings)
    if wait_s is not None and not job.status.terminal:
        slot = take_wait(principal.id, settings)
        job = await held_until_done(request, sessions, watcher, job.id, principal.id, wait_s, slot)
        response.headers["Preference-Applied"] = f"wait={wait_s}"
    body = render_job(job)
    if job.status is JobStatus.QUEUED:
        body["queue_position"] = await run_in_threadpool(_queue_position, sessions, job)
    return body


def _queue_position(sessions: sessionmaker[Session], job: Job) -> int | None:
    with sessions() as session:
        return queries.queue_position(session, job)


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        after = datetime.fromisoformat(created_at)
        if after.tzinfo is None or "\x00" in job_id:  # never ours, and no database takes them
            raise ValueError(created_at)
        return after.astimezone(UTC), job_id  # OverflowError for a time with no UTC form
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor is not valid", details=[{"loc": ["query", "cursor"]}]) from None


@router.get("/jobs", response_model=JobList, responses=error_responses(422))
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first; follow `next_cursor` for older ones."""
    limit = min(limit, settings.page_size_max)
    before = _decode_cursor(cursor) if cursor else None
    jobs = queries.list_jobs(session, principal.id, limit=limit + 1, status=status, before=before)
    page, more = jobs[:limit], len(jobs) > limit
    return {"data": [render_job(j) for j in page], "next_cursor": _encode_cursor(page[-1]) if more else None}


@router.post(
    "/jobs/{job_id}/cancel",
    name="cancel_job",
    response_model=JobPublic,
    responses=error_responses(401, 404, 429),
)
def cancel(job_id: str, principal: WriterDep, sessions: SessionsDep, notifier: NotifierDep) -> dict[str, Any]:
    """Cancel: a queued job at once, a running one at its next scale. Idempotent."""
    return render_job(cancel_job(sessions, notifier, job_id, principal.id))


@router.delete("/jobs/{job_id}", status_code=204, responses=error_responses(401, 404, 409, 429))
def delete_job(job_id: str, principal: WriterDep, sessions: SessionsDep, storage: StorageDep) -> Response:
    """Delete a finished job's images (source, result, previews) now instead of at the result TTL; its
    result then answers 410. Idempotent; 409 while the job is queued or running (cancel it first)."""
    service.delete_job(sessions, storage, job_id, principal.id)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the edited image (local storage)"},
        307: {"description": "redirect to a short-lived presigned URL (S3 storage)"},
        **error_responses(404, 409, 410),
    },
)
def get_result(job: OwnedJobDep, storage: StorageDep, settings: SettingsDep) -> Response:
    """The edited image: the bytes, or a redirect to a presigned URL. 409 until the job succeeded."""
    if job.status is not JobStatus.SUCCEEDED:
        raise ResultNotReady(f"the job is {job.status.value}, not succeeded", details={"status": job.status})
    if job.result_key is None:
        raise ResultExpired("the result was deleted (DELETE /v1/jobs/{id}, or its retention period ended)")
    url = storage.presigned_url(job.result_key, settings.presigned_url_s)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    try:
        data = storage.get(job.result_key)
    except KeyError:
        raise ResultExpired("the result object is gone") from None
    return Response(
        data, media_type=job.result_content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get(
    "/jobs/{job_id}/previews/{scale}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the preview (PNG)"},
        **error_responses(404, 410),
    },
)
def get_preview(job: OwnedJobDep, storage: StorageDep, scale: Annotated[int, Path(ge=1)]) -> Response:
    """The small preview image of scale `scale` (a job submitted with `previews`): 404 until it is stored
    (the SSE `preview` event says when), 410 once the job's objects are deleted. The bytes, also on S3:
    they are small, and a redirect to another origin would be refused by the web page's policy."""
    if not job.previews:
        raise PreviewNotFound(f"job {job.id} was submitted without previews")
    if job.purged_at is not None:
        raise ResultExpired("the previews were deleted with the result (DELETE, or its retention period)")
    if job.progress_scales is not None and scale > job.progress_scales:
        raise PreviewNotFound(f"job {job.id} has {job.progress_scales} scales, not {scale}")
    if job.preview_scale is None or scale > job.preview_scale:
        raise PreviewNotFound(f"job {job.id} has no preview of scale {scale} yet")
    try:
        data = storage.get(preview_key(job.id, scale))
    except KeyError:
        raise PreviewNotFound(f"the preview of scale {scale} could not be stored") from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404, 429)},
)
async def job_events(
    job: OwnedJobDep,
    principal: PrincipalDep,
    sessions: SessionsDep,
    watcher: WatcherDep,
    settings: SettingsDep,
) -> EventSourceResponse:
    """Server-Sent Events: `status` (the job JSON) on every state change, `progress` once per scale of
    a run, in order (scales that ended between two reads of the job are announced together, also when
    the job ended meanwhile; a stream opened on a finished job gets its last run's scales), `preview`
    once per stored preview (jobs with `previews`), all before the job's terminal `status`; the stream
    ends when the job is terminal. A stream is one of the caller's `max_waits` (else 429)."""

    slot = take_wait(principal.id, settings)  # before the stream starts: its 429 is still an answer

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            async with aclosing(_job_events(sessions, watcher, job.id, principal.id)) as events:
                async for event in events:
                    yield event
        finally:
            slot.release()

    return EventSourceResponse(stream(), ping=SSE_PING_S)


async def _job_events(
    sessions: sessionmaker[Session], watcher: JobWatcher, job_id: str, owner: str
) -> AsyncIterator[dict[str, str]]:
    """The events of `job_events`, in order."""
    last: Job | None = None
    reported = 0  # scales 1..reported of this run were sent
    announced = 0  # previews 1..announced were sent
    async for current in changes(sessions, watcher, job_id, owner, float("inf")):
        status_changed = last is None or current.status != last.status
        if status_changed and not current.status.terminal:
            reported = 0  # a new run (a retry starts again at scale 1)
            yield {"event": "status", "data": json.dumps(render_job(current))}
        # A queued job has no progress (a claim and a requeue clear it); a finished one keeps its
        # last run's, whose final scales may have ended after the stream's last read.
        if current.progress is not None:
            scale, scales = current.progress
            for k in range(reported + 1, scale + 1):  # each scale ended while the job ran
                data = {"id": current.id, "status": JobStatus.RUNNING.value, "scale": k, "scales": scales}
                yield {"event": "progress", "data": json.dumps(data)}
            reported = max(reported, scale)
        for preview in preview_events(current, announced):
            yield {"event": "preview", "data": preview.model_dump_json()}
            announced = preview.scale
        if status_changed and current.status.terminal:
            yield {"event": "status", "data": json.dumps(render_job(current))}
        last = current
