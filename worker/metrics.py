"""Prometheus metrics of a worker process: what only the worker sees. A GPU worker: run time, scales
per second, batch sizes, outcomes, busy or idle; the light worker: webhook attempts. Jobs by state,
queue depth and ready workers are read from the database once, by beat (worker/job_gauges.py).

Served from the pool child on ``VAREDIT_WORKER_METRICS_PORT`` when set (one port per worker process;
in compose, one per service). Without it the instruments still count, nobody scrapes them.
"""

from __future__ import annotations

import structlog
from billiard.process import current_process
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry()

EDITS = Counter(
    "varedit_worker_edits", "Jobs that left this worker, by outcome", ["model", "outcome"], registry=REGISTRY
)
RUN_SECONDS = Histogram(
    "varedit_worker_run_seconds",
    "Pipeline time of one batch (all its scales)",
    ["model"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.175, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 15, 30, 60, 120, 300),
)
QUEUE_WAIT_SECONDS = Histogram(
    "varedit_worker_queue_wait_seconds",
    "From acceptance to claim",
    ["model"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
SCALES = Counter(
    "varedit_worker_scales", "Scales generated (rate() gives scales per second)", ["model"], registry=REGISTRY
)
WEBHOOK_ATTEMPTS = Counter(
    "varedit_webhook_attempts",
    "Webhook delivery attempts of this (light) worker, by verdict (delivered, retry, gone, refused)",
    ["verdict"],
    registry=REGISTRY,
)
BUSY = Gauge(
    "varedit_worker_busy",
    "1 while this worker runs a batch, else 0 (avg by model is the fleet's utilisation)",
    ["model"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "varedit_worker_batch_size",
    "Jobs per pipeline call",
    ["model"],
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32),
)


def serve_pool_metrics(port: int | None) -> int | None:
    """Start the metrics endpoint when ``port`` (VAREDIT_WORKER_METRICS_PORT) is set; returns its port.

    A worker with several pool processes (the light worker runs ``-c 4``) serves each one's own
    counters on its own port: pool process i on the port + i (a replaced process gets its
    predecessor's index, so its port). A port that cannot be bound (or is past 65535) is logged and
    left unserved: it never stops the process from working (an edit worker from announcing itself
    ready)."""
    if port is None:
        return None
    port_i = port + int(getattr(current_process(), "index", 0) or 0)
    try:
        start_http_server(port_i, registry=REGISTRY)
    except (OSError, OverflowError) as e:
        log.error("worker_metrics_port_unavailable", port=port_i, error=f"{type(e).__name__}: {e}")
        return None
    log.info("worker_metrics_serving", port=port_i)
    return port_i
