"""Previews through the worker (`run_edit` called as a function, real databases, local storage): one per
scale in order, stored off the scale loop, recorded with progress, never failing a job, deleted with the
job's objects. With the fake model and with a real tiny model."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from jobs import queries, reapers, service, transitions
from jobs.db import session_scope
from jobs.errors import StorageError
from jobs.models import Job, JobStatus, utcnow
from jobs.settings import Settings
from jobs.storage import preview_key
from tests.worker.test_tasks import RecordingPublisher
from worker import editing
from worker.fake import FakeEditPipeline, FakeOptions
from worker.pool import LoadedModel
from worker.runtime import Runtime, install_runtime, reset_runtime
from worker.tasks import edit as edit_tasks

SCALES = 4


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


class SpyPipeline(FakeEditPipeline):
    """The fake model, recording the preview arguments it gets; `hook(k, K)` runs before each on_scale."""

    def __init__(self, scales: int = SCALES, resolutions: tuple[int, ...] = (32,)) -> None:
        super().__init__(FakeOptions(name="tiny", scales=scales, resolutions=resolutions))
        self.preview_args: list[dict[str, Any]] = []
        self.hook: Callable[[int, int], None] | None = None

    def edit(
        self, images, instructions, seeds=None, cfg=None, tau=None, on_scale=None, resolution=None, **kw
    ):  # type: ignore[no-untyped-def]
        self.preview_args.append(kw)

        def wrapped(k: int, n: int) -> bool | None:
            if self.hook is not None:
                self.hook(k, n)
            return on_scale(k, n) if on_scale else None

        return super().edit(images, instructions, seeds, cfg, tau, wrapped, resolution, **kw)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], db_url: str, redis_url: str) -> Settings:
    return make_settings(database_url=db_url, broker_url=redis_url, lease_s=30, heartbeat_s=5, max_batch=1)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings=settings, worker_id="w@host", hostname=socket.gethostname(), pid=os.getpid())
    rt.__dict__["publisher"] = RecordingPublisher()
    install_runtime(rt)
    yield rt
    rt.pool.clear()
    reset_runtime()


@pytest.fixture
def spy(runtime: Runtime) -> SpyPipeline:
    pipe = SpyPipeline()
    runtime.pool.models["tiny"] = LoadedModel(name="tiny", path="fake://", model=pipe, load_s=0.0)
    return pipe


@pytest.fixture
def submit(runtime: Runtime, submit_job: Callable[..., str]) -> Callable[..., str]:
    """A queued job with its source stored: ``submit(size, **spec_overrides)``."""

    def make(size: tuple[int, int] = (300, 200), **overrides: Any) -> str:
        job_id = submit_job(**overrides)
        runtime.storage.put(f"jobs/{job_id}/source.png", png(size), "image/png")
        return job_id

    return make


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return queries.get_job(session, job_id)


def preview_files(runtime: Runtime, job_id: str) -> list[str]:
    folder = Path(runtime.storage.root) / "jobs" / job_id / "previews"  # type: ignore[attr-defined]
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def stored_previews(runtime: Runtime, job: Job) -> list[Image.Image]:
    return [
        decoded(runtime.storage.get(preview_key(job.id, k))) for k in range(1, (job.preview_scale or 0) + 1)
    ]


def test_a_job_with_previews_gets_one_per_scale_recorded_with_its_progress(
    runtime, spy, submit, sessions, monkeypatch
) -> None:
    written: list[tuple[Any, Any]] = []
    real_heartbeat = transitions.heartbeat

    def recording_heartbeat(session, job_id, attempt, lease_s, progress=None, preview_scale=None, **kw):  # type: ignore[no-untyped-def]
        written.append((progress, preview_scale))
        return real_heartbeat(session, job_id, attempt, lease_s, progress, preview_scale, **kw)

    monkeypatch.setattr(editing.transitions, "heartbeat", recording_heartbeat)
    # given a 300x200 source (the fake's result has its size) and a job that asks for previews
    job_id = submit(previews=True)
    # when
    assert edit_tasks.run_edit(job_id) == f"{job_id}:succeeded"
    # then previews 1..K are stored and recorded, the model was asked for 128 px ones
    job = job_row(sessions, job_id)
    assert job.previews and job.preview_scale == SCALES and job.progress == (SCALES, SCALES)
    assert spy.preview_args == [{"on_preview": spy.preview_args[0]["on_preview"], "preview_size": 128}]
    assert preview_files(runtime, job_id) == ["1.png", "2.png", "3.png", "4.png"]
    previews = stored_previews(runtime, job)
    assert [p.size for p in previews] == [(128, 85)] * SCALES
    # the last one is the result at preview size; the earlier ones are coarser versions of it
    result = decoded(runtime.storage.get(job.result_key or ""))
    assert same_pixels(previews[-1], result.resize((128, 85), Image.BILINEAR))
    assert not any(same_pixels(p, previews[-1]) for p in previews[:-1])
    # recorded by the progress write of the last scale and by the last check before the result, in
    # the same UPDATEs as the lease and progress: no write of its own
    progress_writes = [w for w in written if w != (None, None)]
    assert progress_writes[-2][0] == (SCALES, SCALES) and progress_writes[-2][1] <= SCALES
    assert progress_writes[-1] == (None, SCALES)


def test_a_job_without_previews_stores_none_and_the_model_is_not_asked(
    runtime, spy, submit, sessions
) -> None:
    job_id = submit()
    edit_tasks.run_edit(job_id)
    job = job_row(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and not job.previews and job.preview_scale is None
    assert spy.preview_args == [{}]
    assert preview_files(runtime, job_id) == []


def test_in_a_batch_only_the_jobs_that_asked_get_previews(runtime, spy, submit, sessions) -> None:
    runtime.settings.max_batch = 2
    wants, plain = submit(previews=True, seed=1), submit(seed=2)
    edit_tasks.run_edit(wants)
    assert [job_row(sessions, j).status for j in (wants, plain)] == [JobStatus.SUCCEEDED] * 2
    assert len(spy.preview_args) == 1  # one batch
    assert preview_files(runtime, wants) == ["1.png", "2.png", "3.png", "4.png"]
    assert preview_files(runtime, plain) == [] and job_row(sessions, plain).preview_scale is None


def test_a_preview_that_cannot_be_stored_never_fails_the_job(
    runtime, spy, submit, sessions, monkeypatch
) -> None:
    real_put = runtime.storage.put

    def put(key: str, data: bytes, content_type: str) -> None:
        if key.endswith("/previews/2.png"):
            raise StorageError("S3 refused it")
        real_put(key, data, content_type)

    monkeypatch.setattr(runtime.storage, "put", put)
    job_id = submit(previews=True)
    edit_tasks.run_edit(job_id)
    job = job_row(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.result_key is not None
    # the others are stored and all are announced (the missing one answers 404)
    assert job.preview_scale == SCALES
    assert preview_files(runtime, job_id) == ["1.png", "3.png", "4.png"]


def test_preview_uploads_do_not_hold_up_the_scales(runtime, spy, submit, sessions, monkeypatch) -> None:
    # given an upload of preview 1 that blocks until the edit has reached its last scale
    started, release = threading.Event(), threading.Event()
    timed_out: list[str] = []
    real_put = runtime.storage.put

    def slow_put(key: str, data: bytes, content_type: str) -> None:
        if key.endswith("/previews/1.png"):
            started.set()
            if not release.wait(timeout=10):
                timed_out.append(key)  # the scale loop never got past it: uploads would be inline
        real_put(key, data, content_type)

    def at_last_scale(k: int, n: int) -> None:
        if k == n:
            assert started.wait(timeout=10)  # preview 1's upload is under way...
            release.set()  # ...and scales 2..K ran meanwhile

    monkeypatch.setattr(runtime.storage, "put", slow_put)
    spy.hook = at_last_scale
    job_id = submit(previews=True)
    edit_tasks.run_edit(job_id)
    assert timed_out == []
    job = job_row(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.preview_scale == SCALES
    assert preview_files(runtime, job_id) == ["1.png", "2.png", "3.png", "4.png"]


def test_previews_are_deleted_with_the_jobs_objects(runtime, spy, submit, sessions) -> None:
    # given a succeeded job with its previews, and a failed one whose worker stored previews 3 and 4
    # without getting to record them
    done = submit(previews=True)
    edit_tasks.run_edit(done)
    crashed = submit(previews=True)
    with session_scope(sessions) as session:
        attempt = transitions.claim(session, crashed, "w2", 30).attempts
        assert transitions.heartbeat(session, crashed, attempt, 30, (3, SCALES), preview_scale=2)
        assert transitions.fail(session, crashed, attempt, "edit_failed", "boom")
    for k in range(1, SCALES + 1):
        runtime.storage.put(preview_key(crashed, k), png((8, 8)), "image/png")
    assert len(preview_files(runtime, done)) == len(preview_files(runtime, crashed)) == SCALES
    # when the results' time to live has passed
    later = utcnow() + timedelta(seconds=runtime.settings.result_ttl_s + 1)
    with session_scope(sessions) as session:
        assert reapers.delete_expired_results(
            session, runtime.storage, runtime.settings.result_ttl_s, now=later
        )
    # then every preview is gone with the source and result, and none is announced any more
    for job_id in (done, crashed):
        assert preview_files(runtime, job_id) == []
        assert job_row(sessions, job_id).preview_scale is None


def _lease_lost(sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
    with session_scope(sessions) as session:  # the worker was killed; the reaper finds its lease gone
        later = utcnow() + timedelta(seconds=31)
        assert reapers.reap_expired_leases(session, max_attempts=3, now=later)


def _released(sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
    with session_scope(sessions) as session:  # a transient fault
        assert transitions.release(session, job_id, attempt)


def _handed_back(sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
    with session_scope(sessions) as session:  # the worker's drain
        assert transitions.hand_back(session, job_id, attempt)


def _run_again_failing_at_once(sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
    _lease_lost(sessions, job_id, attempt)
    with session_scope(sessions) as session:  # the next attempt fails before its first progress write
        retry = transitions.claim(session, job_id, "w3", 30)
        assert retry is not None and transitions.fail(session, job_id, retry.attempts, "edit_failed", "x")


@pytest.mark.parametrize(
    "back_to_the_queue", [_lease_lost, _released, _handed_back, _run_again_failing_at_once]
)
def test_previews_of_a_job_that_went_back_to_the_queue_are_deleted_with_its_objects(
    runtime, submit, sessions, back_to_the_queue
) -> None:
    # given a job whose worker stored previews 1..3 but recorded only 1 of them (progress 2 of 4), then
    # lost it: back in the queue, and canceled there (or run again and failed at once)
    job_id = submit(previews=True)
    with session_scope(sessions) as session:
        attempt = transitions.claim(session, job_id, "w2", 30).attempts
        assert transitions.heartbeat(session, job_id, attempt, 30, (2, SCALES), preview_scale=1)
    for k in range(1, 4):
        runtime.storage.put(preview_key(job_id, k), png((8, 8)), "image/png")
    back_to_the_queue(sessions, job_id, attempt)
    with session_scope(sessions) as session:
        assert transitions.cancel(session, job_id).status.terminal
    # when its objects are deleted (DELETE /v1/jobs/{id})
    service.delete_job(sessions, runtime.storage, job_id, "anonymous")
    # then none of its previews is left (before: the requeue forgot the job's scale count, so only the
    # recorded previews were deleted)
    assert preview_files(runtime, job_id) == []
    assert not runtime.storage.exists(f"jobs/{job_id}/source.png")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from varedit import EditPipeline, write_random_checkpoint

    return EditPipeline.from_pretrained(write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny"))


@pytest.mark.usefixtures("one_torch_thread")
def test_the_real_tiny_model_through_the_worker(runtime, submit, sessions, tiny_model) -> None:
    # given the real pipeline (random "tiny": 128 px, 5 scales) and two jobs that differ only in previews
    runtime.pool.models["tiny"] = LoadedModel(name="tiny", path="tiny", model=tiny_model, load_s=0.0)
    with_previews = submit((160, 96), resolution=128, seed=4, previews=True)
    without = submit((160, 96), resolution=128, seed=4)
    # when
    for job_id in (with_previews, without):
        assert edit_tasks.run_edit(job_id) == f"{job_id}:succeeded"
    # then five previews, the last one the result at preview size
    job = job_row(sessions, with_previews)
    K = tiny_model.num_scales(128)
    assert job.preview_scale == K == 5
    previews = stored_previews(runtime, job)
    assert [p.size for p in previews] == [(128, 77)] * K
    result = decoded(runtime.storage.get(job.result_key or ""))
    assert result.size == (160, 96)
    assert same_pixels(previews[-1], result.resize((128, 77), Image.BILINEAR))
    # and the previews changed nothing in the edit
    plain = job_row(sessions, without)
    assert same_pixels(result, decoded(runtime.storage.get(plain.result_key or "")))
