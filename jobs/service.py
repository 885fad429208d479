"""Operations that own their transaction (what the API calls): submit an edit, cancel a job, delete a
finished job's images.

Submitting, order matters: the object is written first under the job's key; the job row and the
idempotency response commit together; only after the commit is ``run_edit`` published, and a failed
publish leaves the job ``queued`` for the dispatcher. Any failure before the commit removes the object
and the reservation, so nothing is left half-stored. Only a failed COMMIT is ambiguous: the row is read
back, and the source is kept when that cannot be done either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import idempotency, queries, reapers, transitions
from jobs.db import session_scope
from jobs.errors import InFlightLimit, JobNotTerminal
from jobs.models import Job, utcnow
from jobs.notify import Notifier
from jobs.queue import Publisher, publish_or_flag
from jobs.storage import Storage, source_key
from jobs.views import render_job

ACCEPTED = 202
UNKNOWN = object()  # the outcome of a failed COMMIT could not be read back

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Submitted:
    """The response to send: the first one for this request (``replayed`` when it was stored before)."""

    job_id: str
    status_code: int
    body: dict[str, Any]
    replayed: bool


def request_fingerprint(fields: dict[str, Any], image: bytes) -> str:
    """A hash of the request as the client sent it (before defaults), to recognise a retry."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode() + b"\0" + hashlib.sha256(image).digest()).hexdigest()


def submit_edit(
    sessions: sessionmaker[Session],
    storage: Storage,
    publisher: Publisher,
    *,
    owner: str,
    spec: transitions.EditSpec,
    image: bytes,
    content_type: str,
    max_in_flight: int | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Submitted:
    """Accept one validated edit; the response body (the job's public view) is stored with the
    Idempotency-Key for replays. ``max_in_flight`` caps the owner's queued + running jobs, counted in
    the inserting transaction so concurrent submits cannot both slip under it. Raises `InFlightLimit`,
    the idempotency errors, `StorageError` or database errors."""
    if idempotency_key is not None:
        with session_scope(sessions) as session:
            record = idempotency.reserve(session, owner, idempotency_key, fingerprint)
        if record is not None:
            return Submitted(
                record.job_id or "", record.response_status or ACCEPTED, record.response_body or {}, True
            )

    job_id = transitions.new_job_id()
    key = source_key(job_id, content_type)
    committing = False  # until the COMMIT is sent, a failure certainly rolled the job back
    try:
        storage.put(key, image, content_type)
        with session_scope(sessions) as session:
            job = transitions.submit(
                session,
                job_id=job_id,
                owner=owner,
                spec=spec,
                source_key=key,
                source_content_type=content_type,
            )
            body = render_job(job)
            if idempotency_key is not None:
                idempotency.complete(session, owner, idempotency_key, job_id, ACCEPTED, body)
            if max_in_flight is not None:
                # Last, so the owner's submits take turns only for the count and the commit.
                _serialize_owner(session, owner)
                if queries.count_in_flight(session, owner) > max_in_flight:
                    raise InFlightLimit(
                        f"{max_in_flight} jobs are already queued or running",
                        details={"max_in_flight": max_in_flight},
                    )
            committing = True  # the block's end: the COMMIT, whose failure may hide a success
    except BaseException as exc:
        committed = _committed(sessions, job_id) if committing else None
        if committed is UNKNOWN:
            raise  # keep the source: the job may exist (if not, the orphan sweep deletes it later)
        if committed is None:
            log.warning("job_submit_rolled_back", job_id=job_id, exc_info=True)
            _undo(sessions, storage, key, owner, idempotency_key)
            raise
        # The COMMIT went through and only its answer was lost: the job is accepted as it stands.
        log.warning("job_submit_commit_reply_lost", job_id=job_id, error=repr(exc))
        body = committed

    publish_or_flag(sessions, publisher, job_id, spec.model)
    return Submitted(job_id, ACCEPTED, body, False)


def _serialize_owner(session: Session, owner: str) -> None:
    """Make concurrent submits of one owner take turns from here until commit, so the in-flight count
    each sees includes the others': under READ COMMITTED the count, a statement after the lock, sees
    every job committed by an earlier holder, and each transaction's own insert. PostgreSQL: a
    transaction-scoped advisory lock. SQLite needs none: the INSERT takes the database's single write
    lock before the count."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"in-flight:{owner}"))))


def _committed(sessions: sessionmaker[Session], job_id: str) -> dict[str, Any] | None | object:
    """After a failed submit, what the database says: the job's public view if its row exists after all
    (the COMMIT succeeded and only its reply was lost), None when it does not, `UNKNOWN` when the
    database cannot be asked."""
    try:
        with sessions() as session:
            job = session.get(Job, job_id)
            return None if job is None else render_job(job)
    except Exception:
        log.warning("job_submit_outcome_unknown", job_id=job_id, exc_info=True)
        return UNKNOWN


def _undo(
    sessions: sessionmaker[Session], storage: Storage, key: str, owner: str, idempotency_key: str | None
) -> None:
    """The submit did not commit: remove what it left (the source, and the new job's folder in a local
    store). Best effort: a leftover object or reservation is harmless, the original error matters more."""
    try:
        storage.undo_put(key)
    except Exception:
        log.warning("job_submit_cleanup_failed", key=key, exc_info=True)
    if idempotency_key is None:
        return
    try:
        with session_scope(sessions) as session:
            idempotency.release(session, owner, idempotency_key)
    except Exception:
        log.warning("idempotency_release_failed", key=idempotency_key, exc_info=True)


def cancel_job(sessions: sessionmaker[Session], notifier: Notifier, job_id: str, owner: str) -> Job:
    """Cancel the owner's job (idempotent) and tell waiting clients; `JobNotFound` for others' jobs."""
    with session_scope(sessions) as session:
        queries.get_job(session, job_id, owner)
        job = transitions.cancel(session, job_id)
    notifier.job_changed(job_id)
    return job


def delete_job(sessions: sessionmaker[Session], storage: Storage, job_id: str, owner: str) -> Job:
    """Delete a terminal job's objects (source, result, previews) now, not at the result TTL, and mark it
    purged; idempotent. The row stays, so its id is never reused and its webhooks keep their history.
    `JobNotTerminal` while it is queued or running (cancel it first)."""
    with session_scope(sessions) as session:
        job = queries.get_job(session, job_id, owner)
        if not job.status.terminal:
            raise JobNotTerminal(
                f"job {job_id} is {job.status.value}; cancel it first", details={"status": job.status.value}
            )
        reapers.purge_objects(session, storage, [Job.id == job_id, Job.purged_at.is_(None)], utcnow())
    with sessions() as session:
        return queries.get_job(session, job_id, owner)
