"""Idempotency-Key records (IETF draft / Stripe semantics), scoped per owner.

A key is first *reserved* (committed on its own, so a concurrent retry sees "in flight"), then
*completed* in the same transaction that inserts the job, or *released* when submission fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.errors import IdempotencyConflict, IdempotencyInFlight
from jobs.models import IdempotencyRecord, utcnow

IN_FLIGHT_STALE_S = 120  # a reservation this old belongs to a request that died; the key may be reused


def reserve(
    session: Session, owner: str, key: str, request_hash: str, *, now: datetime | None = None
) -> IdempotencyRecord | None:
    """None when the key is now reserved for this request; the completed record when this request is a
    retry to replay. Raises `IdempotencyConflict` (other body) or `IdempotencyInFlight`."""
    now = now or utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    inserted = session.execute(
        insert(IdempotencyRecord)
        .values(owner=owner, key=key, request_hash=request_hash, created_at=now)
        .on_conflict_do_nothing(index_elements=["owner", "key"])
        .returning(IdempotencyRecord.key)  # rowcount is not reliable for INSERT on every driver
    ).scalar_one_or_none()
    if inserted is not None:
        return None
    record = session.execute(
        select(IdempotencyRecord)
        .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
        .execution_options(populate_existing=True)
    ).scalar_one()
    if record.request_hash != request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request", details={"key": key}
        )
    if record.response_body is not None:
        return record
    stale = now - timedelta(seconds=IN_FLIGHT_STALE_S)
    taken = session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.owner == owner,
            IdempotencyRecord.key == key,
            IdempotencyRecord.response_body.is_(None),
            IdempotencyRecord.created_at < stale,
        )
        .values(created_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken:
        return None
    raise IdempotencyInFlight(
        "a request with this Idempotency-Key is still being processed; retry shortly", details={"key": key}
    )


def complete(session: Session, owner: str, key: str, job_id: str, status: int, body: dict[str, Any]) -> None:
    """Store the first response; call inside the transaction that inserts the job."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
        .values(job_id=job_id, response_status=status, response_body=body)
        .execution_options(synchronize_session=False)
    )


def release(session: Session, owner: str, key: str) -> None:
    """Drop an uncompleted reservation so the client may retry with the same key."""
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.owner == owner,
            IdempotencyRecord.key == key,
            IdempotencyRecord.response_body.is_(None),
        )
    )


def prune(session: Session, ttl_s: int, *, now: datetime | None = None) -> int:
    """Delete records older than ``ttl_s`` (periodic task); returns how many."""
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_s)
    return session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)).rowcount
