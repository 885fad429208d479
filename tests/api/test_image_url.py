"""``image_url``: the API fetches the source image through the address guard, with size, redirect and
time limits, from a real HTTP server on 127.0.0.1 (allowed here by VAREDIT_ALLOW_PRIVATE_URLS). Fetches
run on the event loop, so slow image servers never starve the rest of the API, and each caller has a
cap on fetches in flight."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from jobs import netguard
from jobs.settings import Settings
from tests.api.test_edits import count_jobs, image_bytes, stored_objects
from tests.conftest import ApiHarness, LocalHTTPServer

PNG = image_bytes(size=(32, 32))
HOLD_S = 30.0  # how long the slow server holds each image unless released


@pytest.fixture
def images() -> Iterator[LocalHTTPServer]:
    """/img.png, a redirect to it, a redirect loop, an image over the size limit; 404 elsewhere."""
    server = LocalHTTPServer(
        routes={
            "/img.png": (200, {"content-type": "image/png"}, PNG),
            "/moved": (302, {"location": "/img.png"}, b""),
            "/loop": (302, {"location": "/loop"}, b""),
            "/bad-location": (302, {"location": "http://[::1"}, b""),
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
    upper_case = "HTTP" + images.base.removeprefix("http") + "/img.png"  # schemes are case-insensitive
    # A redirect is followed, its target checked like the first.
    for url in (images.base + "/img.png", images.base + "/moved", upper_case):
        response = _submit(lan_harness, url)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert lan_harness.storage.get(f"jobs/{job_id}/source.png") == PNG
    assert len(lan_harness.publisher.published) == 3


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/missing.png", 422, "image_url_fetch_failed"),
        ("/loop", 422, "image_url_fetch_failed"),
        ("/bad-location", 422, "image_url_fetch_failed"),  # urljoin's ValueError, once a 500
        ("/caf\u00e9.png", 422, "image_url_not_allowed"),  # no request line carries it: once a 500
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
    api_settings: Settings, images: LocalHTTPServer
) -> None:
    port = int(images.base.rsplit(":", 1)[1])
    settings = api_settings.model_copy(update={"allowed_url_ports": [port]})  # the address decides
    with ApiHarness(settings) as harness:
        response = _submit(harness, f"http://localhost:{port}/img.png")
        assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_not_allowed")
        assert "not allowed" in response.json()["error"]["message"]
        assert "127.0.0.1" not in response.text  # what the name resolves to is logged, never returned
        assert count_jobs(harness) == 0
    assert images.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1:{port}/img.png",
        "http://2130706433:{port}/img.png",
        "http://0x7f.1:{port}/img.png",
        "http://[::ffff:127.0.0.1]:{port}/img.png",
    ],
)
def test_odd_spellings_of_loopback_are_refused(
    api_settings: Settings, images: LocalHTTPServer, url: str
) -> None:
    port = int(images.base.rsplit(":", 1)[1])
    with ApiHarness(api_settings.model_copy(update={"allowed_url_ports": [port]})) as harness:
        response = _submit(harness, url.format(port=port))
        assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_not_allowed")
        assert "127.0.0.1" not in response.json()["error"]["message"]
    assert images.requests == []


def test_a_port_off_the_allow_list_is_refused(harness: ApiHarness, images: LocalHTTPServer) -> None:
    response = _submit(harness, images.base + "/img.png")  # a random port: only 80 and 443 by default
    assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_not_allowed")
    assert images.requests == []


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://metadata.internal:{port}/img.png"]
)
def test_each_redirect_target_is_checked_like_the_first(
    api_settings: Settings, images: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    # Given the loopback server standing in for a public one, and a name that resolves inside
    port = int(images.base.rsplit(":", 1)[1])
    monkeypatch.setattr(netguard, "is_public", lambda ip: str(ip) == "127.0.0.1")
    monkeypatch.setattr(netguard, "resolve_async", _fake_resolver({"metadata.internal": ["10.0.0.1"]}))
    images.routes["/hop"] = (302, {"location": target.format(port=port)}, b"")
    settings = api_settings.model_copy(update={"allowed_url_ports": [port, 80]})
    with ApiHarness(settings) as harness:
        # When an image URL redirects there, then the redirect is refused before connecting
        response = _submit(harness, images.base + "/hop")
        assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_not_allowed")
        assert "10.0.0.1" not in response.text
    assert [path for path, _, _ in images.requests] == ["/hop"]


def _fake_resolver(names: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return names.get(host, [host])

    return resolve


# -- slow image servers ---------------------------------------------------------------------------


class HeldImageServer:
    """An image server on 127.0.0.1 that holds every answer until ``release()`` (or ``hold_s``): a slow
    server whose slowness the test controls. ``wait_for(n)`` returns once n requests are being held."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.released = threading.Event()
        self.arrived = threading.Condition()
        self.count = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.arrived:
                    server.count += 1
                    server.arrived.notify_all()
                server.released.wait(hold_s)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # every fetch connects at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/img.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.count >= count, timeout_s), self.count

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_images() -> Iterator[HeldImageServer]:
    server = HeldImageServer()
    yield server
    server.close()


