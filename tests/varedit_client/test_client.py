"""The synchronous client against the real embedded platform (fake instant model): submitting every kind
of image, waiting with progress over the event stream and over long polls, results, cancel, lists across
pages, typed errors, retries that never duplicate a job, and webhook verification."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import LocalHTTPServer
from tests.varedit_client.conftest import (
    DEADLINE_S,
    GATE_SCALE,
    SCALES,
    SECOND_SCALE,
    KeyedApi,
    Platform,
    png,
    wait_for,
)
from tests.varedit_client.faulty_proxy import FaultyProxy
from varedit_client import (
    Client,
    InvalidRequest,
    JobFailed,
    JobPreviewEvent,
    JobProgressEvent,
    JobStatus,
    JobStatusEvent,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    WebhookVerificationFailed,
    verify_webhook,
)
from varedit_client.retry import RetryPolicy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _token() -> str:
    return uuid.uuid4().hex[:10]


def _edited(source: bytes, result: bytes) -> bool:
    """The fake model inverts the colours: the result is the source's edit, not the source."""
    before = Image.open(io.BytesIO(source)).convert("RGB")
    after = Image.open(io.BytesIO(result)).convert("RGB")
    return after.size == before.size and after.getpixel((0, 0)) != before.getpixel((0, 0))


def test_edits_from_a_path_bytes_and_a_pil_image_succeed_with_their_results(
    platform: Platform, tmp_path: Path
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(1))
    sources = {
        "path": (path, png(1)),
        "bytes": (png(2), png(2)),
        "pil": (Image.open(io.BytesIO(png(3))), png(3)),
    }
    with Client(platform.url) as client:
        jobs = {name: client.edit(image, f"edit from {name}", seed=7) for name, (image, _) in sources.items()}
        for name, job in jobs.items():
            assert job.status is JobStatus.QUEUED and job.data.params.seed == 7
            assert job.wait(timeout=DEADLINE_S) is job
            assert job.status is JobStatus.SUCCEEDED and job.progress.scale == SCALES
            content = job.result()
            assert _edited(sources[name][1], content)
            image = job.result(as_image=True)
            assert isinstance(image, Image.Image) and image.size == (40, 40)


def test_a_negative_instruction_reaches_the_model_and_comes_back(platform: Platform) -> None:
    with Client(platform.url) as client:
        plain = client.edit(png(4), "steer it", seed=3)
        steered = client.edit(png(4), "steer it", seed=3, negative_instruction="blurry")
        for job in (plain, steered):
            assert job.wait(timeout=DEADLINE_S).status is JobStatus.SUCCEEDED
        assert (plain.data.params.negative_instruction, steered.data.params.negative_instruction) == (
            "",
            "blurry",
        )
        assert steered.result() != plain.result()  # the fake model's result depends on it


def test_wait_reports_scales_in_order_while_the_job_runs(platform: Platform) -> None:
    token = _token()
    seen: list[tuple[int, int, str]] = []

    def progress(event: JobProgressEvent) -> None:
        seen.append((event.scale, event.scales, event.status.value))
        platform.open_gate(token)  # the job cannot finish before this: the report came while it ran

    with Client(platform.url) as client:
        job = client.edit(png(), f"hold gate:{token}")
        job.wait(progress=progress, timeout=DEADLINE_S)
    scales = [s for s, _, _ in seen]
    assert len(scales) >= 2 and scales[0] < GATE_SCALE and scales[-1] == SCALES, seen
    assert scales == list(range(1, SCALES + 1)), seen  # each scale once, in order
    assert {total for _, total, _ in seen} == {SCALES} and seen[0][2] == "running"
    assert job.status is JobStatus.SUCCEEDED


