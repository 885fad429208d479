"""Reading, waiting on, listing, canceling jobs; results (local bytes, S3 redirect); SSE events."""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from api.deps import Principal, current_principal
from api.main import create_app
from api.slots import WAITS
from jobs import reapers, transitions
from jobs.db import session_scope
from jobs.models import utcnow
from jobs.settings import Settings
from jobs.transitions import ResultMeta
from tests.api.test_edits import image_bytes, post_multipart
from tests.conftest import ApiHarness, live_server

LEASE_S = 60


def submit(harness: ApiHarness, **fields: Any) -> str:
    response = post_multipart(harness, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def claim(harness: ApiHarness, job_id: str) -> int:
    with session_scope(harness.sessions) as session:
        return transitions.claim(session, job_id, "w1", LEASE_S).attempts


def finish(harness: ApiHarness, job_id: str, attempt: int, data: bytes = b"") -> None:
    data = data or image_bytes()
    key = f"jobs/{job_id}/result-{attempt}.png"
    harness.storage.put(key, data, "image/png")
    with session_scope(harness.sessions) as session:
        assert transitions.finish(session, job_id, attempt, ResultMeta(key, "image/png", 32, 32, len(data)))
    harness.notifier.job_changed(job_id)


def wait_until_watched(harness: ApiHarness, job_id: str) -> None:
    """Block until a request is waiting on ``job_id`` (polls the watcher's registry, bounded)."""
    deadline = time.monotonic() + 10
    while job_id not in harness.watcher._waiters:
        assert time.monotonic() < deadline, "no request started waiting"
        time.sleep(0.01)


def test_get_job_returns_the_job(harness: ApiHarness) -> None:
    job_id = submit(harness)
    response = harness.client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["id"] == job_id and response.json()["status"] == "queued"
    assert "preference-applied" not in response.headers


def test_unknown_job_is_404_with_envelope(harness: ApiHarness) -> None:
    for path in ("", "/result", "/events"):
        response = harness.client.get(f"/v1/jobs/nope{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"
    assert harness.client.post("/v1/jobs/nope/cancel").json()["error"]["code"] == "job_not_found"


def test_other_owners_jobs_are_404(harness: ApiHarness) -> None:
    job_id = submit(harness)
    harness.app.dependency_overrides[current_principal] = lambda: Principal("mallory")
    assert harness.client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert harness.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert harness.client.get("/v1/jobs").json()["data"] == []


def test_prefer_wait_returns_when_the_job_finishes(harness: ApiHarness) -> None:
    job_id = submit(harness)
    attempt = claim(harness, job_id)
    replies: queue.Queue[httpx.Response] = queue.Queue()
    waiter = threading.Thread(
        target=lambda: replies.put(harness.client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=20"}))
    )
    start = time.monotonic()
    waiter.start()
    wait_until_watched(harness, job_id)
    finish(harness, job_id, attempt)  # commits, then notifies over Redis
    response = replies.get(timeout=15)
    waiter.join()
    # The periodic re-check is 30 s in tests, so only the notification can have woken it this early.
    assert time.monotonic() - start < 10
    assert response.json()["status"] == "succeeded"
    assert response.headers["preference-applied"] == "wait=20"


def test_prefer_wait_gives_up_after_n_seconds(harness: ApiHarness) -> None:
    job_id = submit(harness)
    start = time.monotonic()
    response = harness.client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "respond-async, wait=1"})
    assert 1 <= time.monotonic() - start < 5
    assert response.json()["status"] == "queued" and response.headers["preference-applied"] == "wait=1"


def test_prefer_wait_is_skipped_for_terminal_jobs(harness: ApiHarness) -> None:
    job_id = submit(harness)
    harness.client.post(f"/v1/jobs/{job_id}/cancel")
    response = harness.client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=60"})
    assert response.json()["status"] == "canceled" and "preference-applied" not in response.headers


def test_cancel_queued_then_again_is_idempotent(harness: ApiHarness) -> None:
    job_id = submit(harness)
    first = harness.client.post(f"/v1/jobs/{job_id}/cancel")
    again = harness.client.post(f"/v1/jobs/{job_id}/cancel")
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "canceled"
    assert first.json()["finished_at"] is not None


def test_cancel_running_sets_the_flag(harness: ApiHarness) -> None:
    job_id = submit(harness)
    attempt = claim(harness, job_id)
    body = harness.client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert (body["status"], body["cancel_requested"]) == ("running", True)
    with session_scope(harness.sessions) as session:
        assert not transitions.heartbeat(session, job_id, attempt, LEASE_S)
        assert transitions.mark_canceled(session, job_id, attempt)
    assert harness.client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_list_jobs_paginates_newest_first_with_status_filter(harness: ApiHarness) -> None:
    ids = [submit(harness) for _ in range(5)]
    harness.client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    canceled = harness.client.get("/v1/jobs", params={"status": "canceled"}).json()
    assert [j["id"] for j in canceled["data"]] == [ids[0]] and canceled["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "%%%"},
        # Decodable cursors that were never ours: a time without a zone (once a 500 from the query)
        {"cursor": base64.urlsafe_b64encode(b"2026-01-01T00:00:00|x").decode()},
        {"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:59:59|").decode()},
        # Zoned times that have no UTC form (once a 500 from binding them)
        {"cursor": base64.urlsafe_b64encode(b"0001-01-01T00:00:00+14:00|x").decode()},
        {"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:59:59-14:00|x").decode()},
        {"limit": 0},
        {"limit": 101},
        {"status": "sleeping"},
    ],
    ids=str,
)
def test_list_jobs_rejects_bad_parameters(harness: ApiHarness, params: dict[str, Any]) -> None:
    response = harness.client.get("/v1/jobs", params=params)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")


