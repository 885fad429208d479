"""The database-derived gauges: open jobs by state, jobs run and ended in the last `RECENT_S`, queue
depth and oldest queued age, ready workers and pending webhook messages, per model.

They describe the whole platform, not one process, so exactly one process exports them: Celery beat,
of which exactly one runs (the embedded runner's light worker embeds it). A Prometheus `sum` over all
targets then counts each job once, which would not hold if every API replica exported them. Served on
``VAREDIT_JOB_METRICS_PORT`` when set; every query reads an index range of open rows only, so a scrape
costs the same however many jobs have ended (the recent ends: a range of `ix_jobs_finished`; outcome
counts are the workers' counters).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import structlog
from celery.signals import beat_init
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from jobs import outbox, queries, workers
from jobs.db import make_engine, make_sessionmaker
from jobs.models import JobStatus, utcnow
from jobs.settings import Settings, get_settings

log = structlog.get_logger(__name__)

# The window of `varedit_jobs_ended_recently`: a model used within it counts as in use to the
# autoscaler, however briefly each edit ran (deploy/k8s/base/gpu-worker/scaledobject.yaml).
RECENT_S = 300


class JobsCollector(Collector):
    """Reads the gauges from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                counts = queries.count_open(session)
                ended = queries.count_ran_and_ended_since(session, utcnow() - timedelta(seconds=RECENT_S))
                queues = queries.queue_stats(session)
                ready = workers.ready_workers(session, self.settings.worker_stale_s)
                deliveries = outbox.count_pending(session)
        except Exception:
            log.warning("metrics_collect_failed", exc_info=True)
            return
        jobs = GaugeMetricFamily(
            "varedit_jobs", "Open (queued or running) jobs by model and state", labels=["model", "status"]
        )
        ended_gauge = GaugeMetricFamily(
            "varedit_jobs_ended_recently",
            f"Jobs per model that a worker ran and that ended in the last {RECENT_S} s",
            labels=["model"],
        )
        depth = GaugeMetricFamily("varedit_queue_depth", "Queued jobs per model", labels=["model"])
        oldest = GaugeMetricFamily(
            "varedit_queue_oldest_age_seconds", "Wait of the oldest queued job per model", labels=["model"]
        )
        ready_gauge = GaugeMetricFamily(
            "varedit_workers_ready", "Ready GPU workers per model", labels=["model"]
        )
        models = sorted({*self.settings.models, *(m for m, _ in counts), *queues, *ended})
        for model in models:
            for status in (JobStatus.QUEUED, JobStatus.RUNNING):
                jobs.add_metric([model, status.value], counts.get((model, status), 0))
            ended_gauge.add_metric([model], ended.get(model, 0))
            stats = queues.get(model, queries.QueueStats(0, 0.0))
            depth.add_metric([model], stats.depth)
            oldest.add_metric([model], stats.oldest_age_s)
            ready_gauge.add_metric([model], ready.get(model, 0))
        hooks = GaugeMetricFamily(
            "varedit_webhook_deliveries_pending",
            "Webhook messages not yet settled, by event",
            labels=["event"],
        )
        for event in outbox.EVENTS:
            hooks.add_metric([event], deliveries.get(event, 0))
        yield from (jobs, ended_gauge, depth, oldest, ready_gauge, hooks)


def registry_for(sessions: sessionmaker[Session], settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobsCollector(sessions, settings))
    return registry


def serve(settings: Settings) -> int | None:
    """Start the gauges' endpoint on the configured port (a daemon thread); returns the port."""
    if settings.job_metrics_port is None:
        return None
    sessions = make_sessionmaker(make_engine(settings.database_url))
    registry = registry_for(sessions, settings)
    start_http_server(settings.job_metrics_port, addr=settings.job_metrics_host, registry=registry)
    log.info("job_metrics_serving", host=settings.job_metrics_host, port=settings.job_metrics_port)
    return settings.job_metrics_port


@beat_init.connect
def _serve_on_beat_start(**_: Any) -> None:
    serve(get_settings())
