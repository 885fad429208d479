"""Previews through the API: the `previews` field, GET /v1/jobs/{id}/previews/{k} (owner only, 404 until
stored, 410 once deleted) and the SSE `preview` events, in order and before the terminal status; also
with the worker function run against the same database and storage."""

from __future__ import annotations

import io
import os
import queue
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image

from api.deps import Principal, current_principal
from jobs import reapers, transitions
from jobs.db import session_scope
from jobs.models import utcnow
from jobs.storage import preview_key
from tests.api.test_edits import image_bytes, post_json, post_multipart
from tests.api.test_jobs import LEASE_S, claim, finish, read_events
from tests.conftest import ApiHarness
from tests.worker.test_tasks import RecordingPublisher
from worker.fake import FakeEditPipeline, FakeOptions
from worker.pool import LoadedModel
from worker.runtime import Runtime, install_runtime, reset_runtime
from worker.tasks import edit as edit_tasks

Events = queue.Queue[tuple[str, dict] | None]


def submit_with_previews(harness: ApiHarness, **fields: str) -> str:
    response = post_multipart(harness, previews="true", **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def record_previews(harness: ApiHarness, job_id: str, attempt: int, upto: int, of: int) -> None:
    """What a worker does: store previews 1..upto, then record them with its progress and notify."""
    for k in range(1, upto + 1):
        harness.storage.put(preview_key(job_id, k), image_bytes(size=(8, 8)), "image/png")
    with session_scope(harness.sessions) as session:
        assert transitions.heartbeat(session, job_id, attempt, LEASE_S, (upto, of), preview_scale=upto)
    harness.notifier.job_changed(job_id)


def start_reading(harness: ApiHarness, job_id: str) -> tuple[Events, threading.Thread]:
    events: Events = queue.Queue()
    reader = threading.Thread(target=read_events, args=(harness, job_id, events), daemon=True)
    reader.start()
    return events, reader


def drain(events: Events) -> list[tuple[str, dict]]:
    """Every event until the stream ends."""
    seen = []
    while (event := events.get(timeout=30)) is not None:
        seen.append(event)
    return seen


def test_previews_is_a_field_of_both_forms_and_a_public_param(harness: ApiHarness) -> None:
    multipart = post_multipart(harness, previews="true").json()
    as_json = post_json(harness, previews=True).json()
    plain = post_multipart(harness).json()
    assert (multipart["params"]["previews"], as_json["params"]["previews"]) == (True, True)
    assert plain["params"]["previews"] is False
    refused = post_json(harness, previews="sometimes")
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_request")


def test_a_preview_is_served_to_its_owner_once_recorded(harness: ApiHarness) -> None:
    job_id = submit_with_previews(harness)
    url = f"/v1/jobs/{job_id}/previews/1"
    # not yet: 404 with its own code
    response = harness.client.get(url)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "preview_not_found")
    attempt = claim(harness, job_id)
    harness.storage.put(preview_key(job_id, 2), image_bytes(size=(8, 8)), "image/png")
    assert harness.client.get(f"/v1/jobs/{job_id}/previews/2").status_code == 404  # stored, not recorded
    record_previews(harness, job_id, attempt, upto=1, of=4)
    response = harness.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == harness.storage.get(preview_key(job_id, 1))
    assert harness.client.get(f"/v1/jobs/{job_id}/previews/0").status_code == 422
    # the owner-only rule of every job route
    harness.app.dependency_overrides[current_principal] = lambda: Principal("mallory")
    response = harness.client.get(url)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    del harness.app.dependency_overrides[current_principal]
    # and gone with the job's other objects
    finish(harness, job_id, attempt)
    with session_scope(harness.sessions) as session:
        later = utcnow() + timedelta(seconds=harness.settings.result_ttl_s + 1)
        assert reapers.delete_expired_results(
            session, harness.storage, harness.settings.result_ttl_s, now=later
        )
    response = harness.client.get(url)  # before: 404 "(yet)", so a client kept polling for it
    assert (response.status_code, response.json()["error"]["code"]) == (410, "result_expired")
    assert not harness.storage.exists(preview_key(job_id, 1))


def test_a_job_without_previews_has_none(harness: ApiHarness) -> None:
    response = post_multipart(harness)
    job_id = response.json()["id"]
    attempt = claim(harness, job_id)
    with session_scope(harness.sessions) as session:
        transitions.heartbeat(session, job_id, attempt, LEASE_S, (1, 4), preview_scale=1)
    response = harness.client.get(f"/v1/jobs/{job_id}/previews/1")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "preview_not_found")
    assert "submitted without previews" in response.json()["error"]["message"]


