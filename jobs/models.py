"""Tables of the job platform (SQLAlchemy 2). API shapes live in ``api/schemas.py`` and ``jobs/views.py``."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Enum,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    or_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The job states are part of the public contract: one definition, shared with the client.
from varedit_client.types import TERMINAL_STATUSES as TERMINAL_STATUSES
from varedit_client.types import JobStatus as JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive ones, PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The job states are part of the public contract: one definition, shared with the client.


class Base(DeclarativeBase):
    pass


def _status_column(enum_type: type[enum.StrEnum] = JobStatus, name: str = "job_status") -> Enum:
    return Enum(
        enum_type,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
        create_constraint=True,
    )


class Job(Base):
    """One edit request from submission to its terminal state; the database is the source of truth."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))  # the principal that submitted it (auth plugs in here)
    status: Mapped[JobStatus] = mapped_column(_status_column(), default=JobStatus.QUEUED)

    # What to do.
    instruction: Mapped[str] = mapped_column(Text)
    # What guidance steers away from: the unconditional text of CFG; "" is the model's learned null text.
    negative_instruction: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(64))
    resolution: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)  # the seed actually used (drawn at submit when not given)
    cfg: Mapped[float] = mapped_column(Float)
    tau: Mapped[float] = mapped_column(Float)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    source_key: Mapped[str | None] = mapped_column(String(255))  # None once purged after the result TTL
    source_content_type: Mapped[str] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    previews: Mapped[bool] = mapped_column(Boolean, default=False)  # store a preview after every scale

    # Execution: lease, fencing and progress.
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every claim; fences completion
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress_scale: Mapped[int | None] = mapped_column(Integer)
    progress_scales: Mapped[int | None] = mapped_column(Integer)
    # The previews of scales 1..preview_scale are stored (`storage.preview_key`); written with progress.
    preview_scale: Mapped[int | None] = mapped_column(Integer)

    # Outcome.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_key: Mapped[str | None] = mapped_column(String(255))  # None once purged after the result TTL
    result_content_type: Mapped[str | None] = mapped_column(String(64))
    result_width: Mapped[int | None] = mapped_column(Integer)
    result_height: Mapped[int | None] = mapped_column(Integer)
    result_bytes: Mapped[int | None] = mapped_column(Integer)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Clock.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    start_deadline: Mapped[datetime] = mapped_column(UTCDateTime())  # never started by this -> expired
    dispatched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # last (re)publish
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # first claim
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status_model", "status", "model", "resolution", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_finished", "finished_at"),
    )

    @property
    def progress(self) -> tuple[int, int] | None:
        if self.progress_scale is None or self.progress_scales is None:
            return None
        return self.progress_scale, self.progress_scales


def startable(now: datetime) -> ColumnElement[bool]:
    """A queued job may still start: before its start deadline, or at any time once it has started
    before (requeued after a lost lease, a transient fault or a drain). The deadline bounds the wait for
    a first start; a started job's retries are bounded by max_attempts."""
    return or_(Job.start_deadline > now, Job.started_at.is_not(None))


# The order in which workers claim a model's queued jobs (`jobs.transitions.claim_next`), and its index:
# one index scan to the first row, however deep the queue.
CLAIM_ORDER = (Job.priority.desc(), Job.created_at, Job.id)
Index("ix_jobs_claim_order", Job.status, Job.model, *CLAIM_ORDER)


class IdempotencyRecord(Base):
    """The first response to a (owner, Idempotency-Key), replayed for retries of the same request."""

    __tablename__ = "idempotency_records"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(36))  # None while the first request is in flight
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_idempotency_created", "created_at"),)


class WorkerHeartbeat(Base):
    """Liveness of one GPU worker process; the API counts ready workers from these rows."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(255))
    ready: Mapped[bool] = mapped_column(Boolean, default=False)  # weights loaded and warm-up edit done
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_worker_heartbeats_model_seen", "model", "last_seen"),)


class ServedModel(Base):
    """What a worker reported about a model it loaded: the resolutions it serves and its recommended
    sampling settings. Kept while no worker runs (scaled to zero), so the API can still accept jobs."""

    __tablename__ = "served_models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    resolutions: Mapped[list[int]] = mapped_column(JSON)
    sampling: Mapped[dict[str, float]] = mapped_column(JSON)  # cfg, tau and the sampler's other settings
    description: Mapped[str] = mapped_column(Text, default="")  # what it understands, for people
    examples: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)  # instruction, image_key
    reported_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (`next_attempt_at`)
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # every attempt of the retry schedule failed
    GONE = "gone"  # the endpoint answered 410: this job's webhooks stop


class WebhookDelivery(Base):
    """One webhook message to send (outbox row, inserted in the transaction of the job's state change).

    ``message_id`` is the Standard Webhooks ``webhook-id``: stable across retries and redeliveries, so
    receivers can deduplicate."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"type", "timestamp", "data": job JSON}
    status: Mapped[DeliveryStatus] = mapped_column(
        _status_column(DeliveryStatus, "webhook_delivery_status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None once settled
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id", "created_at"),
    )


class ApiKey(Base):
    """A client's credential. Only a hash of the token is kept; the token is shown once, at creation.

    Each key has its own webhook signing secret (Standard Webhooks ``whsec_``); after a rotation the
    previous one keeps signing too, until the next rotation, so receivers can switch without a gap."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the token; jobs' owner
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64))
    webhook_secret: Mapped[str] = mapped_column(String(128))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    rate_limit: Mapped[str | None] = mapped_column(String(64))  # e.g. "60/minute"; None: the deployment's
    max_in_flight: Mapped[int | None] = mapped_column(Integer)  # queued + running; None: the deployment's
    max_priority: Mapped[int] = mapped_column(Integer, default=0)  # highest job priority it may ask for
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def webhook_secrets(self) -> list[str]:
        return [s for s in (self.webhook_secret, self.previous_webhook_secret) if s]
