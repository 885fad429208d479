"""The worker's liveness row (`WorkerHeartbeat`), read by the API's /v1/models and /readyz.

A GPU worker process writes its row with ``ready=False`` when it starts loading, ``ready=True`` once
the weights are loaded and the warm-up edit ran, refreshes ``last_seen`` every ``heartbeat_s`` from a
daemon thread, and writes ``ready=False`` when it shuts down cleanly. A worker that dies without
shutting down simply stops refreshing; the API counts a row as ready only while ``last_seen`` is
younger than ``worker_stale_s``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import session_scope
from jobs.models import WorkerHeartbeat

log = structlog.get_logger(__name__)


def record(
    sessions: sessionmaker[Session], *, worker_id: str, model: str, hostname: str, ready: bool
) -> None:
    """Insert or update this worker's row (one writer per worker_id, so no upsert race)."""
    now = datetime.now(UTC)
    with session_scope(sessions) as session:
        row = session.get(WorkerHeartbeat, worker_id)
        if row is None:
            session.add(WorkerHeartbeat(worker_id=worker_id, model=model, hostname=hostname, ready=ready,
                                        started_at=now, last_seen=now))
        else:
            if not row.ready and ready or row.model != model:
                row.started_at = now
            row.model, row.hostname, row.ready, row.last_seen = model, hostname, ready, now


class HeartbeatThread(threading.Thread):
    """Refreshes the rows of the models this process serves every `interval_s` until stopped."""

    def __init__(self, sessions: sessionmaker[Session], *, rows: list[tuple[str, str]], hostname: str,
                 interval_s: float) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.sessions = sessions
        self.rows = rows  # (worker_id, model)
        self.hostname = hostname
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.beat(ready=True)

    def beat(self, *, ready: bool) -> None:
        for worker_id, model in self.rows:
            try:
                record(self.sessions, worker_id=worker_id, model=model, hostname=self.hostname, ready=ready)
            except Exception:  # a DB blip must not kill the thread; the next beat retries
                log.warning("worker_heartbeat_failed", worker_id=worker_id, exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()