def test_a_job_id_or_cursor_with_a_nul_is_not_found_on_every_database(
    make_settings: Callable[..., Settings], db_url: str, redis_url: str
) -> None:
    # PostgreSQL text cannot hold NUL: binding one was a DataError, a 500, on every job route.
    with ApiHarness(make_settings(database_url=db_url, broker_url=redis_url)) as harness:
        for method, path in [
            ("GET", "/v1/jobs/a%00b"),
            ("GET", "/v1/jobs/a%00b/result"),
            ("GET", "/v1/jobs/a%00b/webhooks"),
            ("POST", "/v1/jobs/a%00b/cancel"),
            ("DELETE", "/v1/jobs/a%00b"),
        ]:
            response = harness.client.request(method, path)
            assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found"), path
        cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|a\x00").decode()
        response = harness.client.get("/v1/jobs", params={"cursor": cursor})
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")


def test_result_is_409_until_succeeded_then_bytes(harness: ApiHarness) -> None:
    job_id = submit(harness)
    response = harness.client.get(f"/v1/jobs/{job_id}/result")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "result_not_ready")
    attempt = claim(harness, job_id)
    data = image_bytes(size=(32, 32))
    finish(harness, job_id, attempt, data)
    job = harness.client.get(f"/v1/jobs/{job_id}").json()
    assert job["result"] == {
        "url": f"/v1/jobs/{job_id}/result",
        "width": 32,
        "height": 32,
        "content_type": "image/png",
        "bytes": len(data),
    }
    assert job["metrics"]["queue_ms"] is not None and job["metrics"]["run_ms"] is not None
    response = harness.client.get(job["result"]["url"])
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "image/png"


def test_head_answers_like_get_without_a_body(harness: ApiHarness) -> None:
    job_id = submit(harness)
    finish(harness, job_id, claim(harness, job_id))
    queued = submit(harness)
    for path in ("/healthz", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", "/v1/jobs/nope"):
        got, head = harness.client.get(path), harness.client.head(path)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        for name in ("content-type", "content-length"):
            assert head.headers[name] == got.headers[name], (path, name)
    # An event stream is not opened: the answer ends after the headers.
    head = harness.client.head(f"/v1/jobs/{queued}/events")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
    assert harness.client.head("/v1/edits").status_code == 405  # a POST route stays POST only
    metrics = harness.client.get("/metrics").text
    assert 'varedit_http_requests_total{method="HEAD",route="/healthz",status="200"} 1.0' in metrics
    paths = harness.client.get("/openapi.json").json()["paths"]
    assert all("head" not in operations for operations in paths.values())  # the document is unchanged


def test_head_over_a_real_server_leaves_the_connection_usable(api_settings: Settings) -> None:
    with live_server(create_app(api_settings)) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("HEAD", "/healthz")
        head = connection.getresponse()
        assert (head.status, head.read()) == (200, b"")
        connection.request("GET", "/healthz")  # the same keep-alive connection
        got = connection.getresponse()
        assert (got.status, json.loads(got.read())) == (200, {"status": "ok"})
        assert head.getheader("content-length") == got.getheader("content-length")
        connection.close()


def test_result_is_410_after_retention(harness: ApiHarness) -> None:
    job_id = submit(harness)
    finish(harness, job_id, claim(harness, job_id))
    with session_scope(harness.sessions) as session:
        later = utcnow() + timedelta(seconds=harness.settings.result_ttl_s + 1)
        assert reapers.delete_expired_results(
            session, harness.storage, harness.settings.result_ttl_s, now=later
        )
    response = harness.client.get(f"/v1/jobs/{job_id}/result")
    assert (response.status_code, response.json()["error"]["code"]) == (410, "result_expired")


@pytest.fixture
def s3_harness(
    make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str, s3_endpoint: str, s3_bucket: str
) -> Iterator[ApiHarness]:
    settings = make_settings(
        database_url=sqlite_url,
        broker_url=redis_url,
        storage_url=f"s3://{s3_bucket}/serve",
        s3_endpoint_url=s3_endpoint,
    )
    with ApiHarness(settings) as harness:
        yield harness


def test_result_on_s3_redirects_to_a_presigned_url(s3_harness: ApiHarness) -> None:
    job_id = submit(s3_harness)
    data = image_bytes()
    assert s3_harness.storage.get(f"jobs/{job_id}/source.png")  # the source went to S3 too
    finish(s3_harness, job_id, claim(s3_harness, job_id), data)
    response = s3_harness.client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)
    assert response.status_code == 307
    location = response.headers["location"]
    assert f"/serve/jobs/{job_id}/result-1.png" in location and "X-Amz-Signature" in location
    assert httpx.get(location).content == data


