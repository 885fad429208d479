"""The job state machine's transitions: submit, claim (lease), heartbeat, finish, fail, release, hand
back, cancel.

    queued -> running -> succeeded | failed | canceled
    queued -> canceled | expired          (terminal states never change)

Every function takes a Session and never commits: the caller owns ``with session.begin():`` and
commits, then publishes or notifies. Every state change is ONE conditional UPDATE whose WHERE clause
states the transition it expects, so concurrent callers cannot both win and a stale worker (an older
``attempt``) cannot complete a job that was handed to someone else (fencing). Every change into
running or a terminal state also writes its webhook message in the same transaction (`jobs.outbox`).
The periodic transitions (lease expiry, start deadlines) are in `jobs.reapers`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from jobs import outbox
from jobs.models import CLAIM_ORDER, Job, JobStatus, startable, utcnow
from jobs.queries import get_job

log = structlog.get_logger(__name__)


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
    previews: bool = False
    negative_instruction: str = ""


@dataclass(frozen=True)
class ResultMeta:
    """The uploaded result of one attempt (``key`` from `jobs.storage.result_key`)."""

    key: str
    content_type: str
    width: int
    height: int
    bytes: int


def new_job_id() -> str:
    return str(uuid.uuid4())


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _update_one(
    session: Session, job_id: str | ColumnElement[str], where: list[ColumnElement[bool]], **values: Any
) -> Job | None:
    """The single conditional UPDATE behind every transition (of the job ``job_id`` names, or chooses
    as a subquery): the updated row, or None if it did not apply."""
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
        outbox.enqueue(session, job, now=now)
    return job is not None


def _end_attempt(
    session: Session,
    job_id: str,
    attempt: int,
    status: JobStatus,
    now: datetime,
    where: list[ColumnElement[bool]] | None = None,
    **values: Any,
) -> bool:
    """running -> a terminal ``status`` for the attempt that still holds the job, announced; False when
    fenced out (the lease went to another attempt, or the job already ended)."""
    job = _update_one(
        session,
        job_id,
        [*_holds_lease(attempt), *(where or [])],
        status=status,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
        **values,
    )
    return _announce(session, job, now)


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
        negative_instruction=spec.negative_instruction,
        model=spec.model,
        resolution=spec.resolution,
        seed=spec.seed,
        cfg=spec.cfg,
        tau=spec.tau,
        priority=spec.priority,
        webhook_url=spec.webhook_url,
        webhook_events=spec.webhook_events,
        previews=spec.previews,
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
    return [Job.status == JobStatus.QUEUED, startable(now)]


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
    return _claim(session, job_id, worker_id, lease_s, _now(now))


def _claim(
    session: Session,
    which: str | ColumnElement[str],
    worker_id: str,
    lease_s: int,
    now: datetime,
    **log_as: str,
) -> Job | None:
    """The claim of the job ``which`` names or chooses (a subquery), announced like every transition."""
    job = _update_one(session, which, _claimable(now), **_claim_values(worker_id, lease_s, now))
    if job is not None:
        log.info("job_claimed", job_id=job.id, worker_id=worker_id, attempt=job.attempts, **log_as)
        outbox.enqueue(session, job, now=now)
    return job


def claim_next(
    session: Session, message_job_id: str, worker_id: str, lease_s: int, *, now: datetime | None = None
) -> Job | None:
    """Claim the job that a message for ``message_job_id`` runs, like `claim`; None when its model has
    nothing claimable (or the job is unknown): drop the message.

    A message names one job but stands for a turn of that job's model: it runs the claimable job of
    the model with the highest priority, the oldest among equals, so the broker's order (submits,
    republished hand-backs) does not decide who goes first. Every job has its own message, so each
    claim uses up one message and every job still queued has one left. One conditional UPDATE that
    chooses its row in a subquery: on PostgreSQL with SKIP LOCKED, so messages handled at once take
    different jobs; SQLite runs writers one at a time."""
    now = _now(now)
    model = select(Job.model).where(Job.id == message_job_id).scalar_subquery()
    best = (
        select(Job.id)
        .where(*_claimable(now), Job.model == model)
        .order_by(*CLAIM_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return _claim(session, best, worker_id, lease_s, now, message_of=message_job_id)


def claim_batch(
    session: Session,
    message_job_id: str,
    worker_id: str,
    lease_s: int,
    max_batch: int,
    *,
    now: datetime | None = None,
) -> list[Job]:
    """Claim the job that a message for ``message_job_id`` runs (`claim_next`) plus up to
    ``max_batch - 1`` other queued jobs of the same model and resolution (highest priority, then
    oldest, first). Empty when no job of that model is claimable: the message is then a harmless
    duplicate."""
    now = _now(now)
    first = claim_next(session, message_job_id, worker_id, lease_s, now=now)
    if first is None:
        return []
    if max_batch <= 1:
        return [first]
    candidates = (
        select(Job.id)
        .where(*_claimable(now), Job.model == first.model, Job.resolution == first.resolution)
        .order_by(*CLAIM_ORDER)
        .limit(max_batch - 1)
        .with_for_update(skip_locked=True)  # as `claim_next`: never wait on a locked row
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
        log.info("job_claimed", job_id=job.id, worker_id=worker_id, attempt=job.attempts, batch_of=first.id)
        outbox.enqueue(session, job, now=now)
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
    preview_scale: int | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """Extend the lease and record progress (scale k of K) and the stored previews (scales
    1..preview_scale; 0 clears what an earlier attempt recorded) in the same UPDATE. False means stop:
    the lease was lost (fenced out) or a cancel was requested (then confirm it with `mark_canceled`)."""
    now = _now(now)
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress_scale"], values["progress_scales"] = progress
    if preview_scale is not None:
        values["preview_scale"] = preview_scale or None
    job = _update_one(session, job_id, _holds_lease(attempt), **values)
    return job is not None and not job.cancel_requested


def finish(
    session: Session, job_id: str, attempt: int, result_meta: ResultMeta, *, now: datetime | None = None
) -> bool:
    """running -> succeeded, only for the attempt that still holds the job. False: fenced out (the
    caller should delete its uploaded object)."""
    applied = _end_attempt(
        session,
        job_id,
        attempt,
        JobStatus.SUCCEEDED,
        _now(now),
        result_key=result_meta.key,
        result_content_type=result_meta.content_type,
        result_width=result_meta.width,
        result_height=result_meta.height,
        result_bytes=result_meta.bytes,
    )
    log.info("job_finished" if applied else "job_finish_fenced", job_id=job_id, attempt=attempt)
    return applied


def fail(
    session: Session, job_id: str, attempt: int, code: str, message: str, *, now: datetime | None = None
) -> bool:
    """running -> failed with an error code (snake_case) and message; fenced like `finish`."""
    applied = _end_attempt(
        session, job_id, attempt, JobStatus.FAILED, _now(now), error_code=code, error_message=message
    )
    log.info("job_failed" if applied else "job_fail_fenced", job_id=job_id, attempt=attempt, code=code)
    return applied


def release(session: Session, job_id: str, attempt: int, *, now: datetime | None = None) -> bool:
    """running -> queued, given back by its worker (transient fault) so another claim can take it; the
    attempt still counts towards max_attempts. The caller republishes when True."""
    applied = _requeue(session, job_id, attempt, _now(now))
    log.info("job_released" if applied else "job_release_fenced", job_id=job_id, attempt=attempt)
    return applied


def hand_back(session: Session, job_id: str, attempt: int, *, now: datetime | None = None) -> bool:
    """running -> queued when its worker shuts down (the drain, worker/drain.py), with the attempt
    undone (``attempts - 1``): the job did not fail, so it keeps every attempt it had. Fenced like
    `release`; the caller republishes when True. The next claim gets the same attempt number again, so
    the caller must have stopped all work under it first (the number is the attempt's fencing token)."""
    applied = _requeue(session, job_id, attempt, _now(now), attempts=Job.attempts - 1)
    log.info("job_handed_back" if applied else "job_hand_back_fenced", job_id=job_id, attempt=attempt)
    return applied


def _requeue(session: Session, job_id: str, attempt: int, now: datetime, **values: Any) -> bool:
    """running -> queued for the attempt holding the job, unless a cancel is pending (its worker
    confirms that instead)."""
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
        **values,
    )
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
        outbox.enqueue(session, job, now=now)
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
    applied = _end_attempt(
        session, job_id, attempt, JobStatus.CANCELED, _now(now), where=[Job.cancel_requested.is_(True)]
    )
    log.info("job_canceled" if applied else "job_cancel_fenced", job_id=job_id, attempt=attempt)
    return applied