def test_a_scale_past_the_last_is_not_awaited(harness: ApiHarness) -> None:
    job_id = submit_with_previews(harness)
    attempt = claim(harness, job_id)
    record_previews(harness, job_id, attempt, upto=1, of=4)
    response = harness.client.get(f"/v1/jobs/{job_id}/previews/5")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "preview_not_found")
    assert response.json()["error"]["message"] == f"job {job_id} has 4 scales, not 5"


def test_events_announce_each_preview_once_in_order_before_the_end(harness: ApiHarness) -> None:
    job_id = submit_with_previews(harness)
    attempt = claim(harness, job_id)
    events, reader = start_reading(harness, job_id)
    name, data = events.get(timeout=10)
    assert (name, data["status"]) == ("status", "running")
    # one preview with its progress, then two at once (progress writes are throttled)
    record_previews(harness, job_id, attempt, upto=1, of=4)
    assert [events.get(timeout=10) for _ in range(2)] == [
        ("progress", {"id": job_id, "status": "running", "scale": 1, "scales": 4}),
        ("preview", {"id": job_id, "scale": 1, "scales": 4, "url": f"/v1/jobs/{job_id}/previews/1"}),
    ]
    record_previews(harness, job_id, attempt, upto=3, of=4)
    got = [events.get(timeout=10) for _ in range(4)]
    assert [(name, data["scale"]) for name, data in got] == [
        ("progress", 2),
        ("progress", 3),
        ("preview", 2),
        ("preview", 3),
    ]
    # the last preview and the end arrive together: the preview comes first
    harness.storage.put(preview_key(job_id, 4), image_bytes(size=(8, 8)), "image/png")
    with session_scope(harness.sessions) as session:
        assert transitions.heartbeat(session, job_id, attempt, LEASE_S, None, preview_scale=4)
    finish(harness, job_id, attempt)
    rest = drain(events)
    reader.join()
    names = [(name, data.get("scale", data.get("status"))) for name, data in rest]
    assert names == [("preview", 4), ("status", "succeeded")]


def test_a_late_stream_of_a_finished_job_gets_its_scales_previews_then_status(harness: ApiHarness) -> None:
    job_id = submit_with_previews(harness)
    attempt = claim(harness, job_id)
    record_previews(harness, job_id, attempt, upto=4, of=4)
    finish(harness, job_id, attempt)
    events: Events = queue.Queue()
    read_events(harness, job_id, events)
    seen = drain(events)
    assert [(name, data.get("scale")) for name, data in seen] == [
        *[("progress", k) for k in (1, 2, 3, 4)],
        *[("preview", k) for k in (1, 2, 3, 4)],
        ("status", None),
    ]
    assert seen[-1][1]["status"] == "succeeded"


@pytest.fixture
def worker(harness: ApiHarness) -> Iterator[Runtime]:
    """The edit worker's runtime on the harness's database, storage and Redis, serving the fake model."""
    rt = Runtime(
        settings=harness.settings, worker_id="w@host", hostname=socket.gethostname(), pid=os.getpid()
    )
    rt.__dict__["publisher"] = RecordingPublisher()
    fake = FakeEditPipeline(FakeOptions(name="tiny", scales=4, resolutions=(32,)))
    rt.pool.models["tiny"] = LoadedModel(name="tiny", path="fake://", model=fake, load_s=0.0)
    install_runtime(rt)
    yield rt
    rt.pool.clear()
    reset_runtime()


def test_a_stream_sees_the_previews_of_a_worker_run(harness: ApiHarness, worker: Runtime) -> None:
    # given a job with previews, and a client on its event stream
    job_id = submit_with_previews(harness)
    events, reader = start_reading(harness, job_id)
    assert events.get(timeout=10)[1]["status"] == "queued"
    # when the worker runs it
    assert edit_tasks.run_edit(job_id) == f"{job_id}:succeeded"
    seen = drain(events)
    reader.join()
    # then every preview is announced once, in order, before the job's end
    previews = [data for name, data in seen if name == "preview"]
    assert [p["scale"] for p in previews] == [1, 2, 3, 4] and {p["scales"] for p in previews} == {4}
    assert seen[-1][0] == "status" and seen[-1][1]["status"] == "succeeded"
    # each one is there to fetch, and the last is the result (32 px: its preview size is its own)
    fetched = [harness.client.get(p["url"]) for p in previews]
    assert [r.status_code for r in fetched] == [200] * 4
    result = harness.client.get(f"/v1/jobs/{job_id}/result").content
    last, whole = (
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in (fetched[-1].content, result)
    )
    assert last.shape == (32, 32, 3) and np.array_equal(last, whole)
