"""The job state machine: submit, claim (lease), heartbeat, finish, fail, cancel, and the reapers.

    queued -> running -> succeeded | failed | canceled
    queued -> canceled | expired          (terminal states never change)

Every function takes a Session and never commits: the caller owns ``with session.begin():`` and
commits, then publishes or notifies. Every state change is ONE conditional UPDATE whose WHERE clause
states the transition it expects, so concurrent callers cannot both win and a stale worker (an older
``attempt``) cannot complete a job that was handed to someone else (fencing). Every change into
running or a terminal state also writes its webhook message in the same transaction (`jobs.webhooks`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs import webhooks
from jobs.errors import JobNotFound
from jobs.models import TERMINAL_STATUSES, Job, JobStatus, WorkerHeartbeat, utcnow
from jobs.storage import Storage

log = structlog.get_logger(__name__)

REAP_BATCH = 100  # rows per maintenance pass; each pass is one short transaction


@dataclass(frozen=True)
class EditSpec:
    """What the caller asked for, already validated and with defaults (and the seed) filled in."""

    instruction: str
    model: str
    resolution: int
    seed: int
    cfg: float
    tau: float
    start_timeout_s: int
    priority: int = 0
    webhook_url: str | None = None
    webhook_events: list[str] | None = None


@dataclass(frozen=True)
class ResultMeta:
    """The uploaded result of one attempt (``key`` from `jobs.storage.result_key`)."""

    key: str
    content_type: str
    width: int
    height: int
    bytes: int


class ToPublish(NamedTuple):
    """A queued job whose ``run_edit`` message must be (re)sent to ``edits.<model>``."""

    job_id: str
    model: str


def new_job_id() -> str:
    return str(uuid.uuid4())


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _update_one(session: Session, job_id: str, where: list[ColumnElement[bool]], **values: Any) -> Job | None:
    """The single conditional UPDATE behind every transition: the updated row, or None if it did not apply."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, *where)
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return session.execute(stmt).scalars().one_or_none()


def _announce(session: Session, job: Job | None, now: datetime) -> bool:
    """After a transition: write its webhook message; True when the transition applied."""
    if job is not None:
        webhooks.enqueue(session, job, now=now)
    return job is not None


