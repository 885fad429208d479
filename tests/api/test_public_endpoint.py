"""Results on S3 behind two addresses (MinIO in compose): the platform writes to the internal one, the
client is sent to the public one, and the web page is allowed to fetch from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from api.main import create_app
from jobs.settings import Settings
from tests.api.test_edits import image_bytes
from tests.api.test_jobs import claim, finish, submit
from tests.conftest import ApiHarness, live_server


@pytest.fixture
def public_endpoint(s3_endpoint: str) -> str:
    """The moto server under another name than the platform's 127.0.0.1."""
    return f"http://localhost:{urlparse(s3_endpoint).port}"


@pytest.fixture
def public_harness(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    public_endpoint: str,
) -> Iterator[ApiHarness]:
    settings = make_settings(
        database_url=sqlite_url,
        broker_url=redis_url,
        storage_url=f"s3://{s3_bucket}/serve",
        s3_endpoint_url=s3_endpoint,
        s3_public_endpoint_url=public_endpoint,
    )
    with ApiHarness(settings) as harness:
        yield harness


def test_result_redirects_to_the_public_endpoint(public_harness: ApiHarness, public_endpoint: str) -> None:
    job_id = submit(public_harness)
    data = image_bytes()
    finish(public_harness, job_id, claim(public_harness, job_id), data)
    response = public_harness.client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith(f"{public_endpoint}/") and "X-Amz-Signature" in location
    assert httpx.get(location).content == data


def directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_the_page_may_fetch_and_show_results_from_the_public_endpoint(
    public_harness: ApiHarness, public_endpoint: str
) -> None:
    policy = directives(public_harness.client.get("/").headers["content-security-policy"])
    assert public_endpoint in policy["connect-src"]  # the page fetches GET .../result, redirect included
    assert public_endpoint in policy["img-src"]
    assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]


def test_with_local_storage_the_page_fetches_from_this_server_only(harness: ApiHarness) -> None:
    policy = directives(harness.client.get("/").headers["content-security-policy"])
    assert policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "blob:", "data:"]


@pytest.mark.e2e
def test_the_page_in_a_browser_fetches_a_result_from_the_public_endpoint(
    public_harness: ApiHarness, browser: Any
) -> None:
    """What the page does after an edit: fetch GET .../result, follow the redirect to the other origin
    (CORS from the store, the page's connect-src) and read the image."""
    job_id = submit(public_harness)
    data = image_bytes()
    finish(public_harness, job_id, claim(public_harness, job_id), data)
    # the same database and bucket, under a real server
    with live_server(create_app(public_harness.settings)) as port:
        browser.get(f"http://127.0.0.1:{port}/")
        size = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"fetch('/v1/jobs/{job_id}/result').then((r) => r.blob())"
            ".then((b) => done(b.size), (e) => done(String(e)));"
        )
    assert size == len(data)