def test_wait_hands_each_preview_to_its_callback_in_order(platform: Platform) -> None:
    previews: list[tuple[int, int, bytes]] = []
    with Client(platform.url) as client:
        job = client.edit(png(), "sharpen as you go", previews=True)
        job.wait(
            preview=lambda event, image: previews.append((event.scale, event.scales, image)),
            timeout=DEADLINE_S,
        )
        assert job.data.params.previews and job.status is JobStatus.SUCCEEDED
        # every scale's preview, once, in order; each is the image the API serves for that scale
        assert [(k, n) for k, n, _ in previews] == [(k, SCALES) for k in range(1, SCALES + 1)]
        assert all(image == job.preview(k) for k, _, image in previews)
        final = Image.open(io.BytesIO(previews[-1][2]))
        assert final.size == Image.open(io.BytesIO(job.result())).size  # the result, at preview size


def test_wait_falls_back_to_long_polls_when_the_event_stream_is_cut(platform: Platform) -> None:
    proxy = FaultyProxy(platform.port)
    proxy.refuse(rb"^GET /v1/jobs/[^ ]+/events ")  # every event stream; everything else passes
    token = _token()
    seen: list[int] = []
    try:
        with Client(proxy.url) as client:
            job = client.edit(png(), f"no stream gate:{token}")
            platform.open_gate(token)
            job.wait(progress=lambda e: seen.append(e.scale), timeout=DEADLINE_S)
    finally:
        proxy.close()
    assert job.status is JobStatus.SUCCEEDED
    assert proxy.refused >= 1  # the stream was tried and cut
    assert seen == list(range(1, SCALES + 1))  # polls see scales end in twos and threes: none is skipped


def test_wait_times_out_while_the_job_is_held_and_can_then_be_canceled(platform: Platform) -> None:
    token = _token()
    with Client(platform.url) as client:
        job = client.edit(png(), f"held gate:{token}")
        wait_for(lambda: platform.blocked(token), "the job to reach the gate")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=job.id):
            job.wait(timeout=1.0)
        assert 0.9 <= time.monotonic() - started < 10
        assert job.cancel().data.cancel_requested
        platform.open_gate(token)
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=DEADLINE_S)
        assert failed.value.job.status is JobStatus.CANCELED and failed.value.code == "canceled"
        assert job.status is JobStatus.CANCELED
        with pytest.raises(JobFailed):
            job.result()


def test_cancel_a_queued_job_ends_it_at_once(platform: Platform) -> None:
    token = _token()
    with Client(platform.url) as client:
        blocker = client.edit(png(), f"blocker gate:{token}")
        wait_for(lambda: platform.blocked(token), "the worker to be busy")
        queued = client.edit(png(), "queued behind the blocker")
        assert queued.refresh().status is JobStatus.QUEUED
        assert client.jobs.cancel(queued.id).status is JobStatus.CANCELED
        platform.open_gate(token)
        assert blocker.wait(timeout=DEADLINE_S).status is JobStatus.SUCCEEDED
        assert client.jobs.get(queued.id).status is JobStatus.CANCELED


def test_events_yield_statuses_and_progress_until_the_job_ends(platform: Platform) -> None:
    token = _token()
    with Client(platform.url) as client:
        job = client.edit(png(), f"events gate:{token}")
        events = []
        for event in job.events():
            events.append(event)
            if isinstance(event, JobProgressEvent):
                platform.open_gate(token)  # held until the stream has shown progress
    statuses = [e.job.status.value for e in events if isinstance(e, JobStatusEvent)]
    scales = [e.scale for e in events if isinstance(e, JobProgressEvent)]
    assert statuses[-1] == "succeeded" and "running" in statuses, statuses
    assert len(statuses) == len(set(statuses))  # each state once
    assert scales and scales[0] < GATE_SCALE and scales == sorted(scales), scales
    assert job.status is JobStatus.SUCCEEDED and events[-1].job.progress.scale == SCALES


