"""Webhook tasks on the ``webhooks`` queue (the light worker; never a GPU worker).

New messages are handed to ``deliver_webhook`` right after the commit that made them (see
`jobs.outbox.send_after_commit`); ``dispatch_webhooks`` (beat, every `webhook_dispatch_s`) hands over
retries and anything whose hand-over was lost. ``deliver_webhook`` makes one attempt and records its
outcome. The database decides what is due, so a lost task message only delays an attempt, and a task
carries the attempt count it was handed over at, so a redelivered copy sends nothing. When the
worker drains (worker/drain.py), a POST still unanswered at the end of the grace is given up on and its
message is due again at once, without counting as an attempt (receivers deduplicate on webhook-id).
"""

from __future__ import annotations

from functools import cache

import httpcore
import structlog

from jobs import keys, outbox, queries
from jobs.db import session_scope
from jobs.netguard import guarded_pool
from jobs.outbox import Outcome, Verdict
from jobs.queue import DELIVER_WEBHOOK_TASK, WEBHOOKS_QUEUE
from worker import metrics
from worker.celery_app import app
from worker.runtime import get_runtime
from worker.webhook_sender import send

log = structlog.get_logger(__name__)


@cache
def _pool(allow_private: bool, pid: int) -> httpcore.ConnectionPool:
    return guarded_pool(allow_private, get_runtime().settings.allowed_url_ports)  # one per process (pid key)


@app.task(name="worker.dispatch_webhooks", acks_late=True, ignore_result=True)
def dispatch_webhooks() -> int:
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        due = outbox.claim_due(session, outbox.reservation_s(rt.settings.webhook_timeout_s))
    for delivery_id, attempts in due:
        app.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id, attempts], queue=WEBHOOKS_QUEUE)
    return len(due)


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str, attempts: int | None = None) -> str | None:
    """Attempt number ``attempts + 1`` at one message, signed with the secrets of the job's API key (or
    the deployment's when auth is off); returns the message's status afterwards (None: nothing to do,
    e.g. a redelivered copy of a task whose attempt was made, which must not send a retry ahead of its
    schedule; "handed_back": the drain's grace ran out first)."""
    rt = get_runtime()
    settings = rt.settings
    with session_scope(rt.sessions) as session:
        delivery = outbox.pending(session, delivery_id, attempts)
        if delivery is None:
            return None
        session.expunge(delivery)
        owner = queries.get_job(session, delivery.job_id).owner
        secrets = keys.webhook_secrets_of(session, owner) or settings.webhook_secrets
    structlog.contextvars.bind_contextvars(job_id=delivery.job_id)
    try:
        if secrets:
            pool = _pool(settings.allow_private_urls, rt.pid)
            outcome = rt.drain.within_grace(lambda: send(pool, delivery, secrets, settings.webhook_timeout_s))
        else:  # the deployment's secrets were removed after the job was accepted
            outcome = Outcome(Verdict.REFUSED, error="no webhook signing secret is configured")
        if outcome is None:
            with session_scope(rt.sessions) as session:
                outbox.hand_back(session, delivery_id, delivery.attempts)
            return "handed_back"
        with session_scope(rt.sessions) as session:
            status = outbox.record_outcome(
                session, delivery_id, delivery.attempts, outcome, settings.webhook_retry_s
            )
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.verdict.value).inc()
    finally:
        structlog.contextvars.unbind_contextvars("job_id")
    return status.value if status is not None else None