def read_events(harness: ApiHarness, job_id: str, events: queue.Queue[tuple[str, dict] | None]) -> None:
    with harness.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.put((name, json.loads(line.split(":", 1)[1])))
    events.put(None)  # the stream ended


def test_events_stream_status_and_progress_until_terminal(harness: ApiHarness) -> None:
    job_id = submit(harness)
    attempt = claim(harness, job_id)
    events: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    reader = threading.Thread(target=read_events, args=(harness, job_id, events))
    reader.start()
    name, data = events.get(timeout=10)
    assert (name, data["status"]) == ("status", "running")
    for reached, announced in ((1, [1]), (2, [2]), (5, [3, 4, 5])):  # 3 and 4 ended between two reads
        with session_scope(harness.sessions) as session:
            assert transitions.heartbeat(session, job_id, attempt, LEASE_S, progress=(reached, 6))
        harness.notifier.job_changed(job_id)
        for k in announced:
            assert events.get(timeout=10) == (
                "progress",
                {"id": job_id, "status": "running", "scale": k, "scales": 6},
            )
    finish(harness, job_id, attempt)
    name, data = events.get(timeout=10)
    assert (name, data["status"]) == ("status", "succeeded") and data["result"] is not None
    assert events.get(timeout=10) is None
    reader.join()


def test_scales_that_ended_with_the_job_are_announced_before_its_end(harness: ApiHarness) -> None:
    """The last scales and the finish can commit between two reads of the stream: those scales are
    still announced, before the terminal status; a stream opened later gets every scale of the run."""
    job_id = submit(harness)
    attempt = claim(harness, job_id)
    events: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    reader = threading.Thread(target=read_events, args=(harness, job_id, events))
    reader.start()
    assert events.get(timeout=10)[0] == "status"
    with session_scope(harness.sessions) as session:
        assert transitions.heartbeat(session, job_id, attempt, LEASE_S, progress=(2, 4))
    harness.notifier.job_changed(job_id)
    assert [events.get(timeout=10)[1]["scale"] for _ in range(2)] == [1, 2]
    data = image_bytes()
    key = f"jobs/{job_id}/result-{attempt}.png"
    harness.storage.put(key, data, "image/png")
    with session_scope(harness.sessions) as session:  # scales 3 and 4, then the finish: one commit
        assert transitions.heartbeat(session, job_id, attempt, LEASE_S, progress=(4, 4))
        assert transitions.finish(session, job_id, attempt, ResultMeta(key, "image/png", 32, 32, len(data)))
    harness.notifier.job_changed(job_id)
    rest = [events.get(timeout=10) for _ in range(4)]
    reader.join()
    assert [(name, d.get("scale"), d["status"]) for name, d in rest[:3]] == [
        ("progress", 3, "running"),
        ("progress", 4, "running"),
        ("status", None, "succeeded"),
    ]
    assert rest[3] is None  # the stream ended
    late: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    read_events(harness, job_id, late)
    assert [(name, d.get("scale")) for name, d in iter(late.get_nowait, None)] == [
        *[("progress", k) for k in (1, 2, 3, 4)],
        ("status", None),
    ]


