"""Periodic transitions and clean-up, run by Celery beat: lost leases, start deadlines, stranded
messages, expired results, orphaned objects. Each pass handles at most ``limit`` rows in one short
transaction; like the transitions (`jobs.transitions`), every change is a conditional UPDATE, so a
pass racing a worker changes only rows that are still in the state it expects. A pass locks the rows it
picks and skips those locked by another transaction (`_pick`): a worker frozen in the middle of a
transition (a stopped process, a paused VM) keeps its row locked, and waiting on it would hold up the
pass, and the light worker running it, for every other job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs import outbox
from jobs.models import TERMINAL_STATUSES, Job, JobStatus, startable, utcnow
from jobs.storage import JOBS_PREFIX, Storage, job_id_of, job_prefix

log = structlog.get_logger(__name__)

REAP_BATCH = 100  # rows per maintenance pass; each pass is one short transaction
SWEEP_BATCH = 500  # job folders per orphan sweep pass: one listing stretch and one indexed SELECT
# A folder without a live job is left alone until its newest object is this old: a submit stores its
# source before it commits the row, and that takes seconds (storage and database timeouts), never an hour.
ORPHAN_GRACE_S = 3600


class ToPublish(NamedTuple):
    """A queued job whose ``run_edit`` message must be (re)sent to ``edits.<model>``."""

    job_id: str
    model: str


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _ids(session: Session, stmt: Any) -> list[str]:
    return list(session.execute(stmt).scalars())


def _pick(session: Session, where: list[Any], order_by: Any, limit: int) -> list[str]:
    """The ids of up to ``limit`` jobs matching ``where``, locked for this pass; rows another transaction
    holds are left for a later pass (PostgreSQL; SQLite runs one writer at a time)."""
    stmt = select(Job.id).where(*where).order_by(order_by).limit(limit).with_for_update(skip_locked=True)
    return _ids(session, stmt)


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
    ids = _pick(session, expired, Job.lease_expires_at, limit)
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
        outbox.enqueue(session, job, now=now)
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


def expire_unstarted(
    session: Session,
    *,
    now: datetime | None = None,
    limit: int = REAP_BATCH,
    requeued_wait_s: float | None = None,
) -> list[str]:
    """queued -> expired for jobs never started whose start deadline passed. A job that started in time
    and went back to the queue (lost lease, transient fault, drain) stays claimable past its start
    deadline (`jobs.models.startable`); with ``requeued_wait_s`` it expires once it has waited that long
    since without a worker taking it again, so every job still ends."""
    now = _now(now)
    done = _expire(
        session,
        [Job.start_deadline <= now, Job.started_at.is_(None)],
        Job.start_deadline,
        "no worker started the job before its start deadline",
        now,
        limit,
    )
    if requeued_wait_s is not None and len(done) < limit:
        done += _expire(
            session,
            [Job.started_at.is_not(None), Job.updated_at <= now - timedelta(seconds=requeued_wait_s)],
            Job.updated_at,
            f"no worker took the job again within {requeued_wait_s:g} s of its return to the queue",
            now,
            limit - len(done),
        )
    return done


def _expire(
    session: Session, where: list[Any], oldest_first: Any, message: str, now: datetime, limit: int
) -> list[str]:
    """queued -> expired (start_deadline_exceeded, ``message``) for up to ``limit`` jobs matching
    ``where``, each announced to its webhook."""
    due = [Job.status == JobStatus.QUEUED, *where]
    ids = _pick(session, due, oldest_first, limit)
    if not ids:
        return []
    expired = _jobs(
        session,
        update(Job)
        .where(Job.id.in_(ids), *due)
        .values(
            status=JobStatus.EXPIRED,
            error_code="start_deadline_exceeded",
            error_message=message,
            finished_at=now,
            updated_at=now,
        ),
    )
    for job in expired:
        log.info("job_expired", job_id=job.id)
        outbox.enqueue(session, job, now=now)
    return [job.id for job in expired]


def stranded_queued(
    session: Session, older_than_s: int, *, now: datetime | None = None, limit: int = REAP_BATCH
) -> list[ToPublish]:
    """Queued jobs not (re)published for ``older_than_s`` (the publish after commit failed, or the
    message was lost). Marks them dispatched now and returns them for republishing after commit;
    a duplicate message is harmless because only one claim can win."""
    now = _now(now)
    cutoff = now - timedelta(seconds=older_than_s)
    due = [Job.status == JobStatus.QUEUED, Job.dispatched_at < cutoff, startable(now)]
    ids = _pick(session, due, Job.dispatched_at, limit)
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
    """Delete the source, result and preview objects of jobs finished more than ``ttl_s`` ago; the job
    row stays (its result then answers 410). Object deletes are idempotent, so a rolled-back pass just
    repeats."""
    now = _now(now)
    cutoff = now - timedelta(seconds=ttl_s)
    due = [Job.status.in_(TERMINAL_STATUSES), Job.finished_at < cutoff, Job.purged_at.is_(None)]
    count = purge_objects(session, storage, due, now, limit)
    if count:
        log.info("job_objects_purged", count=count)
    return count


def purge_objects(
    session: Session, storage: Storage, where: list[Any], now: datetime, limit: int = REAP_BATCH
) -> int:
    """Delete every object of the jobs matching ``where`` (terminal ones) and mark them purged (their
    result then answers 410): what the result TTL and `DELETE /v1/jobs/{id}` both do. By the job's
    prefix, not by what its row records: an attempt may have stored a result or previews and died
    before recording them."""
    ids = _pick(session, where, Job.finished_at, limit)
    for job_id in ids:
        storage.delete_prefix(job_prefix(job_id))
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), *where)
            .values(source_key=None, result_key=None, preview_scale=None, purged_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(ids)


class Sweep(NamedTuple):
    deleted: int  # job folders deleted
    resume_after: str | None  # the key the next pass lists after; None once the listing is done


def sweep_orphan_objects(
    session: Session,
    storage: Storage,
    *,
    start_after: str = "",
    now: datetime | None = None,
    limit: int = SWEEP_BATCH,
) -> Sweep:
    """Delete the job folders in storage that no live job owns: the source of a submit whose row never
    committed (an API process killed between its upload and its COMMIT, or a COMMIT whose outcome it
    could not learn, which keeps the source on purpose), and objects written under a purged job (a
    stalled worker's late preview after `DELETE /v1/jobs/{id}`). One pass reads up to ``limit``
    folders in key order, after ``start_after``."""
    cutoff = _now(now) - timedelta(seconds=ORPHAN_GRACE_S)
    newest: dict[str, datetime] = {}
    last_key, resume_after = start_after, None
    for obj in storage.list_objects(JOBS_PREFIX, start_after):
        if (job_id := job_id_of(obj.key)) is not None:
            if job_id not in newest and len(newest) == limit:
                resume_after = last_key  # a folder's keys are contiguous, so it resumes at the next one
                break
            newest[job_id] = max(obj.modified, newest.get(job_id, obj.modified))
        last_key = obj.key
    settled = [job_id for job_id, modified in newest.items() if modified < cutoff]
    owned = select(Job.id).where(Job.id.in_(settled), Job.purged_at.is_(None))
    live = set(_ids(session, owned)) if settled else set()  # all young: no question to ask
    orphans = [job_id for job_id in settled if job_id not in live]
    for job_id in orphans:
        storage.delete_prefix(job_prefix(job_id))
    if orphans:
        log.info("orphan_objects_deleted", folders=len(orphans), job_ids=orphans[:10])
    return Sweep(len(orphans), resume_after)
