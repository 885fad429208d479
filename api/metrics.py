"""Prometheus metrics: HTTP requests (recorded by the middleware) and job/queue/worker gauges, read from
the database at scrape time so every API replica reports the same truth."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from jobs import outbox, queries, workers
from jobs.models import JobStatus
from jobs.settings import Settings

log = structlog.get_logger(__name__)


class JobsCollector(Collector):
    """Open jobs by model and state, queue depth and oldest queued age per model, ready workers per
    model, pending webhook messages by event. Every query reads an index range of open rows only, so a
    scrape costs the same however many jobs have ended (outcome counts are the workers' counters)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                counts = queries.count_open(session)
                queues = queries.queue_stats(session)
                ready = workers.ready_workers(session, self.settings.worker_stale_s)
                deliveries = outbox.count_pending(session)
        except Exception:
            log.warning("metrics_collect_failed", exc_info=True)
            return
        jobs = GaugeMetricFamily(
            "varedit_jobs", "Open (queued or running) jobs by model and state", labels=["model", "status"]
        )
        depth = GaugeMetricFamily("varedit_queue_depth", "Queued jobs per model", labels=["model"])
        oldest = GaugeMetricFamily(
            "varedit_queue_oldest_age_seconds", "Wait of the oldest queued job per model", labels=["model"]
        )
        ready_gauge = GaugeMetricFamily(
            "varedit_workers_ready", "Ready GPU workers per model", labels=["model"]
        )
        models = sorted({*self.settings.models, *(m for m, _ in counts), *queues})
        for model in models:
            for status in (JobStatus.QUEUED, JobStatus.RUNNING):
                jobs.add_metric([model, status.value], counts.get((model, status), 0))
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
        yield from (jobs, depth, oldest, ready_gauge, hooks)


# Up to 10 minutes: long polls (`Prefer: wait`, up to a minute) and event streams must not all land
# in +Inf.
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """A registry per app (tests build many apps) with the HTTP instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "varedit_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "varedit_http_request_duration_seconds",
            "HTTP request duration by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=HTTP_BUCKETS_S,
        )

    def watch_jobs(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.registry.register(JobsCollector(sessions, settings))
