"""Publishing ``run_edit`` to the model's Celery queue (and webhook hand-overs to ``webhooks``), by task
name, without importing ``worker/``. `CeleryPublisher.publish_run_edit` is the one place that sends
``run_edit``: the API after a submit, the reapers after a requeue, a worker giving a job back.

The broker only wakes workers; the database is the truth. A failed publish leaves the job ``queued``,
flagged for the periodic dispatcher (`reapers.stranded_queued`), which republishes it (`publish_or_flag`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog
from celery import Celery
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import session_scope
from jobs.models import Job, JobStatus
from jobs.settings import Settings

RUN_EDIT_TASK = "worker.run_edit"
DELIVER_WEBHOOK_TASK = "worker.deliver_webhook"
WEBHOOKS_QUEUE = "webhooks"  # the light worker's; never a GPU worker's
PUBLISH_TIMEOUT_S = 5  # a request must not hang on a dead broker; the dispatcher covers the miss

log = structlog.get_logger(__name__)


def queue_name(model: str) -> str:
    """The Celery queue served by the GPU workers of ``model``."""
    return f"edits.{model}"


class Publisher(Protocol):
    def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
        """Send ``run_edit(job_id)`` to ``edits.<model>`` (delivered after ``delay_s``); raises when
        the broker refuses it."""


def make_celery(settings: Settings) -> Celery:
    """A Celery app that only sends tasks (the API's); the worker builds its own from the same settings."""
    app = Celery("varedit-publisher", broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=PUBLISH_TIMEOUT_S,
        broker_connection_retry=False,
        broker_transport_options={"max_retries": 1, "socket_timeout": PUBLISH_TIMEOUT_S},
    )
    return app


class CeleryPublisher:
    """`Publisher` over a Celery app: ``send_task`` by name to the model's queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
        self.app.send_task(
            RUN_EDIT_TASK,
            args=[job_id],
            queue=queue_name(model),
            countdown=delay_s or None,
            retry=False,
        )
        log.info("job_published", job_id=job_id, queue=queue_name(model), delay_s=delay_s)


def publish_quietly(publisher: Publisher, job_id: str, model: str, delay_s: float = 0) -> bool:
    """Publish after commit; a broker failure is logged, not raised (the job stays queued and the
    dispatcher republishes it). True when sent."""
    try:
        publisher.publish_run_edit(job_id, model, delay_s)
    except Exception:
        log.warning("job_publish_failed", job_id=job_id, model=model, exc_info=True)
        return False
    return True


# `dispatched_at` of a queued job whose publish failed: older than any cutoff, so the dispatcher's next
# pass republishes it.
NEVER_DISPATCHED = datetime(1970, 1, 1, tzinfo=UTC)


def publish_or_flag(
    sessions: sessionmaker[Session], publisher: Publisher, job_id: str, model: str, delay_s: float = 0
) -> None:
    """Publish after commit; when the broker refuses, flag the job for the dispatcher's next pass
    (`reapers.stranded_queued`, every 30 s) instead of its ``stranded_after_s`` wait. Messages only wake
    workers, who claim the oldest queued job, so one missing message leaves the newest queued job
    without one, whoever owns it, and that job would wait idle workers out until then. A flag that
    fails too (the database is down as well) leaves the plain stranded wait."""
    if publish_quietly(publisher, job_id, model, delay_s):
        return
    try:
        with session_scope(sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(dispatched_at=NEVER_DISPATCHED)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError:
        log.warning("job_publish_flag_failed", job_id=job_id, exc_info=True)


def webhook_sender(app: Celery) -> Callable[[str], None]:
    """Hands one new webhook message (no attempt yet) to the webhook worker (for
    `jobs.outbox.send_after_commit`)."""
    return lambda delivery_id: app.send_task(
        DELIVER_WEBHOOK_TASK, args=[delivery_id, 0], queue=WEBHOOKS_QUEUE, retry=False
    )
