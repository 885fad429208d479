"""Upload limits do not trust Content-Length: a chunked body with none is cut off after at most the
limit plus one chunk, for JSON and multipart, and nothing is stored. A body that stops arriving, or
trickles in below a minimum rate, is given up with a 408, and nothing is stored either."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from api import body_limit as body_limit_module
from api.body_limit import BodyLimitMiddleware, body_limit
from api.errors import RequestTimeout
from api.main import create_app
from jobs.settings import Settings
from tests.api.test_edits import count_jobs, stored_objects
from tests.conftest import ApiHarness, live_server

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


def _send_then_stall(harness: ApiHarness, content_type: str) -> httpx.Response:
    """POST the start of a body, then nothing more: the client neither sends nor hangs up."""
    head = b'{"instruction": "make it blue", "image_base64": "iVBOR'
    if content_type.startswith("multipart/"):
        head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG'

    async def body() -> AsyncIterator[bytes]:
        yield head
        await asyncio.Event().wait()  # stalled for good: only the server's timeout ends this request
        yield b""

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/edits", content=body(), headers={"content-type": content_type})

    return asyncio.run(asyncio.wait_for(post(), 30))  # a bound on the test, far above the timeout


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b0undary"])
def test_a_stalled_body_is_given_up_with_408_and_nothing_stored(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch, content_type: str
) -> None:
    # Before, such a request stayed open for as long as the client kept the connection.
    monkeypatch.setattr(body_limit_module, "BODY_IDLE_TIMEOUT_S", 0.05)
    response = _send_then_stall(harness, content_type)
    assert response.status_code == 408, response.text
    assert response.json()["error"]["code"] == "request_timeout"
    assert response.headers["connection"] == "close"
    assert count_jobs(harness) == 0 and stored_objects(harness) == [] and harness.publisher.published == []


def test_a_trickling_body_is_given_up_with_408(harness: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, a byte sent just inside every idle timeout held the request open for as long as the
    # client liked. Here a byte every 0.05 s never trips the 0.5 s idle timeout, but at 20 bytes/s
    # it falls behind 100 bytes/s at 0.5 / (1/20 - 1/100) = 12.5 bytes, about 0.6 s in.
    monkeypatch.setattr(body_limit_module, "BODY_IDLE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(body_limit_module, "BODY_MIN_RATE", 100)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"instruction": "make it blue", "image_base64": "'
        while True:
            await asyncio.sleep(0.05)  # the slow client's pace, not a wait for the server
            sent += 1
            yield b"A"

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            json_type = {"content-type": "application/json"}
            return await client.post("/v1/edits", content=body(), headers=json_type)

    response = asyncio.run(asyncio.wait_for(post(), 30))
    assert response.status_code == 408, response.text
    error = response.json()["error"]
    assert error["code"] == "request_timeout" and error["details"] == {"min_rate_bytes_per_s": 100}
    assert sent < 40, sent  # cut off near the 13th byte, far before the test's bound
    assert count_jobs(harness) == 0 and stored_objects(harness) == []


def test_a_stalled_body_over_a_real_server_gets_408_and_the_connection_closed(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(body_limit_module, "BODY_IDLE_TIMEOUT_S", 0.2)
    head = (
        b"POST /v1/edits HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
        b'{"instruction": "x", "image_base64": "'
    )
    with (
        live_server(create_app(api_settings)) as port,
        socket.create_connection(("127.0.0.1", port), 30) as conn,
    ):
        conn.sendall(head)
        answer = b""
        while chunk := conn.recv(65536):  # b"": the server closed the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"request_timeout"' in answer
    with ApiHarness(api_settings) as harness:
        assert count_jobs(harness) == 0 and stored_objects(harness) == []


def _arrives(message: Message, wait: bool) -> Callable[[], Awaitable[Message]]:
    """The server's `receive`, answering ``message`` at once or after a wait, however short."""

    async def receive() -> Message:
        if wait:
            await asyncio.sleep(0)  # the client has not sent it yet
        return message

    return receive


def _through_the_middleware(
    settings: Settings, receives: list[Callable[[], Awaitable[Message]]]
) -> list[Message]:
    """The messages an app that reads two of them gets through the middleware."""
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([await receive(), await receive()])

    async def unused_send(message: Message) -> None:
        raise AssertionError(f"nothing is sent here: {message}")

    async def serve() -> None:
        pending = iter(receives)
        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await BodyLimitMiddleware(app, settings)(scope, lambda: next(pending)(), unused_send)

    asyncio.run(serve())
    return seen


def test_the_idle_timeout_ends_with_the_body(small_limits: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A route may wait on the client after its body (an event stream listens for the hang-up): no
    # timeout then. With a timeout of 0, any wait for a body chunk times out.
    monkeypatch.setattr(body_limit_module, "BODY_IDLE_TIMEOUT_S", 0)
    part = {"type": "http.request", "body": b"{", "more_body": True}
    end = {"type": "http.request", "body": b"}", "more_body": False}
    hang_up = {"type": "http.disconnect"}
    with pytest.raises(RequestTimeout):
        _through_the_middleware(small_limits, [_arrives(part, wait=False), _arrives(end, wait=True)])
    after_the_body = [_arrives(end, wait=False), _arrives(hang_up, wait=True)]
    assert _through_the_middleware(small_limits, after_the_body) == [end, hang_up]
