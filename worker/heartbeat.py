"""The worker's liveness row (`WorkerHeartbeat`), read by the API's /v1/models, beat's gauges and the
container healthcheck (worker/healthcheck.py); /readyz does not wait for workers.

A GPU worker process writes its row with ``ready=False`` when it starts loading, ``ready=True`` once
the weights are loaded and the warm-up edit ran, refreshes ``last_seen`` every ``heartbeat_s`` from a
daemon thread, and deletes its row when it shuts down cleanly. A worker that dies without
shutting down simply stops refreshing; the API counts a row as ready only while ``last_seen`` is
younger than ``worker_stale_s``.
"""

from __future__ import annotations

import threading

import structlog
from sqlalchemy.orm import Session, sessionmaker

from jobs import workers
from jobs.db import session_scope

log = structlog.get_logger(__name__)


def record(
    sessions: sessionmaker[Session], *, worker_id: str, model: str, hostname: str, ready: bool
) -> None:
    with session_scope(sessions) as session:
        workers.record_worker(session, worker_id, model, hostname, ready)


def remove(sessions: sessionmaker[Session], worker_id: str) -> None:
    with session_scope(sessions) as session:
        workers.remove_worker(session, worker_id)


class HeartbeatThread(threading.Thread):
    """Refreshes the rows of the models this process serves every `interval_s` until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        rows: list[tuple[str, str]],
        hostname: str,
        interval_s: float,
    ) -> None:
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

    def goodbye(self) -> None:
        """Clean shutdown: forget the rows (a crashed worker's rows go stale instead)."""
        for worker_id, _ in self.rows:
            try:
                remove(self.sessions, worker_id)
            except Exception:
                log.warning("worker_goodbye_failed", worker_id=worker_id, exc_info=True)
