"""Read-only questions about jobs: one job, a page of an owner's jobs, queue and status counts."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import JobNotFound
from jobs.models import Job, JobStatus, utcnow


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job, or `JobNotFound` (also when it belongs to another owner: others' jobs do not exist)."""
    # No id holds a NUL, and PostgreSQL refuses to even compare text with one (a DataError).
    job = None if "\x00" in job_id else session.get(Job, job_id, populate_existing=True)
    if job is None or (owner is not None and job.owner != owner):
        raise JobNotFound(f"no job {job_id}", details={"id": job_id})
    return job


def list_jobs(
    session: Session,
    owner: str,
    *,
    limit: int,
    status: JobStatus | None = None,
    before: tuple[datetime, str] | None = None,
) -> list[Job]:
    """The owner's jobs, newest first; ``before`` = (created_at, id) of the previous page's last job."""
    stmt = select(Job).where(Job.owner == owner)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if before is not None:
        created_at, job_id = before
        stmt = stmt.where(
            (Job.created_at < created_at) | ((Job.created_at == created_at) & (Job.id < job_id))
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.execute(stmt).scalars())


class QueueStats(NamedTuple):
    depth: int
    oldest_age_s: float


def queue_stats(session: Session, *, now: datetime | None = None) -> dict[str, QueueStats]:
    """Queued jobs per model: how many, and how long the oldest has waited."""
    now = now if now is not None else utcnow()
    rows = session.execute(
        select(Job.model, func.count(), func.min(Job.created_at))
        .where(Job.status == JobStatus.QUEUED)
        .group_by(Job.model)
    ).all()
    stats = {}
    for model, depth, oldest in rows:
        stats[model] = QueueStats(depth, max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    return stats


def count_open(session: Session) -> dict[tuple[str, JobStatus], int]:
    """Queued and running jobs per (model, status): an index range, however many jobs have ended."""
    open_statuses = [JobStatus.QUEUED, JobStatus.RUNNING]
    rows = session.execute(
        select(Job.model, Job.status, func.count())
        .where(Job.status.in_(open_statuses))
        .group_by(Job.model, Job.status)
    ).all()
    return {(model, JobStatus(status)): count for model, status, count in rows}


def count_ran_and_ended_since(session: Session, since: datetime) -> dict[str, int]:
    """Jobs per model that a worker started and that ended at or after ``since`` (not those canceled or
    expired in the queue): an index range of the recent ends only."""
    rows = session.execute(
        select(Job.model, func.count())
        .where(Job.finished_at >= since, Job.started_at.is_not(None))
        .group_by(Job.model)
    ).all()
    return {model: count for model, count in rows}


def count_in_flight(session: Session, owner: str) -> int:
    """The owner's queued and running jobs (the per-caller cap on work in the system)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        )
        or 0
    )


def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs of the job's model run before it (a higher priority, or the same one and
    accepted earlier), or None when it is not queued: the order in which workers claim them
    (`jobs.transitions.claim_next`; a batch's companions too); a job submitted later with a higher
    priority moves it back. One indexed count."""
    if job.status is not JobStatus.QUEUED:
        return None
    earlier = (Job.created_at < job.created_at) | ((Job.created_at == job.created_at) & (Job.id < job.id))
    ahead = (Job.priority > job.priority) | ((Job.priority == job.priority) & earlier)
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == JobStatus.QUEUED, Job.model == job.model, ahead)
        )
        or 0
    )