# -- reading ------------------------------------------------------------------------------------


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job, or `JobNotFound` (also when it belongs to another owner: others' jobs do not exist)."""
    job = session.get(Job, job_id, populate_existing=True)
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


# -- submit and claim ---------------------------------------------------------------------------


def submit(
    session: Session,
    *,
    job_id: str,
    owner: str,
    spec: EditSpec,
    source_key: str,
    source_content_type: str,
    now: datetime | None = None,
) -> Job:
    """Insert the job ``queued`` (flushed, not committed); its source object must already be stored."""
    now = _now(now)
    job = Job(
        id=job_id,
        owner=owner,
        status=JobStatus.QUEUED,
        instruction=spec.instruction,
        model=spec.model,
        resolution=spec.resolution,
        seed=spec.seed,
        cfg=spec.cfg,
        tau=spec.tau,
        priority=spec.priority,
        webhook_url=spec.webhook_url,
        webhook_events=spec.webhook_events,
        source_key=source_key,
        source_content_type=source_content_type,
        attempts=0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        dispatched_at=now,
        start_deadline=now + timedelta(seconds=spec.start_timeout_s),
    )
    session.add(job)
    session.flush()
    log.info("job_submitted", job_id=job_id, model=spec.model, resolution=spec.resolution)
    return job


def _claimable(now: datetime) -> list[ColumnElement[bool]]:
    return [Job.status == JobStatus.QUEUED, Job.start_deadline > now]


def _claim_values(worker_id: str, lease_s: int, now: datetime) -> dict[str, Any]:
    return {
        "status": JobStatus.RUNNING,
        "attempts": Job.attempts + 1,
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "started_at": func.coalesce(Job.started_at, now),
        "progress_scale": None,
        "progress_scales": None,
        "updated_at": now,
    }


def claim(
    session: Session, job_id: str, worker_id: str, lease_s: int, *, now: datetime | None = None
) -> Job | None:
    """queued -> running with a lease and ``attempts += 1``; None when the job is not claimable
    (already claimed, canceled, finished, past its start deadline, or unknown): drop the message."""
    now = _now(now)
    job = _update_one(session, job_id, _claimable(now), **_claim_values(worker_id, lease_s, now))
    if job is not None:
        log.info("job_claimed", job_id=job_id, worker_id=worker_id, attempt=job.attempts)
        webhooks.enqueue(session, job, now=now)
    return job


def claim_batch(
    session: Session,
    first_job_id: str,
    worker_id: str,
    lease_s: int,
    max_batch: int,
    *,
    now: datetime | None = None,
) -> list[Job]:
    """Claim ``first_job_id`` plus up to ``max_batch - 1`` other queued jobs of the same model and
    resolution (highest priority, then oldest, first). Empty when the first job is not claimable; the
    messages of the companions become harmless duplicates."""
    now = _now(now)
    first = claim(session, first_job_id, worker_id, lease_s, now=now)
    if first is None:
        return []
    if max_batch <= 1:
        return [first]
    candidates = (
        select(Job.id)
        .where(*_claimable(now), Job.model == first.model, Job.resolution == first.resolution)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(max_batch - 1)
    )
    ids = list(session.execute(candidates).scalars())
    if not ids:
        return [first]
    stmt = (
        update(Job)
        .where(Job.id.in_(ids), *_claimable(now))
        .values(**_claim_values(worker_id, lease_s, now))
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    others = sorted(session.execute(stmt).scalars(), key=lambda j: ids.index(j.id))
    for job in others:
        log.info(
            "job_claimed", job_id=job.id, worker_id=worker_id, attempt=job.attempts, batch_of=first_job_id
        )
        webhooks.enqueue(session, job, now=now)
    return [first, *others]


# -- while running ------------------------------------------------------------------------------


def _holds_lease(attempt: int) -> list[ColumnElement[bool]]:
    return [Job.status == JobStatus.RUNNING, Job.attempts == attempt]


def heartbeat(
    session: Session,
    job_id: str,
    attempt: int,
    lease_s: int,
    progress: tuple[int, int] | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """Extend the lease and record progress (scale k of K). False means stop: the lease was lost
    (fenced out) or a cancel was requested (then confirm it with `mark_canceled`)."""
    now = _now(now)
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress_scale"], values["progress_scales"] = progress
    job = _update_one(session, job_id, _holds_lease(attempt), **values)
    return job is not None and not job.cancel_requested


def finish(
    session: Session, job_id: str, attempt: int, result_meta: ResultMeta, *, now: datetime | None = None
) -> bool:
    """running -> succeeded, only for the attempt that still holds the job. False: fenced out (the
    caller should delete its uploaded object)."""
    now = _now(now)
    job = _update_one(
        session,
        job_id,
        _holds_lease(attempt),
        status=JobStatus.SUCCEEDED,
        result_key=result_meta.key,
        result_content_type=result_meta.content_type,
        result_width=result_meta.width,
        result_height=result_meta.height,
        result_bytes=result_meta.bytes,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )
    log.info("job_finished" if job else "job_finish_fenced", job_id=job_id, attempt=attempt)
    return _announce(session, job, now)


def fail(
    session: Session, job_id: str, attempt: int, code: str, message: str, *, now: datetime | None = None
) -> bool:
    """running -> failed with an error code (snake_case) and message; fenced like `finish`."""
    now = _now(now)
    job = _update_one(
        session,
        job_id,
        _holds_lease(attempt),
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )
    log.info("job_failed" if job else "job_fail_fenced", job_id=job_id, attempt=attempt, code=code)
    return _announce(session, job, now)


def release(session: Session, job_id: str, attempt: int, *, now: datetime | None = None) -> bool:
    """running -> queued, given back by its worker (shutdown, transient fault) so another claim can
    take it; the attempt still counts towards max_attempts. The caller republishes when True."""
    now = _now(now)
    job = _update_one(
        session,
        job_id,
        [*_holds_lease(attempt), Job.cancel_requested.is_(False)],
        status=JobStatus.QUEUED,
        worker_id=None,
        lease_expires_at=None,
        progress_scale=None,
        progress_scales=None,
        dispatched_at=now,
        updated_at=now,
    )
    log.info("job_released" if job else "job_release_fenced", job_id=job_id, attempt=attempt)
    return job is not None


# -- cancel -------------------------------------------------------------------------------------


def cancel(session: Session, job_id: str, *, now: datetime | None = None) -> Job:
    """Idempotent cancel: queued -> canceled at once; running -> ``cancel_requested`` (the worker sees
    it at its next heartbeat and calls `mark_canceled`); terminal jobs are returned unchanged."""
    now = _now(now)
    job = _update_one(
        session,
        job_id,
        [Job.status == JobStatus.QUEUED],
        status=JobStatus.CANCELED,
        finished_at=now,
        updated_at=now,
    )
    if job is not None:
        webhooks.enqueue(session, job, now=now)
    else:
        job = _update_one(
            session,
            job_id,
            [Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False)],
            cancel_requested=True,
            updated_at=now,
        )
    if job is None:
        job = get_job(session, job_id)
    log.info("job_cancel", job_id=job_id, status=job.status, cancel_requested=job.cancel_requested)
    return job


def mark_canceled(session: Session, job_id: str, attempt: int, *, now: datetime | None = None) -> bool:
    """running -> canceled, confirmed by the worker holding ``attempt`` after it stopped generating."""
    now = _now(now)
    job = _update_one(
        session,
        job_id,
        [*_holds_lease(attempt), Job.cancel_requested.is_(True)],
        status=JobStatus.CANCELED,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )
    log.info("job_canceled" if job else "job_cancel_fenced", job_id=job_id, attempt=attempt)
    return _announce(session, job, now)


# -- periodic maintenance -----------------------------------------------------------------------


def _ids(session: Session, stmt: Any) -> list[str]:
    return list(session.execute(stmt).scalars())


def _jobs(session: Session, stmt: Any) -> list[Job]:
    """Run a bulk UPDATE of jobs and return the updated rows."""
    stmt = stmt.returning(Job).execution_options(synchronize_session=False, populate_existing=True)
    return list(session.execute(stmt).scalars())


def reap_expired_leases(
    session: Session, max_attempts: int, *, now: datetime | None = None, limit: int = REAP_BATCH
) -> list[ToPublish]:
    """Running jobs whose lease expired (their worker died or hung): canceled if a cancel was pending,
    failed (``lease_expired``) after ``max_attempts``, otherwise back to queued. Returns the requeued
    jobs, which the caller republishes after commit."""
    now = _now(now)
    expired = [Job.status == JobStatus.RUNNING, Job.lease_expires_at < now]
    ids = _ids(session, select(Job.id).where(*expired).order_by(Job.lease_expires_at).limit(limit))
    if not ids:
        return []
    common = {"worker_id": None, "lease_expires_at": None, "updated_at": now}
    in_batch = [Job.id.in_(ids), *expired]
    canceled = _jobs(
        session,
        update(Job)
        .where(*in_batch, Job.cancel_requested.is_(True))
        .values(status=JobStatus.CANCELED, finished_at=now, **common),
    )
    failed = _jobs(
        session,
        update(Job)
        .where(*in_batch, Job.attempts >= max_attempts)
        .values(
            status=JobStatus.FAILED,
            error_code="lease_expired",
            error_message=f"the worker stopped responding {max_attempts} times",
            finished_at=now,
            **common,
        ),
    )
    for job in (*canceled, *failed):
        webhooks.enqueue(session, job, now=now)
    requeued = session.execute(
        update(Job)
        .where(*in_batch)
        .values(
            status=JobStatus.QUEUED, progress_scale=None, progress_scales=None, dispatched_at=now, **common
        )
        .returning(Job.id, Job.model)
        .execution_options(synchronize_session=False)
    ).all()
    for job in failed:
        log.warning("job_lease_expired_failed", job_id=job.id)
    for job_id, _ in requeued:
        log.warning("job_lease_expired_requeued", job_id=job_id)
    return [ToPublish(job_id, model) for job_id, model in requeued]


def expire_unstarted(session: Session, *, now: datetime | None = None, limit: int = REAP_BATCH) -> list[str]:
    """queued -> expired for jobs whose start deadline passed."""
    now = _now(now)
    due = [Job.status == JobStatus.QUEUED, Job.start_deadline <= now]
    ids = _ids(session, select(Job.id).where(*due).order_by(Job.start_deadline).limit(limit))
    if not ids:
        return []
    expired = _jobs(
        session,
        update(Job)
        .where(Job.id.in_(ids), *due)
        .values(
            status=JobStatus.EXPIRED,
            error_code="start_deadline_exceeded",
            error_message="no worker started the job before its start deadline",
            finished_at=now,
            updated_at=now,
        ),
    )
    for job in expired:
        log.info("job_expired", job_id=job.id)
        webhooks.enqueue(session, job, now=now)
    return [job.id for job in expired]


def stranded_queued(
    session: Session, older_than_s: int, *, now: datetime | None = None, limit: int = REAP_BATCH
) -> list[ToPublish]:
    """Queued jobs not (re)published for ``older_than_s`` (the publish after commit failed, or the
    message was lost). Marks them dispatched now and returns them for republishing after commit;
    a duplicate message is harmless because only one claim can win."""
    now = _now(now)
    cutoff = now - timedelta(seconds=older_than_s)
    due = [Job.status == JobStatus.QUEUED, Job.dispatched_at < cutoff, Job.start_deadline > now]
    ids = _ids(session, select(Job.id).where(*due).order_by(Job.dispatched_at).limit(limit))
    if not ids:
        return []
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(ids), *due)
        .values(dispatched_at=now)
        .returning(Job.id, Job.model)
        .execution_options(synchronize_session=False)
    ).all()
    return [ToPublish(job_id, model) for job_id, model in rows]


