"""Prometheus metrics of one API process: HTTP requests, recorded by the middleware. The platform-wide
gauges (queue depth, open jobs, ready workers) are exported once, by beat (worker/job_gauges.py): every
series here is this process's own, so a Prometheus `sum` over the replicas is the true total."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
