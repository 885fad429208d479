"""Upload limits do not trust Content-Length: a chunked body with none is cut off after at most the
limit plus one chunk, for JSON and multipart, and nothing is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from api.body_limit import body_limit
from jobs.settings import Settings
from tests.api.test_edits import count_jobs, stored_objects
from tests.conftest import ApiHarness

CHUNK = 16 * 1024


@pytest.fixture
def small_limits(make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str) -> Settings:
    return make_settings(database_url=sqlite_url, broker_url=redis_url, max_upload_bytes=100_000)


def _send_chunked(harness: ApiHarness, content_type: str, total: int) -> tuple[httpx.Response, int]:
    """POST `total` bytes in chunks without Content-Length; returns the answer and the bytes the app
    pulled from the body before answering."""
    pulled = 0
    head = b""
    if content_type.startswith("multipart/"):  # a well-formed start: a file part that never ends
        head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        if head:
            pulled += len(head)
            yield head
        while pulled < total:
            pulled += CHUNK
            yield b"x" * CHUNK

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/edits", content=body(), headers={"content-type": content_type})

    return asyncio.run(post()), pulled


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b0undary"])
def test_a_chunked_body_over_the_limit_is_cut_off_as_it_arrives(small_limits: Settings, content_type) -> None:
    limit = body_limit(small_limits, content_type)
    with ApiHarness(small_limits) as harness:
        before = (count_jobs(harness), stored_objects(harness))
        response, pulled = _send_chunked(harness, content_type, total=30 * limit)
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
        assert pulled <= limit + CHUNK, (pulled, limit)
        assert (count_jobs(harness), stored_objects(harness)) == before
        assert harness.publisher.published == []


def test_a_declared_length_over_the_limit_is_refused_before_reading(small_limits: Settings) -> None:
    with ApiHarness(small_limits) as harness:
        limit = body_limit(small_limits, "application/json")
        response = harness.client.post(
            "/v1/edits",
            content=b"{}",
            headers={"content-type": "application/json", "content-length": str(limit + 1)},
        )
        assert response.status_code == 413
