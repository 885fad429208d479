"""Tenants cannot hurt each other and operator surfaces are closed: priority is a granted right, every
write route is rate-limited, redeliveries are capped, the in-flight cap holds under concurrency, and
with keys on /v1/models and /metrics need credentials."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, service, transitions
from jobs.db import session_scope
from jobs.errors import InFlightLimit
from jobs.settings import Settings
from jobs.storage import LocalStorage
from tests.api.test_edits import post_multipart
from tests.conftest import ApiHarness


@pytest.fixture
def keyed(
    make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str
) -> Callable[..., ApiHarness]:
    def make(**overrides: object) -> ApiHarness:
        values = {"database_url": sqlite_url, "broker_url": redis_url, "auth": "api_key", **overrides}
        return ApiHarness(make_settings(**values))

    return make


def _key(harness: ApiHarness, **limits: object) -> dict[str, str]:
    with session_scope(harness.sessions) as session:
        token = keys.create(session, "tenant", **limits).token
    return {"Authorization": f"Bearer {token}"}


def test_priority_above_normal_is_a_right_granted_per_key(keyed) -> None:
    with keyed() as harness:
        plain, granted = _key(harness), _key(harness, max_priority=5)
        refused = post_multipart(harness, headers=plain, priority="1")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "priority_not_allowed"
        assert post_multipart(harness, headers=plain, priority="-3").status_code == 202  # lower is fine
        assert post_multipart(harness, headers=granted, priority="5").status_code == 202
        assert post_multipart(harness, headers=granted, priority="6").status_code == 403


def test_every_write_route_counts_against_the_keys_rate(keyed) -> None:
    with keyed() as harness:
        headers = _key(harness, rate_limit="3/minute")
        first = post_multipart(harness, headers=headers)
        job_id = first.json()["id"]
        assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("3", "2")
        assert harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
        assert (
            harness.client.post(f"/v1/jobs/{job_id}/webhooks/redeliver", headers=headers).status_code == 409
        )
        over = harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert over.headers["ratelimit-remaining"] == "0" and int(over.headers["ratelimit-reset"]) >= 1
        assert harness.client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200  # reads are free


def test_redeliveries_are_capped_per_job(harness: ApiHarness, webhook_receiver) -> None:
    harness.settings.max_redeliveries = 2
    harness.settings.allow_private_urls = True  # the receiver listens on 127.0.0.1
    job_id = post_multipart(harness, webhook_url=webhook_receiver.url).json()["id"]
    with session_scope(harness.sessions) as session:
        transitions.cancel(session, job_id)
    answers = [harness.client.post(f"/v1/jobs/{job_id}/webhooks/redeliver").status_code for _ in range(4)]
    assert answers == [202, 202, 429, 429]
    body = harness.client.post(f"/v1/jobs/{job_id}/webhooks/redeliver").json()
    assert body["error"]["code"] == "redelivery_limit"


def test_the_in_flight_cap_holds_for_concurrent_submits(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # given eight submits racing for an owner allowed three jobs in flight (SQLite and PostgreSQL)
    storage = LocalStorage(tmp_path / "objects")
    spec = transitions.EditSpec("make it blue", "tiny", 32, 1, 3.0, 0.1, 3600)
    start, outcomes = threading.Barrier(8), []

    class NoBroker:
        def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
            pass

    def submit() -> None:
        start.wait()
        try:
            service.submit_edit(
                sessions,
                storage,
                NoBroker(),
                owner="alice",
                spec=spec,
                image=b"png",
                content_type="image/png",
                max_in_flight=3,
            )
            outcomes.append("accepted")
        except InFlightLimit:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly three got in, and the refused ones left no object behind
    assert sorted(outcomes) == ["accepted"] * 3 + ["refused"] * 5
    assert len([p for p in storage.root.rglob("*") if p.is_file()]) == 3


def test_with_keys_on_models_needs_a_key_and_metrics_its_token(keyed) -> None:
    with keyed() as harness:
        assert harness.client.get("/v1/models").status_code == 401
        assert harness.client.get("/v1/models", headers=_key(harness)).status_code == 200
        assert harness.client.get("/metrics").status_code == 403  # keys on, no metrics token: off
    with keyed(metrics_token="scrape-me") as harness:
        assert harness.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
        scraped = harness.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and "varedit_http_requests_total" in scraped.text


def test_on_a_laptop_metrics_stay_open(harness: ApiHarness) -> None:
    assert harness.client.get("/metrics").status_code == 200
