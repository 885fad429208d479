"""The API description is one a client can be generated from: valid OpenAPI 3.1, no dangling reference,
meaningful operation ids, the real error envelope on every error answer, the webhook messages, docs
served without a CDN; and a bounded fuzz run (schemathesis) finds no 5xx and no answer that breaks it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs import workers
from jobs.db import session_scope
from jobs.settings import Settings
from jobs.workers import ModelFacts
from tests.conftest import ApiHarness, record_tiny_facts


@pytest.fixture
def spec(harness: ApiHarness) -> dict[str, Any]:
    return harness.client.get("/openapi.json").json()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_valid_openapi_with_no_dangling_reference(spec: dict[str, Any]) -> None:
    validate(spec)
    schemas = spec["components"]["schemas"]
    dangling = {ref for ref in _refs(spec) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert dangling == set()
    body = spec["paths"]["/v1/edits"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/EditCreate"}


def test_operation_ids_are_meaningful_and_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+([A-Z][a-z]+)*", i) for i in ids), ids
    assert spec["paths"]["/v1/edits"]["post"]["operationId"] == "createEdit"
    assert spec["paths"]["/v1/jobs/{job_id}"]["get"]["operationId"] == "getJob"


def test_every_error_answer_is_the_error_envelope(spec: dict[str, Any]) -> None:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert "401" in responses, (method, path)
            for status, answer in responses.items():
                if int(status) >= 400 and path.startswith("/v1/"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    limited = spec["paths"]["/v1/edits"]["post"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]
    # Every status the README gives a submit: 403 is priority_not_allowed (once missing here).
    assert {"401", "403", "408", "409", "413", "415", "422", "429", "503"} <= set(
        spec["paths"]["/v1/edits"]["post"]["responses"]
    )


def test_webhooks_and_streams_are_described(spec: dict[str, Any]) -> None:
    assert set(spec["webhooks"]) == {
        "job.running",
        "job.succeeded",
        "job.failed",
        "job.canceled",
        "job.expired",
    }
    message = spec["webhooks"]["job.succeeded"]["post"]["requestBody"]["content"]["application/json"]
    assert message["schema"] == {"$ref": "#/components/schemas/WebhookMessage"}
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in events
    result = spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["307"]
    assert "Location" in result["headers"]


def test_every_documented_edit_example_is_accepted(
    make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str
) -> None:
    # The image_base64 example was once cut short ("iVBORw0KGgo..."), so the documented request got a 422.
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, models=["shapes-64"])
    with ApiHarness(settings) as harness:
        record_tiny_facts(harness.sessions, ModelFacts("shapes-64", [64], {"cfg": 2.0, "tau": 0.3}))
        spec = harness.client.get("/openapi.json").json()
        body = spec["paths"]["/v1/edits"]["post"]["requestBody"]["content"]["application/json"]
        examples = [e["value"] for e in body["examples"].values()]
        examples += spec["components"]["schemas"]["EditCreate"]["examples"]
        assert examples
        for example in examples:
            response = harness.client.post("/v1/edits", json=example)
            assert response.status_code == 202, (example, response.text)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_their_assets_from_this_server(harness: ApiHarness, page: str) -> None:
    html = harness.client.get(page).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(harness.client.get(a).status_code == 200 for a in assets if a != "/openapi.json")


@pytest.fixture
def fuzzed(api_settings: Settings) -> Iterator[Any]:
    api_settings.max_upload_bytes = 200_000  # generated bodies stay small
    with ApiHarness(api_settings) as harness:
        with session_scope(harness.sessions) as session:  # a ready worker: /readyz answers 200
            workers.record_worker(session, "fuzz-worker", "tiny", "host", ready=True)
        yield schemathesis.openapi.from_asgi("/openapi.json", harness.app)


schema = schemathesis.pytest.from_fixture("fuzzed")


@schema.parametrize()
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzing_finds_no_server_error_and_no_answer_off_the_schema(case: Any) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        excluded_checks=[],
    )
