"""Webhook messages as an outbox: which job events go out, when each is due, and what came of it.

1. A job's state change inserts its message (`enqueue`) in the same transaction, when the job has a
   webhook_url and subscribes to the event (all events when it named none): a committed change always
   has its message, a rolled-back one never does.
2. Right after that commit the process hands the new messages to the webhook worker (`send_after_commit`,
   installed on the session factory by the API and the workers), having reserved them for ``hold_s`` in
   the transaction; `claim_due` (Celery beat) hands over whatever is due otherwise, reserving it the
   same way, so one message is in one worker's hands at a time. If the hand-over is lost (broker
   down) or that worker dies, the message simply falls due again after the reservation.
3. The worker sends it and `record_outcome` settles it by the attempt's verdict: delivered; gone (the
   endpoint wants no more: the job's other pending messages to that URL stop, and its later state
   changes send it none); refused (the address may never be called) fails at once; anything else is
   retried after the schedule's next delay (+-10% jitter, or the endpoint's Retry-After when longer, up
   to a day), failed after the last one.
   Delivery is at least once; receivers deduplicate on ``webhook-id`` (``message_id``).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import JobNotTerminal, NoWebhook
from jobs.models import DeliveryStatus, Job, JobStatus, WebhookDelivery, utcnow
from jobs.views import render_job

log = structlog.get_logger(__name__)

EVENT_OF_STATUS = {
    JobStatus.RUNNING: "job.running",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
    JobStatus.EXPIRED: "job.expired",
}
EVENTS = tuple(EVENT_OF_STATUS.values())
JITTER = 0.1
MAX_RETRY_AFTER_S = 86400.0  # the longest Retry-After honoured
HOLD_KEY = "webhook_hold_s"  # Session.info: reserve new messages this long, they are handed over
NEW_KEY = "webhook_new_ids"  # Session.info: messages of the open transaction, to hand over


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"  # the endpoint accepted it
    GONE = "gone"  # the endpoint wants no more messages for this job
    REFUSED = "refused"  # the address may never be called (netguard): no point retrying
    RETRY = "retry"  # no answer, or an answer asking for another try


@dataclass(frozen=True)
class Outcome:
    """What one attempt got, judged by the sender (`worker/webhook_sender.py`): its verdict, the
    endpoint's answer code (kept for the delivery log), the error and a requested retry delay."""

    verdict: Verdict
    answer: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def enqueue(session: Session, job: Job, *, now: datetime | None = None) -> WebhookDelivery | None:
    """The message for the job's current status, if it has a webhook that wants it (call right after
    the state change, in its transaction)."""
    event = EVENT_OF_STATUS.get(job.status)
    if event is None or not job.webhook_url or (job.webhook_events and event not in job.webhook_events):
        return None
    if _gone(session, job.id, job.webhook_url):
        return None  # the endpoint answered 410 to one of this job's messages: it wants no more
    now = now or utcnow()
    payload = {"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": render_job(job)}
    return _add(session, job, event, f"msg_{uuid.uuid4().hex}", payload, now)


def _gone(session: Session, job_id: str, url: str) -> bool:
    found = session.scalar(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.job_id == job_id,
            WebhookDelivery.url == url,
            WebhookDelivery.status == DeliveryStatus.GONE,
        )
        .limit(1)
    )
    return found is not None


def _add(
    session: Session, job: Job, event: str, message_id: str, payload: dict[str, Any], now: datetime
) -> WebhookDelivery:
    hold_s = session.info.get(HOLD_KEY)  # set when this session hands messages over after commit
    due = now + timedelta(seconds=hold_s) if hold_s else now
    delivery = WebhookDelivery(
        id=str(uuid.uuid4()),
        message_id=message_id,
        job_id=job.id,
        event=event,
        url=job.webhook_url,
        payload=payload,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=due,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    if hold_s:
        session.info.setdefault(NEW_KEY, []).append(delivery.id)
    log.info("webhook_enqueued", job_id=job.id, webhook_event=event, message_id=message_id)
    return delivery


def send_after_commit(sessions: sessionmaker[Session], send: Callable[[str], None], hold_s: float) -> None:
    """Hand each message that a transaction of ``sessions`` enqueued to ``send`` once it has committed
    (nothing for a rolled-back one). ``send`` failing is logged: the reservation then runs out and
    `claim_due` picks the message up."""
    sessions.configure(info={**sessions.kw.get("info", {}), HOLD_KEY: hold_s})

    def committed(session: Session) -> None:
        for delivery_id in session.info.pop(NEW_KEY, []):
            try:
                send(delivery_id)
            except Exception:
                log.warning("webhook_handover_failed", delivery_id=delivery_id, exc_info=True)

    def rolled_back(session: Session) -> None:
        session.info.pop(NEW_KEY, None)

    sa_event.listen(sessions, "after_commit", committed)
    sa_event.listen(sessions, "after_rollback", rolled_back)


def reservation_s(timeout_s: float) -> float:
    """How long a handed-over message stays reserved: longer than one attempt can take."""
    return 3 * timeout_s + 30


class Handover(NamedTuple):
    """A message handed to the webhook worker for the attempt after its ``attempts`` so far: a copy of
    the task that arrives after that attempt was made (a redelivery) sends nothing."""

    delivery_id: str
    attempts: int


def claim_due(
    session: Session, hold_s: float, *, now: datetime | None = None, limit: int = 100
) -> list[Handover]:
    """Due pending messages, each held for ``hold_s`` (longer than one attempt can take)."""
    now = now or utcnow()
    due = [WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now]
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(*due)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # skip one another transaction holds (a frozen worker)
        )
    )
    if not ids:
        return []
    rows = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), *due)
        .values(next_attempt_at=now + timedelta(seconds=hold_s))
        .returning(WebhookDelivery.id, WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    )
    return [Handover(delivery_id, attempts) for delivery_id, attempts in rows]