def test_events_after_a_dropped_stream_yield_each_scale_and_preview_once(platform: Platform) -> None:
    """The stream is cut right after scale 2 of the held job; the reopened one restates the job (its
    status, scales 1-2, the previews so far), and only what is new is yielded."""
    proxy = FaultyProxy(platform.port)
    proxy.cut_answer(rb"^GET /v1/jobs/[^ ]+/events ", after=SECOND_SCALE)
    token = _token()

    def open_once_restated() -> None:  # the job runs on once the reopened stream has restated scale 2
        wait_for(lambda: proxy.answered.count(SECOND_SCALE) >= 2, "the reopened stream's scale 2")
        platform.open_gate(token)

    try:
        with Client(proxy.url) as client:
            job = client.edit(png(), f"dropped stream gate:{token}", previews=True)
            threading.Thread(target=open_once_restated, daemon=True).start()
            events = list(job.events())
    finally:
        proxy.close()
    assert proxy.cut == 1
    statuses = [e.job.status.value for e in events if isinstance(e, JobStatusEvent)]
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses)), statuses
    assert [e.scale for e in events if isinstance(e, JobProgressEvent)] == list(range(1, SCALES + 1))
    assert [e.scale for e in events if isinstance(e, JobPreviewEvent)] == list(range(1, SCALES + 1))


def test_list_follows_the_cursor_across_pages(platform: Platform) -> None:
    with Client(platform.url) as client:
        ids = [client.edit(png(i), f"page {i}").id for i in range(5)]
        requests: list[httpx.Request] = []
        client.http.event_hooks["request"].append(requests.append)
        listed = list(client.jobs.list(limit=5, page_size=2))
        assert sum(r.url.path == "/v1/jobs" for r in requests) == 3  # 2 + 2 + 1
        assert {j.id for j in listed} == set(ids)
        created = [j.data.created_at for j in listed]
        assert created == sorted(created, reverse=True)
        for job_id in ids:
            client.jobs.get(job_id).wait(timeout=DEADLINE_S)
        everything = list(client.jobs.list(page_size=3))
        assert set(ids) <= {j.id for j in everything} and len(everything) > 5
        succeeded = list(client.jobs.list(status="succeeded", page_size=4))
        assert succeeded and all(j.status is JobStatus.SUCCEEDED for j in succeeded)
        assert set(ids) <= {j.id for j in succeeded}


def test_an_image_url_is_fetched_by_the_server(platform: Platform) -> None:
    server = LocalHTTPServer(routes={"/source.png": (200, {"content-type": "image/png"}, png(9))})
    try:
        with Client(platform.url) as client:
            job = client.edit(f"{server.base}/source.png", "from a URL")
            assert _edited(png(9), job.result(timeout=DEADLINE_S))
        assert [path for path, _, _ in server.requests] == ["/source.png"]  # the server fetched it
    finally:
        server.close()


def test_errors_are_typed_with_code_message_and_details(platform: Platform) -> None:
    with Client(platform.url) as client:
        with pytest.raises(NotFound) as missing:
            client.jobs.get("no-such-job")
        assert (missing.value.status, missing.value.code) == (404, "job_not_found")
        with pytest.raises(InvalidRequest) as empty:
            client.edit(png(), "   ")
        assert empty.value.status == 422 and "instruction" in json.dumps(empty.value.details)
        with pytest.raises(InvalidRequest) as unknown:
            client.edit(png(), "recolour", model="nope")
        assert unknown.value.status == 422 and "tiny" in json.dumps(unknown.value.details)
        with pytest.raises(InvalidRequest) as not_an_image:
            client.edit(b"hello", "recolour")
        assert not_an_image.value.code in ("invalid_image", "unsupported_image_format")