def test_events_of_a_terminal_job_end_at_once(harness: ApiHarness) -> None:
    job_id = submit(harness)
    harness.client.post(f"/v1/jobs/{job_id}/cancel")
    events: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    read_events(harness, job_id, events)
    name, data = events.get_nowait()
    assert (name, data["status"]) == ("status", "canceled")
    assert events.get_nowait() is None


def test_a_caller_holds_at_most_max_waits_open(harness: ApiHarness) -> None:
    """Each wait holds a connection and re-reads the job every few seconds: past `max_waits` per caller a
    wait is refused (429, Retry-After) or, on a submit, not applied; each one ended frees its slot."""
    harness.settings.max_waits = 1
    job_id = submit(harness)
    attempt = claim(harness, job_id)
    events: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    reader = threading.Thread(target=read_events, args=(harness, job_id, events))
    reader.start()
    assert events.get(timeout=10)[0] == "status"  # the stream holds the one slot
    refused = [
        harness.client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=30"}),
        harness.client.get(f"/v1/jobs/{job_id}/events"),
    ]
    for response in refused:
        assert (response.status_code, response.json()["error"]["code"]) == (429, "too_many_waits")
        assert response.headers["retry-after"] == "1" and "preference-applied" not in response.headers
    submitted = post_multipart(harness, headers={"Prefer": "wait=30"})
    assert submitted.status_code == 202 and "preference-applied" not in submitted.headers  # not held
    assert harness.client.get(f"/v1/jobs/{submitted.json()['id']}").status_code == 200  # no wait asked
    finish(harness, job_id, attempt)
    assert events.get(timeout=10)[1]["status"] == "succeeded"
    assert events.get(timeout=10) is None
    reader.join()
    response = harness.client.get(f"/v1/jobs/{submitted.json()['id']}", headers={"Prefer": "wait=1"})
    assert response.headers["preference-applied"] == "wait=1"  # the stream's slot is free again


def test_a_wait_whose_client_left_ends_at_its_next_wake_up(harness: ApiHarness) -> None:
    """A `Prefer: wait` reply nobody will read stops waiting (and frees the caller's slot) when the job
    next changes or is re-read, instead of holding on for the rest of its N seconds."""
    job_id = submit(harness)
    app = create_app(harness.settings)

    def waiters() -> bool:
        return job_id in app.state.watcher._waiters

    with live_server(app) as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: x\r\nPrefer: wait=60\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while not waiters():
                assert time.monotonic() < deadline, "no request started waiting"
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while waiters():  # each notification wakes the wait, which then finds its client gone
            assert time.monotonic() < deadline, "the wait outlived its client"
            harness.notifier.job_changed(job_id)
            time.sleep(0.05)
        assert WAITS.held("anonymous") == 0


def test_a_queued_job_shows_its_position_in_the_queue(harness: ApiHarness) -> None:
    ids = [post_multipart(harness, instruction=f"edit {i}").json()["id"] for i in range(3)]
    positions = [harness.client.get(f"/v1/jobs/{job_id}").json()["queue_position"] for job_id in ids]
    assert positions == [0, 1, 2]
    with session_scope(harness.sessions) as session:
        transitions.cancel(session, ids[0])
    assert harness.client.get(f"/v1/jobs/{ids[2]}").json()["queue_position"] == 1
    assert harness.client.get(f"/v1/jobs/{ids[0]}").json()["queue_position"] is None


def test_delete_removes_a_finished_jobs_images_and_is_idempotent(harness: ApiHarness) -> None:
    job_id = submit(harness)
    assert harness.client.delete(f"/v1/jobs/{job_id}").status_code == 409  # queued: cancel it first
    finish(harness, job_id, claim(harness, job_id))
    assert harness.storage.exists(f"jobs/{job_id}/result-1.png")
    assert harness.client.get(f"/v1/jobs/{job_id}").json()["deleted_at"] is None
    assert harness.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    deleted_at = harness.client.get(f"/v1/jobs/{job_id}").json()["deleted_at"]
    assert deleted_at is not None  # the record says its images are gone
    assert harness.client.delete(f"/v1/jobs/{job_id}").status_code == 204  # again: nothing left to do
    assert harness.client.get(f"/v1/jobs/{job_id}").json()["deleted_at"] == deleted_at
    assert not harness.storage.exists(f"jobs/{job_id}/result-1.png")
    assert not any(harness.storage.exists(f"jobs/{job_id}/source.{ext}") for ext in ("png", "jpg", "webp"))
    response = harness.client.get(f"/v1/jobs/{job_id}/result")
    assert (response.status_code, response.json()["error"]["code"]) == (410, "result_expired")
    assert harness.client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"  # the record stays
    assert harness.client.delete("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
