"""``image_url``: the API fetches the source image through the address guard, with size, redirect and
time limits, from a real HTTP server on 127.0.0.1 (allowed here by VAREDIT_ALLOW_PRIVATE_URLS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from jobs.settings import Settings
from tests.api.test_edits import count_jobs, image_bytes, stored_objects
from tests.conftest import ApiHarness, LocalHTTPServer

PNG = image_bytes(size=(32, 32))


@pytest.fixture
def images() -> Iterator[LocalHTTPServer]:
    """/img.png, a redirect to it, a redirect loop, an image over the size limit; 404 elsewhere."""
    server = LocalHTTPServer(
        routes={
            "/img.png": (200, {"content-type": "image/png"}, PNG),
            "/moved": (302, {"location": "/img.png"}, b""),
            "/loop": (302, {"location": "/loop"}, b""),
            "/big.png": (200, {"content-type": "image/png"}, PNG + b"\0" * 5000),
        },
        default=(404, {}, b"not here"),
    )
    yield server
    server.close()


@pytest.fixture
def lan_harness(api_settings: Settings) -> Iterator[ApiHarness]:
    settings = api_settings.model_copy(update={"allow_private_urls": True, "max_upload_bytes": 4000})
    with ApiHarness(settings) as harness:
        yield harness


def _submit(harness: ApiHarness, url: str) -> Any:
    return harness.client.post("/v1/edits", json={"instruction": "x", "image_url": url})


def test_image_url_is_fetched_stored_and_queued(lan_harness: ApiHarness, images: LocalHTTPServer) -> None:
    for path in ("/img.png", "/moved"):  # a redirect is followed, its target checked like the first
        response = _submit(lan_harness, images.base + path)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert lan_harness.storage.get(f"jobs/{job_id}/source.png") == PNG
    assert len(lan_harness.publisher.published) == 2


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/missing.png", 422, "image_url_fetch_failed"),
        ("/loop", 422, "image_url_fetch_failed"),
        ("/big.png", 413, "payload_too_large"),
    ],
)
def test_image_url_failures_store_nothing(
    lan_harness: ApiHarness, images: LocalHTTPServer, path: str, status: int, code: str
) -> None:
    response = _submit(lan_harness, images.base + path)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert count_jobs(lan_harness) == 0 and stored_objects(lan_harness) == []


def test_a_name_for_a_private_address_is_refused_at_connect(
    harness: ApiHarness, images: LocalHTTPServer
) -> None:
    url = images.base.replace("127.0.0.1", "localhost") + "/img.png"
    response = _submit(harness, url)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_not_allowed")
    assert count_jobs(harness) == 0
