"""Operations surface: health, readiness, models, metrics, request ids, logs, OpenAPI, error envelopes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs import workers
from jobs.db import session_scope
from jobs.settings import Settings
from serve.redis_server import free_port
from tests.api.test_edits import post_multipart
from tests.conftest import TINY_FACTS, ApiHarness


def ready_worker(harness: ApiHarness, model: str = "tiny") -> None:
    with session_scope(harness.sessions) as session:
        workers.record_worker(session, "gpu-0", model, "host", ready=True)


def test_api_does_not_import_torch(tmp_path: Path) -> None:
    code = "import api.main, sys; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "VAREDIT_DATA_DIR": str(tmp_path)}  # importing must not touch ./data either
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2], env=env)


def test_healthz(harness: ApiHarness) -> None:
    assert harness.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_accepts_jobs_with_no_edit_worker_running(harness: ApiHarness) -> None:
    # workers scaled to zero: the API must stay in its load balancer, since its jobs wake them
    response = harness.client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    [model] = harness.client.get("/v1/models").json()["data"]
    assert model["ready_workers"] == 0


def test_readyz_reports_an_unreachable_broker(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with ApiHarness(settings) as harness:
        ready_worker(harness)
        response = harness.client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["details"]["broker"].startswith("error")
        assert response.json()["error"]["details"]["database"] == "ok"


def test_models_lists_resolutions_workers_and_queue(harness: ApiHarness) -> None:
    post_multipart(harness)
    post_multipart(harness)
    ready_worker(harness)
    body = harness.client.get("/v1/models").json()
    [tiny] = body["data"]
    assert tiny["id"] == "tiny" and tiny["resolutions"] == [32] and tiny["default_resolution"] == 32
    assert tiny["sampling"] == TINY_FACTS.sampling
    assert (tiny["ready_workers"], tiny["queue_depth"]) == (1, 2)
    assert tiny["oldest_queued_age_s"] >= 0


def test_models_lists_a_model_no_worker_reported_yet(make_settings, sqlite_url: str, redis_url: str) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, models=["tiny", "other"])
    with ApiHarness(settings) as harness:
        _, other = harness.client.get("/v1/models").json()["data"]
    assert other["id"] == "other" and other["resolutions"] == [] and other["default_resolution"] is None
    assert other["sampling"] is None and other["ready_workers"] == 0


def test_metrics_expose_this_process_http_requests_only(harness: ApiHarness) -> None:
    job_id = post_multipart(harness).json()["id"]
    harness.client.get(f"/v1/jobs/{job_id}")
    harness.client.get("/v1/jobs/missing")
    ready_worker(harness)
    text = harness.client.get("/metrics").text
    assert 'varedit_http_requests_total{method="POST",route="/v1/edits",status="202"} 1.0' in text
    assert 'varedit_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    assert 'varedit_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"} 2.0' in text
    # the platform-wide gauges come from beat alone (tests/worker/test_job_gauges.py)
    assert "varedit_queue_depth" not in text and "varedit_workers_ready" not in text


def test_request_id_is_echoed_or_made(harness: ApiHarness) -> None:
    assert (
        harness.client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = harness.client.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]
    assert made != "bad id\n" and len(made) == 32


def test_logs_are_json_with_request_and_job_ids(
    make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, log_json=True)
    with ApiHarness(settings) as harness:
        job_id = post_multipart(harness, headers={"X-Request-ID": "req-42"}).json()["id"]
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    submitted = [e for e in lines if e["event"] == "job_submitted"]
    access = [e for e in lines if e["event"] == "http_request" and e.get("request_id") == "req-42"]
    assert submitted and submitted[0]["job_id"] == job_id and submitted[0]["request_id"] == "req-42"
    assert access and access[0]["status"] == 202 and access[0]["route"] == "/v1/edits"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("DELETE", "/v1/edits", 405, "method_not_allowed")],
)
def test_framework_errors_use_the_envelope(
    harness: ApiHarness, method: str, path: str, status: int, code: str
) -> None:
    response = harness.client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_a_405_allows_every_method_of_its_path(harness: ApiHarness) -> None:
    # Before, `Allow` named one route's methods: PUT /v1/jobs/{id} answered `Allow: GET` though DELETE
    # works there, and never HEAD, which every GET route answers.
    job_path = "/v1/jobs/0b3c6a9e-4f0e-4a53-9d4e-1f1f7b1f7c11"
    expected = {job_path: "DELETE, GET, HEAD", "/v1/edits": "POST", "/healthz": "GET, HEAD"}
    for path, allowed in expected.items():
        response = harness.client.put(path)
        assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
        assert response.headers["allow"] == allowed, path
        if "HEAD" in allowed:  # what `Allow` names is answered
            assert harness.client.head(path).status_code != 405, path


def test_openapi_documents_both_bodies_and_examples(harness: ApiHarness) -> None:
    spec = harness.client.get("/openapi.json").json()
    edit = spec["paths"]["/v1/edits"]["post"]
    content = edit["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= content.keys()
    assert "image" in content["multipart/form-data"]["schema"]["properties"]
    assert content["application/json"]["examples"]
    assert {"202", "413", "415", "422"} <= edit["responses"].keys()
    assert spec["components"]["schemas"]["JobPublic"]["examples"]
    assert "Prefer" in {p["name"].title() for p in spec["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"]}