def delete_expired_results(
    session: Session, storage: Storage, ttl_s: int, *, now: datetime | None = None, limit: int = REAP_BATCH
) -> int:
    """Delete the source and result objects of jobs finished more than ``ttl_s`` ago; the job row stays
    (its result then answers 410). Object deletes are idempotent, so a rolled-back pass just repeats."""
    now = _now(now)
    cutoff = now - timedelta(seconds=ttl_s)
    due = [Job.status.in_(TERMINAL_STATUSES), Job.finished_at < cutoff, Job.purged_at.is_(None)]
    rows = session.execute(
        select(Job.id, Job.source_key, Job.result_key).where(*due).order_by(Job.finished_at).limit(limit)
    ).all()
    for _, source, result in rows:
        for key in (source, result):
            if key:
                storage.delete(key)
    if rows:
        session.execute(
            update(Job)
            .where(Job.id.in_([r.id for r in rows]), *due)
            .values(source_key=None, result_key=None, purged_at=now)
            .execution_options(synchronize_session=False)
        )
        log.info("job_objects_purged", count=len(rows))
    return len(rows)


# -- workers ------------------------------------------------------------------------------------


def record_worker(
    session: Session,
    worker_id: str,
    model: str,
    hostname: str,
    ready: bool,
    *,
    now: datetime | None = None,
) -> None:
    """Upsert the worker's heartbeat row (call every ``heartbeat_s`` and when readiness changes)."""
    now = _now(now)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(WorkerHeartbeat).values(
        worker_id=worker_id, model=model, hostname=hostname, ready=ready, started_at=now, last_seen=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[WorkerHeartbeat.worker_id],
        set_={"model": model, "hostname": hostname, "ready": ready, "last_seen": now},
    )
    session.execute(stmt)


