"""The database-derived gauges are exported once, by beat: a Prometheus `sum` over every target (API
replicas and beat) gives the true queue depth."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from prometheus_client import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from jobs import workers
from jobs.db import session_scope
from jobs.models import Job, JobStatus, utcnow
from jobs.settings import Settings
from serve.redis_server import free_port
from tests.api.test_edits import post_multipart
from tests.conftest import ApiHarness
from worker.job_gauges import RECENT_S, registry_for


def summed(texts: list[str], name: str, **labels: str) -> float:
    """What `sum(name{labels})` over these scrapes gives."""
    total = 0.0
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
    return total


@pytest.fixture
def replicas(api_settings: Settings) -> Iterator[tuple[ApiHarness, ApiHarness]]:
    """Two API processes' apps over one database, as two replicas behind a load balancer."""
    with ApiHarness(api_settings) as first, ApiHarness(api_settings) as second:
        yield first, second


def test_replicas_and_beat_summed_count_each_queued_job_once(
    replicas: tuple[ApiHarness, ApiHarness], api_settings: Settings
) -> None:
    first, second = replicas
    for harness, n in ((first, 3), (second, 2)):
        for _ in range(n):
            assert post_multipart(harness).status_code == 202
    port = free_port()
    server, thread = start_http_server(
        port, addr="127.0.0.1", registry=registry_for(first.sessions, api_settings)
    )
    try:
        beat_text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.shutdown()
        thread.join()
    texts = [first.client.get("/metrics").text, second.client.get("/metrics").text, beat_text]
    assert summed(texts, "varedit_queue_depth", model="tiny") == 5
    assert summed(texts, "varedit_jobs", model="tiny", status="queued") == 5
    # the per-process counters still add up across the replicas
    assert summed(texts, "varedit_http_requests_total", route="/v1/edits", status="202") == 5


def test_gauges_read_open_jobs_ready_workers_and_the_oldest_wait(harness: ApiHarness) -> None:
    post_multipart(harness)
    with session_scope(harness.sessions) as session:
        workers.record_worker(session, "gpu-0", "tiny", "host", ready=True)
    text = generate_latest(registry_for(harness.sessions, harness.settings)).decode()
    assert 'varedit_jobs{model="tiny",status="queued"} 1.0' in text
    assert 'varedit_jobs{model="tiny",status="running"} 0.0' in text
    assert 'status="succeeded"' not in text  # ended jobs are never counted at scrape time
    assert 'varedit_queue_depth{model="tiny"} 1.0' in text
    assert summed([text], "varedit_queue_oldest_age_seconds", model="tiny") >= 0
    assert 'varedit_workers_ready{model="tiny"} 1.0' in text
    assert 'varedit_webhook_deliveries_pending{event="job.succeeded"}' in text


def test_jobs_that_ran_count_as_recent_use_for_five_minutes(harness: ApiHarness) -> None:
    """What keeps a model's workers from scaling to zero between sparse short jobs: a job a worker ran
    counts for RECENT_S after it ended; one canceled or expired in the queue never counts."""
    ids = [post_multipart(harness).json()["id"] for _ in range(4)]
    now = utcnow()
    ended = {  # id -> (status, started_at, finished_at)
        ids[0]: (JobStatus.SUCCEEDED, now - timedelta(seconds=30), now - timedelta(seconds=29)),
        ids[1]: (
            JobStatus.FAILED,
            now - timedelta(seconds=RECENT_S - 10),
            now - timedelta(seconds=RECENT_S - 20),
        ),
        ids[2]: (JobStatus.CANCELED, None, now - timedelta(seconds=5)),  # canceled while queued
        ids[3]: (JobStatus.SUCCEEDED, now - timedelta(hours=1), now - timedelta(seconds=RECENT_S + 5)),
    }
    with session_scope(harness.sessions) as session:
        for job_id, (status, started_at, finished_at) in ended.items():
            job = session.get(Job, job_id)
            job.status, job.started_at, job.finished_at = status, started_at, finished_at
    text = generate_latest(registry_for(harness.sessions, harness.settings)).decode()
    assert 'varedit_jobs_ended_recently{model="tiny"} 2.0' in text