def pending(session: Session, delivery_id: str, attempts: int | None) -> WebhookDelivery | None:
    """The message if it still waits for the attempt after ``attempts`` it was handed over for (None:
    settled or attempted meanwhile, or unknown). ``attempts`` None (a hand-over from a release that
    did not send the count) skips that check."""
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    return delivery if attempts in (None, delivery.attempts) else None


def record_outcome(
    session: Session,
    delivery_id: str,
    attempts_before: int,
    outcome: Outcome,
    retry_s: Sequence[float],
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> DeliveryStatus | None:
    """Settle or reschedule the message after attempt number ``attempts_before + 1``. Fenced on the
    attempt count, so a duplicate attempt cannot overwrite a newer result; None when fenced out."""
    now = now or utcnow()
    attempts = attempts_before + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status_code": outcome.answer,
        "last_error": outcome.error,
        "next_attempt_at": None,
    }
    if outcome.verdict is Verdict.DELIVERED:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
    elif outcome.verdict is Verdict.GONE:
        values.update(status=DeliveryStatus.GONE)
    elif outcome.verdict is Verdict.REFUSED or attempts > len(retry_s):
        values.update(status=DeliveryStatus.FAILED)
    else:
        delay = retry_s[attempts - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
        # Retry-After is the endpoint's to choose, up to a day: an answer of years (or one no date can
        # hold) neither parks the message for good nor breaks recording the attempt.
        asked = min(outcome.retry_after_s or 0.0, MAX_RETRY_AFTER_S)
        values["next_attempt_at"] = now + timedelta(seconds=max(delay, asked))
    row = (
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.attempts == attempts_before,
            )
            .values(**values)
            .returning(WebhookDelivery)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        .scalars()
        .one_or_none()
    )
    if row is None:
        return None
    if row.status is DeliveryStatus.GONE:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.job_id == row.job_id,
                WebhookDelivery.url == row.url,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(status=DeliveryStatus.GONE, next_attempt_at=None)
            .execution_options(synchronize_session=False)
        )
    log.info(
        "webhook_attempt",
        job_id=row.job_id,
        message_id=row.message_id,
        attempt=attempts,
        answer=outcome.answer,
        error=outcome.error,
        result=row.status.value,
    )
    return row.status


def hand_back(
    session: Session, delivery_id: str, attempts_before: int, *, now: datetime | None = None
) -> bool:
    """A message whose attempt its worker gave up on at shutdown (the drain, worker/drain.py) falls due
    again at once, its attempt count unchanged: it did not fail, so its retry schedule is untouched.
    Fenced like `record_outcome`; False when it was settled meanwhile."""
    now = now or utcnow()
    handed = session.scalar(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.attempts == attempts_before,
        )
        .values(next_attempt_at=now)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    log.info("webhook_handed_back", delivery_id=delivery_id, attempts=attempts_before, applied=bool(handed))
    return handed is not None


def deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    """The job's messages, oldest first (the delivery log)."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )


def redeliver(session: Session, job: Job, *, now: datetime | None = None) -> WebhookDelivery:
    """Send the job's terminal event again: the same message (id and payload) when it was sent before,
    so receivers that already have it can tell, else a new one. Never an event the job's
    ``webhook_events`` leave out, nor to a URL that answered 410 (`NoWebhook`, like a job without a
    webhook)."""
    if not job.webhook_url:
        raise NoWebhook(f"job {job.id} has no webhook_url", details={"id": job.id})
    if not job.status.terminal:
        raise JobNotTerminal(
            f"job {job.id} is {job.status.value}; only a terminal event is redelivered",
            details={"id": job.id, "status": job.status.value},
        )
    event = EVENT_OF_STATUS[job.status]
    if job.webhook_events and event not in job.webhook_events:
        raise NoWebhook(
            f"job {job.id} did not ask for {event}; only an event it subscribed to is redelivered",
            details={"id": job.id, "event": event, "webhook_events": list(job.webhook_events)},
        )
    if _gone(session, job.id, job.webhook_url):
        raise NoWebhook(
            f"job {job.id}'s webhook_url answered 410 Gone: it gets no more messages",
            details={"id": job.id, "url": job.webhook_url},
        )
    now = now or utcnow()
    previous = next((d for d in reversed(deliveries(session, job.id)) if d.event == event), None)
    if previous is not None:
        return _add(session, job, event, previous.message_id, previous.payload, now)
    payload = {"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": render_job(job)}
    return _add(session, job, event, f"msg_{uuid.uuid4().hex}", payload, now)


def redeliveries(session: Session, job: Job) -> int:
    """How often the job's terminal event was redelivered: its messages beyond the first for that
    event (each redelivery adds one)."""
    event = EVENT_OF_STATUS.get(job.status)
    count = session.scalar(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.job_id == job.id, WebhookDelivery.event == event)
    )
    return max(0, (count or 0) - 1)


def count_pending(session: Session) -> dict[str, int]:
    """Messages not yet settled, per event (an index range: settled ones are never scanned)."""
    rows = session.execute(
        select(WebhookDelivery.event, func.count())
        .where(WebhookDelivery.status == DeliveryStatus.PENDING)
        .group_by(WebhookDelivery.event)
    ).all()
    return dict(rows)
