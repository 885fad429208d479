"""Container healthcheck for a GPU worker: exit 0 when a worker on this host is ready.

Ready means its pool child loaded the weights, ran the warm-up edit and refreshed its heartbeat row
within ``worker_stale_s``. Each container has its own hostname, so the rows of this host are this
container's workers.

    python -m worker.healthcheck [WORKER_ID]
"""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from jobs.db import make_engine, make_sessionmaker
from jobs.models import WorkerHeartbeat
from jobs.settings import get_settings


def ready_workers(worker_id: str | None = None) -> list[str]:
    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        fresh_after = datetime.now(UTC) - timedelta(seconds=settings.worker_stale_s)
        query = select(WorkerHeartbeat.worker_id).where(
            WorkerHeartbeat.ready.is_(True), WorkerHeartbeat.last_seen >= fresh_after
        )
        if worker_id:
            query = query.where(WorkerHeartbeat.worker_id == worker_id)
        else:
            query = query.where(WorkerHeartbeat.hostname == socket.gethostname())
        with make_sessionmaker(engine)() as session:
            return list(session.scalars(query))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ready = ready_workers(args[0] if args else None)
    print("ready: " + ", ".join(ready) if ready else "not ready")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