def _harness_with(api_settings: Settings, **overrides: Any) -> ApiHarness:
    return ApiHarness(api_settings.model_copy(update={"allow_private_urls": True, **overrides}))


def _timed_get(harness: ApiHarness, path: str) -> float:
    started = time.perf_counter()
    response = harness.client.get(path)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_slow_image_urls_do_not_starve_the_api(api_settings: Settings, held_images: HeldImageServer) -> None:
    # Given 60 submits whose images are all being held by a slow server (more than the thread pool)
    with _harness_with(api_settings, image_url_max_concurrent=100) as harness:
        with ThreadPoolExecutor(max_workers=60) as pool:
            submits = [pool.submit(_submit, harness, held_images.url) for _ in range(60)]
            held_images.wait_for(60)
            # When other requests arrive meanwhile, then each is answered promptly
            latencies = [(path, _timed_get(harness, path)) for path in ("/healthz", "/v1/jobs", "/healthz")]
            held_images.release()
            answers = [future.result(timeout=60) for future in submits]
        # a starved request would wait for the held fetches, which the server holds for HOLD_S
        assert max(seconds for _, seconds in latencies) < HOLD_S / 3, latencies
        assert [a.status_code for a in answers] == [202] * 60, [
            a.text for a in answers if a.status_code != 202
        ]
        assert count_jobs(harness) == 60


def test_a_caller_over_its_fetch_cap_is_told_to_retry(
    api_settings: Settings, held_images: HeldImageServer
) -> None:
    # Given a caller with both of its fetch slots taken by a slow server
    with _harness_with(api_settings, image_url_max_concurrent=2) as harness:
        with ThreadPoolExecutor(max_workers=2) as pool:
            held: list[Future[Any]] = [pool.submit(_submit, harness, held_images.url) for _ in range(2)]
            held_images.wait_for(2)
            # When it submits another image_url, then it is told to come back shortly
            refused = _submit(harness, held_images.url)
            held_images.release()
            assert [f.result(timeout=60).status_code for f in held] == [202, 202]
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_fetches")
        assert refused.headers["retry-after"] == "1"
        # and once the slots are free again it may fetch
        assert _submit(harness, held_images.url).status_code == 202
    assert held_images.count == 3


def test_one_deadline_bounds_the_whole_fetch(api_settings: Settings, held_images: HeldImageServer) -> None:
    with _harness_with(api_settings, image_url_timeout_s=0.5) as harness:
        response = _submit(harness, held_images.url)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "image_url_fetch_failed")
        assert "0.5 s" in response.json()["error"]["message"]
        assert count_jobs(harness) == 0
