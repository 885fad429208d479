"""The worker registry: which edit workers are alive and ready (their heartbeat rows), and the facts
they report about the models they loaded (resolutions, recommended sampling settings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.models import ServedModel, WorkerHeartbeat, utcnow
from jobs.settings import ModelOverride, Settings


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


def _insert(session: Session) -> Callable[..., Any]:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (an upsert) on both backends."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


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
    stmt = _insert(session)(WorkerHeartbeat).values(
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


# -- the facts of served models -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the API needs to know of a model: the resolutions it serves (the first is the default) and
    its recommended sampling settings (``cfg``, ``tau`` and any other the sampler takes)."""

    name: str
    resolutions: list[int]
    sampling: dict[str, float]
    description: str = ""  # what the model understands, in a sentence or two for people trying it
    # {"instruction", "image_key", "content_type"}: the image is in storage, put there by the worker
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def default_resolution(self) -> int:
        return self.resolutions[0]

    def with_override(self, override: ModelOverride | None) -> ModelFacts:
        """These facts as the operator adjusted them (a per-model setting)."""
        if override is None:
            return self
        sampling = {**self.sampling, **override.sampling()}
        resolutions = self._narrowed(override.resolutions)
        return ModelFacts(self.name, resolutions, sampling, self.description, self.examples)

    def _narrowed(self, chosen: list[int] | None) -> list[int]:
        """The operator's resolutions (their order) that the workers reported; all of them before any
        worker has (scaling from zero). One they cannot run would only fail its jobs, so it is dropped,
        and a choice that leaves none keeps what the workers reported."""
        if not chosen:
            return list(self.resolutions)
        if not self.resolutions:
            return list(chosen)
        return [r for r in chosen if r in self.resolutions] or list(self.resolutions)


def record_model(session: Session, facts: ModelFacts, worker_id: str, *, now: datetime | None = None) -> None:
    """Upsert the facts a worker reports about the model it has loaded (when it announces itself ready)."""
    now = _now(now)
    values = {
        "resolutions": facts.resolutions,
        "sampling": facts.sampling,
        "description": facts.description,
        "examples": facts.examples,
        "reported_by": worker_id,
    }
    stmt = _insert(session)(ServedModel).values(name=facts.name, updated_at=now, **values)
    stmt = stmt.on_conflict_do_update(index_elements=[ServedModel.name], set_={**values, "updated_at": now})
    session.execute(stmt)


def model_facts(session: Session, settings: Settings) -> dict[str, ModelFacts | None]:
    """Every model this deployment serves (``settings.models``, in order) with its facts: as its workers
    reported them, adjusted by the operator's override. None while nothing is known: no worker has
    loaded the model yet and no override names its resolutions."""
    rows = {row.name: row for row in session.execute(select(ServedModel)).scalars()}
    out: dict[str, ModelFacts | None] = {}
    for name in settings.models:
        row, override = rows.get(name), settings.model_overrides.get(name)
        if row is not None:
            facts = ModelFacts(name, list(row.resolutions), dict(row.sampling), row.description, row.examples)
            out[name] = facts.with_override(override)
        elif override is not None and override.complete:
            out[name] = ModelFacts(name, [], {}).with_override(override)
        else:
            out[name] = None
    return out