def remove_worker(session: Session, worker_id: str) -> None:
    """Forget a worker that shuts down cleanly."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))


def ready_workers(session: Session, stale_s: int, *, now: datetime | None = None) -> dict[str, int]:
    """Ready workers per model, counting only those seen within ``stale_s``."""
    cutoff = _now(now) - timedelta(seconds=stale_s)
    rows = session.execute(
        select(WorkerHeartbeat.model, func.count())
        .where(WorkerHeartbeat.ready.is_(True), WorkerHeartbeat.last_seen >= cutoff)
        .group_by(WorkerHeartbeat.model)
    ).all()
    return {model: count for model, count in rows}


def prune_workers(session: Session, stale_s: int, *, now: datetime | None = None) -> int:
    """Delete heartbeat rows of workers silent for ``stale_s`` (crashed without saying goodbye)."""
    cutoff = _now(now) - timedelta(seconds=stale_s)
    return session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < cutoff)).rowcount


# -- statistics ---------------------------------------------------------------------------------


class QueueStats(NamedTuple):
    depth: int
    oldest_age_s: float


def queue_stats(session: Session, *, now: datetime | None = None) -> dict[str, QueueStats]:
    """Queued jobs per model: how many, and how long the oldest has waited."""
    now = _now(now)
    rows = session.execute(
        select(Job.model, func.count(), func.min(Job.created_at))
        .where(Job.status == JobStatus.QUEUED)
        .group_by(Job.model)
    ).all()
    stats = {}
    for model, depth, oldest in rows:
        stats[model] = QueueStats(depth, max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    return stats


def count_by_status(session: Session) -> dict[tuple[str, JobStatus], int]:
    """Jobs per (model, status), for the jobs-by-state gauge."""
    rows = session.execute(select(Job.model, Job.status, func.count()).group_by(Job.model, Job.status)).all()
    return {(model, JobStatus(status)): count for model, status, count in rows}


def count_in_flight(session: Session, owner: str) -> int:
    """The owner's queued and running jobs (the per-caller cap on work in the system)."""
    return session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.owner == owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    ) or 0