def test_keys_rates_and_unloaded_models_answer_typed_errors(keyed_api: KeyedApi) -> None:
    with Client(keyed_api.url, api_key="vsk_nobody_wrong") as stranger, pytest.raises(Unauthorized) as denied:
        stranger.edit(png(), "who am I")
    assert denied.value.status == 401
    # a Retry-After longer than the client is willing to wait is handed to the caller at once
    with Client(keyed_api.url, api_key=keyed_api.hourly_key) as client:
        client.edit(png(), "the hour's only edit")
        started = time.monotonic()
        with pytest.raises(RateLimited) as limited:
            client.edit(png(), "one too many")
        assert limited.value.status == 429 and limited.value.retry_after > 60
        assert time.monotonic() - started < 5  # it did not sleep through the hour
    # a model no worker has loaded yet: 503 with Retry-After, handed over when retries are used up
    client = Client(keyed_api.url, api_key=keyed_api.key, max_attempts=1)
    with client, pytest.raises(ServiceUnavailable) as not_ready:
        client.edit(png(), "not yet", model=keyed_api.unloaded_model)
    assert (not_ready.value.status, not_ready.value.code) == (503, "model_not_ready")
    assert not_ready.value.retry_after == 10


def test_a_429_with_a_short_retry_after_is_waited_out_and_retried(keyed_api: KeyedApi) -> None:
    answers: list[tuple[int, str | None]] = []
    with Client(keyed_api.url, api_key=keyed_api.two_second_key) as client:
        client.http.event_hooks["response"].append(
            lambda r: answers.append((r.status_code, r.request.headers.get("idempotency-key")))
        )
        first = client.edit(png(), "first of two")
        started = time.monotonic()
        second = client.edit(png(), "second of two")  # 429 at once, then accepted after Retry-After
        waited = time.monotonic() - started
    assert first.id != second.id and second.status is JobStatus.QUEUED
    assert [status for status, _ in answers] == [202, 429, 202]
    assert answers[1][1] == answers[2][1] != answers[0][1]  # the retry carried its submit's key
    assert waited >= 0.9, waited  # it honoured Retry-After (about 2 s) instead of hammering


def test_a_submit_whose_answer_is_lost_is_retried_into_exactly_one_job(platform: Platform) -> None:
    proxy = FaultyProxy(platform.port)
    proxy.lose_answer(rb"^POST /v1/edits ", times=1)
    instruction = f"exactly once {_token()}"
    keys: list[str | None] = []
    try:
        with Client(proxy.url, retry=RetryPolicy(max_attempts=5, backoff_s=0.05)) as client:
            client.http.event_hooks["request"].append(lambda r: keys.append(r.headers.get("idempotency-key")))
            job = client.edit(png(), instruction)
    finally:
        proxy.close()
    assert proxy.lost_answers == 1  # the first try reached the server and its answer was dropped
    assert len(keys) == 2 and keys[0] == keys[1]  # one retry, with the same Idempotency-Key
    with Client(platform.url) as client:
        same = [j for j in client.jobs.list(page_size=100) if j.data.instruction == instruction]
    assert [j.id for j in same] == [job.id]


def test_webhook_deliveries_verify_and_tampered_ones_do_not(
    platform: Platform, webhook_receiver: LocalHTTPServer
) -> None:
    with Client(platform.url) as client:
        job = client.edit(
            png(), "notify me", webhook_url=webhook_receiver.url, webhook_events=["job.succeeded"]
        )
        job.wait(timeout=DEADLINE_S)
    [(_, headers, body)] = webhook_receiver.wait_for(1, DEADLINE_S)
    event = verify_webhook(body, headers, platform.webhook_secret)
    assert event.type == "job.succeeded" and event.data.id == job.id
    assert event.data.status is JobStatus.SUCCEEDED and event.timestamp.tzinfo is not None
    # a secret being rotated in: any one of several may sign
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmctLS0="
    assert verify_webhook(body, headers, [other, platform.webhook_secret]).data.id == job.id
    tampered = body.replace(b'"succeeded"', b'"failed"', 1)
    assert tampered != body
    with pytest.raises(WebhookVerificationFailed, match="signature"):
        verify_webhook(tampered, headers, platform.webhook_secret)
    with pytest.raises(WebhookVerificationFailed):
        verify_webhook(body, headers, other)
    with pytest.raises(WebhookVerificationFailed, match="headers"):
        verify_webhook(body, {k: v for k, v in headers.items() if k != "webhook-signature"}, other)
