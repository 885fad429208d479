"""The worker's tasks called as plain functions, against real databases (SQLite and PostgreSQL), local
storage and the fake model. No Celery worker process: tests/serve has those."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from jobs import models, queries, queue, reapers, transitions, workers
from jobs.db import session_scope
from jobs.models import Job, JobStatus
from jobs.settings import Settings
from jobs.storage import Storage, result_key
from tests.conftest import lose_next_commit_reply
from worker import editing
from worker import pool as pool_mod
from worker.fake import FakeEditPipeline, FakeOptions
from worker.pool import LoadedModel
from worker.runtime import Runtime, install_runtime, reset_runtime
from worker.tasks import edit as edit_tasks
from worker.tasks import maintenance

WORKER = "test-worker@host"


def _png(color: tuple[int, int, int] = (200, 20, 20), size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


class RecordingPipeline(FakeEditPipeline):
    """The fake model, recording each call; `hook(k, K)` runs at every scale before on_scale."""

    def __init__(
        self,
        hook: Callable[[int, int], None] | None = None,
        fail: Exception | None = None,
        resolutions: tuple[int, ...] = (32,),
    ) -> None:
        super().__init__(FakeOptions(name="tiny", scales=4, resolutions=resolutions))
        self.calls: list[dict[str, Any]] = []
        self.seen_resolutions: list[int | None] = []
        self.seen_negatives: list[list[str] | None] = []  # None: the call had no negative_instruction
        self.released = 0
        self.hook = hook
        self.fail = fail

    def release_memory(self) -> None:
        self.released += 1

    def edit(
        self,
        images,
        instructions,
        seeds=None,
        cfg=None,
        tau=None,
        on_scale=None,  # type: ignore[no-untyped-def]
        resolution=None,
        negative_instruction=None,
    ):
        self.calls.append(
            {"instructions": list(instructions), "seeds": list(seeds or []), "cfg": cfg, "tau": tau}
        )
        self.seen_resolutions.append(resolution)
        self.seen_negatives.append(None if negative_instruction is None else list(negative_instruction))
        if self.fail is not None:
            raise self.fail

        def wrapped(k: int, n: int) -> bool | None:
            if self.hook is not None:
                self.hook(k, n)
            return on_scale(k, n) if on_scale else None

        return super().edit(
            images,
            instructions,
            seeds=seeds,
            cfg=cfg,
            tau=tau,
            on_scale=wrapped,
            negative_instruction="" if negative_instruction is None else negative_instruction,
        )


@pytest.fixture
def settings(make_settings: Callable[..., Settings], db_url: str, redis_url: str) -> Settings:
    return make_settings(database_url=db_url, broker_url=redis_url, lease_s=30, heartbeat_s=5, max_batch=1)


class RecordingPublisher:
    """Stands in for the broker: records each ``run_edit`` message (job id, model, delay)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []

    def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
        self.sent.append((job_id, model, delay_s))


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings=settings, worker_id=WORKER, hostname=socket.gethostname(), pid=os.getpid())
    rt.__dict__["publisher"] = RecordingPublisher()  # fills the cached property
    install_runtime(rt)
    yield rt
    reset_runtime()


@pytest.fixture
def pipeline(runtime: Runtime) -> Iterator[RecordingPipeline]:
    pipe = RecordingPipeline()
    runtime.pool.models["tiny"] = LoadedModel(name="tiny", path="fake://", model=pipe, load_s=0.0)
    yield pipe
    runtime.pool.clear()


@pytest.fixture
def republished(runtime: Runtime) -> list[tuple[str, str, float]]:
    return runtime.publisher.sent


@pytest.fixture
def submit(runtime: Runtime, submit_job: Callable[..., str]) -> Callable[..., str]:
    """A queued job whose source object is stored (the API's order: object first, then the row)."""

    def make(source: bytes | None = None, **overrides: Any) -> str:
        job_id = submit_job(**overrides)
        if source is not False:
            runtime.storage.put(f"jobs/{job_id}/source.png", source or _png(), "image/png")
        return job_id

    return make


def _job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return queries.get_job(session, job_id)


def _objects(storage: Storage, job_id: str) -> list[str]:
    root = Path(storage.root) / "jobs" / job_id  # type: ignore[attr-defined]
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- the happy path and duplicates ----------------------------------------------------------------


def test_run_edit_succeeds_and_stores_a_decodable_result(runtime, pipeline, submit, sessions) -> None:
    # given
    job_id = submit(instruction="invert it", seed=11, cfg=2.5, tau=0.3)
    # when
    outcome = edit_tasks.run_edit(job_id)
    # then
    job = _job(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    assert job.attempts == 1 and job.worker_id == WORKER
    assert job.progress == (4, 4)
    assert job.result_key == result_key(job_id, 1)
    image = Image.open(io.BytesIO(runtime.storage.get(job.result_key)))
    assert image.size == (32, 32) and (job.result_width, job.result_height) == (32, 32)
    assert job.result_bytes == len(runtime.storage.get(job.result_key))
    assert pipeline.calls == [{"instructions": ["invert it"], "seeds": [11], "cfg": 2.5, "tau": 0.3}]
    assert pipeline.seen_resolutions == [32]
    assert outcome == f"{job_id}:succeeded"


def test_a_negative_instruction_reaches_the_model(runtime, pipeline, submit, sessions) -> None:
    plain, steered = submit(seed=5), submit(seed=5, negative_instruction="blurry")
    assert edit_tasks.run_edit(plain).endswith(":succeeded")
    assert edit_tasks.run_edit(steered).endswith(":succeeded")
    # a model is only asked for negatives when a job has one
    assert pipeline.seen_negatives == [None, ["blurry"]]
    results = [runtime.storage.get(_job(sessions, job_id).result_key) for job_id in (plain, steered)]
    assert results[0] != results[1]  # the fake's result depends on the negative instruction


def test_run_edit_delivered_twice_runs_once(runtime, pipeline, submit, sessions) -> None:
    job_id = submit()
    assert edit_tasks.run_edit(job_id).endswith(":succeeded")
    assert edit_tasks.run_edit(job_id) == "dropped"
    job = _job(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert len(pipeline.calls) == 1
    assert _objects(runtime.storage, job_id) == ["result-1.png", "source.png"]


def test_run_edit_drops_unknown_and_canceled_jobs(runtime, pipeline, submit, sessions) -> None:
    job_id = submit()
    with session_scope(sessions) as session:
        transitions.cancel(session, job_id)
    assert edit_tasks.run_edit(job_id) == "dropped"
    assert edit_tasks.run_edit("00000000-0000-0000-0000-000000000000") == "dropped"
    assert pipeline.calls == []
    assert _job(sessions, job_id).status is JobStatus.CANCELED
    assert _objects(runtime.storage, job_id) == ["source.png"]


def test_run_edit_without_a_loaded_model_leaves_the_job_queued(runtime, submit, sessions) -> None:
    runtime.pool.clear()
    job_id = submit()
    assert edit_tasks.run_edit(job_id) == "no_model"
    assert _job(sessions, job_id).status is JobStatus.QUEUED


# -- cancellation and fencing ---------------------------------------------------------------------


def test_cancel_during_generation_stops_at_the_next_progress_write_and_writes_no_result(
    runtime, pipeline, submit, sessions, monkeypatch
) -> None:
    monkeypatch.setattr(editing, "PROGRESS_EVERY_S", 0.0)  # a write (and so a check) at every scale
    job_id = submit()

    def cancel_at_scale_2(k: int, _: int) -> None:
        if k == 2:
            with session_scope(sessions) as session:
                assert transitions.cancel(session, job_id).cancel_requested

    pipeline.hook = cancel_at_scale_2
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.CANCELED
    assert job.progress == (2, 4)  # scale 2's check saw the cancel; scales 3 and 4 never ran
    assert job.result_key is None
    assert _objects(runtime.storage, job_id) == ["source.png"]


def test_between_progress_writes_a_scale_asks_the_database_nothing(
    runtime, pipeline, submit, sessions, monkeypatch
) -> None:
    # a scale takes milliseconds on a GPU: a query per scale per worker is what limited the fleet
    monkeypatch.setattr(editing, "PROGRESS_EVERY_S", 3600.0)
    job_id = submit()
    statements: list[str] = []
    counting, generating = False, threading.get_ident()

    def count(*args: Any) -> None:
        if counting and threading.get_ident() == generating:  # not the lease keeper's renewals
            statements.append(str(args[2]))

    def count_scales(k: int, _: int) -> None:
        nonlocal counting
        counting = 1 <= k < 4  # from the end of scale 1 to the last scale's own write

    pipeline.hook = count_scales
    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        edit_tasks.run_edit(job_id)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    assert _job(sessions, job_id).status is JobStatus.SUCCEEDED
    assert statements == []


def test_cancel_after_the_last_scale_still_wins_before_upload(
    runtime, pipeline, submit, sessions, monkeypatch
) -> None:
    job_id = submit()
    deliver = edit_tasks.EditRun.deliver

    def cancel_then_deliver(self: edit_tasks.EditRun) -> None:
        with session_scope(sessions) as session:  # generation is over; the result is not stored yet
            transitions.cancel(session, job_id)
        deliver(self)

    monkeypatch.setattr(edit_tasks.EditRun, "deliver", cancel_then_deliver)
    edit_tasks.run_edit(job_id)
    assert _job(sessions, job_id).status is JobStatus.CANCELED
    assert _objects(runtime.storage, job_id) == ["source.png"]


def test_lost_lease_is_fenced_out_and_leaves_no_result(runtime, pipeline, submit, sessions) -> None:
    # given a job whose lease is reaped and claimed again by another worker mid-run
    job_id = submit()

    def stolen_at_scale_2(k: int, _: int) -> None:
        if k == 2:
            with session_scope(sessions) as session:
                session.execute(
                    Job.__table__.update().where(Job.id == job_id).values(status=JobStatus.QUEUED)
                )
                assert transitions.claim(session, job_id, "other-worker", 30) is not None

    pipeline.hook = stolen_at_scale_2
    # when
    edit_tasks.run_edit(job_id)
    # then the other attempt owns the job; this one wrote nothing and changed nothing
    job = _job(sessions, job_id)
    assert job.status is JobStatus.RUNNING and job.attempts == 2 and job.worker_id == "other-worker"
    assert _objects(runtime.storage, job_id) == ["source.png"]


# -- failures become outcomes ---------------------------------------------------------------------


def test_pipeline_error_fails_the_job_and_the_next_job_still_runs(
    runtime, pipeline, submit, sessions
) -> None:
    bad, good = submit(), submit()
    pipeline.fail = RuntimeError("CUDA kernel exploded")
    edit_tasks.run_edit(bad)
    pipeline.fail = None
    edit_tasks.run_edit(good)
    job = _job(sessions, bad)
    assert job.status is JobStatus.FAILED and job.error_code == "edit_failed"
    assert "CUDA kernel exploded" in (job.error_message or "")
    assert _job(sessions, good).status is JobStatus.SUCCEEDED
    assert pipeline.released == 0


def test_out_of_memory_fails_the_batch_and_releases_the_models_memory(runtime, pipeline, submit, sessions):
    job_id = submit()
    pipeline.fail = MemoryError("out of memory on cuda:0")
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.error_code == "out_of_memory"
    assert pipeline.released == 1


@pytest.mark.parametrize(
    ("source", "code"), [(False, "source_missing"), (b"definitely not an image", "invalid_image")]
)
def test_bad_source_fails_with_a_code(runtime, pipeline, submit, sessions, source, code) -> None:
    job_id = submit(source=source)
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.error_code == code
    assert pipeline.calls == []


def test_storage_outage_gives_the_job_back_then_fails_after_max_attempts(
    runtime, pipeline, submit, sessions, republished, monkeypatch
) -> None:
    from jobs.errors import StorageError

    def broken_put(key: str, data: bytes, content_type: str) -> None:
        raise StorageError("S3 is down")

    job_id = submit()
    monkeypatch.setattr(runtime.storage, "put", broken_put)
    monkeypatch.setattr(editing, "STORAGE_RETRY_S", (0.0,))
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1  # released, not failed
    assert republished == [(job_id, "tiny", editing.REQUEUE_DELAY_S)]
    # each redelivery fails the same way until max_attempts (3) is spent
    edit_tasks.run_edit(job_id)
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.error_code == "transient_fault" and job.attempts == 3
    assert len(republished) == 2
    assert _objects(runtime.storage, job_id) == ["source.png"]


def test_a_finished_edit_outlives_a_short_storage_outage(
    runtime, pipeline, submit, sessions, republished, monkeypatch
) -> None:
    """The upload is retried in place (the lease kept) before the job is given back: a storage blip of
    seconds neither costs an attempt nor throws the generated image away."""
    from jobs.errors import StorageError

    put, calls = runtime.storage.put, []

    def flaky_put(key: str, data: bytes, content_type: str) -> None:
        calls.append(key)
        if key.endswith("result-1.png") and len(calls) <= 3:
            raise StorageError("S3 answered 503")
        put(key, data, content_type)

    job_id = submit()
    monkeypatch.setattr(runtime.storage, "put", flaky_put)
    monkeypatch.setattr(editing, "STORAGE_RETRY_S", (0.0, 0.0, 0.0, 0.0))
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert len(pipeline.calls) == 1 and republished == []
    assert _objects(runtime.storage, job_id) == ["result-1.png", "source.png"]


def test_a_source_read_outlives_a_short_storage_outage(
    runtime, pipeline, submit, sessions, republished, monkeypatch
) -> None:
    """Reading the source is retried in place as the upload is: before, each failed read cost an
    attempt 5 s apart, so an outage of ~10 s failed every job a worker took during it."""
    from jobs.errors import StorageError

    get, calls = runtime.storage.get, []

    def flaky_get(key: str) -> bytes:
        calls.append(key)
        if len(calls) <= 3:
            raise StorageError("S3 answered 503")
        return get(key)

    job_id = submit()
    monkeypatch.setattr(runtime.storage, "get", flaky_get)
    monkeypatch.setattr(editing, "STORAGE_RETRY_S", (0.0, 0.0, 0.0, 0.0))
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert len(calls) == 4 and republished == []


class FakeClock:
    """`time` for worker.editing and worker.drain: sleeping moves the monotonic clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_drain_grace_cuts_the_upload_retries_short(
    runtime, pipeline, submit, sessions, republished, monkeypatch
) -> None:
    """A worker told to stop retries its upload only until its grace is over, then hands the job back
    as its drain does any other: at once, its attempt undone (a drain never costs one)."""
    from jobs.errors import StorageError
    from worker import drain as drain_mod

    clock, tries = FakeClock(), []
    monkeypatch.setattr(editing, "time", clock)
    monkeypatch.setattr(drain_mod, "time", clock)
    runtime.__dict__["drain"] = drain = drain_mod.Drain(grace_s=5.0)

    def broken_put(key: str, data: bytes, content_type: str) -> None:
        tries.append(clock.now)
        drain.request()  # SIGTERM arrives during the first try
        raise StorageError("S3 is down")

    job_id = submit()
    monkeypatch.setattr(runtime.storage, "put", broken_put)
    edit_tasks.run_edit(job_id)
    assert [t - tries[0] for t in tries] == [0.0, 1.0, 3.0]  # the next retry, at 7 s, is past the grace
    assert clock.now - tries[0] < 5.0 + drain_mod.POLL_S + 1e-9
    job = _job(sessions, job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0
    assert republished == [(job_id, "tiny", 0)]


def test_an_upload_retry_is_logged_when_the_upload_fails(
    runtime, pipeline, submit, sessions, republished, monkeypatch
) -> None:
    """`result_upload_retry` is logged at the failure it reports, with the wait ahead of the retry, not
    once that wait is over (a reader would expect one more try ``retry_in_s`` after it)."""
    from jobs.errors import StorageError
    from worker import drain as drain_mod

    clock, tries, logged = FakeClock(), [], []
    monkeypatch.setattr(editing, "time", clock)
    monkeypatch.setattr(drain_mod, "time", clock)
    real_log = editing.log

    class Recorder:
        def __getattr__(self, level: str) -> Callable[..., None]:
            def emit(event: str, **kw: Any) -> None:
                if event == "result_upload_retry":
                    logged.append((clock.now, kw["retry_in_s"]))
                getattr(real_log, level)(event, **kw)

            return emit

    def broken_put(key: str, data: bytes, content_type: str) -> None:
        tries.append(clock.now)
        raise StorageError("S3 is down")

    job_id = submit()
    monkeypatch.setattr(runtime.storage, "put", broken_put)
    monkeypatch.setattr(editing, "log", Recorder())
    edit_tasks.run_edit(job_id)
    assert [t - tries[0] for t in tries] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    expected = [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0), (7.0, 8.0), (15.0, 16.0)]
    assert [(t - tries[0], wait) for t, wait in logged] == expected


def test_a_message_spent_on_a_job_whose_publish_failed_is_sent_again(
    runtime, pipeline, submit, sessions, republished
) -> None:
    """A worker claims the oldest queued job whatever message woke it. The oldest here had no message
    of its own (its publish failed), so the newer job's message claimed it; before, the newer job was
    then left without one until the stranded pass (300 s; measured from outside: 327 s)."""

    class DeadBroker:
        def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
            raise ConnectionError("broker down")

    unpublished = submit()
    queue.publish_or_flag(sessions, DeadBroker(), unpublished, "tiny")
    newer = submit()
    edit_tasks.run_edit(newer)  # newer's message
    assert _job(sessions, unpublished).status is JobStatus.SUCCEEDED
    assert republished == [(newer, "tiny", 0)]  # newer has a message again
    edit_tasks.run_edit(newer)  # the message sent again claims newer, its own job: nothing more is sent
    assert _job(sessions, newer).status is JobStatus.SUCCEEDED
    assert republished == [(newer, "tiny", 0)]


def test_a_runs_log_lines_name_the_job_it_claimed_not_the_message(runtime, pipeline, submit) -> None:
    """A message only wakes the worker, which claims the queue's next job: the run's log context names
    that job, so searching the logs by job id finds its lines (and the message's id is kept aside)."""
    import structlog

    older, newer = submit(instruction="first"), submit(instruction="second")
    edit_tasks.run_edit(newer)  # claims the older job first
    bound = structlog.contextvars.get_contextvars()
    assert (bound["job_id"], bound["message_job_id"]) == (older, newer)


# -- batching -------------------------------------------------------------------------------------


def test_batch_claims_companions_and_groups_by_cfg_and_tau(runtime, pipeline, submit, sessions) -> None:
    runtime.settings.max_batch = 4
    a = submit(instruction="a", seed=1, cfg=3.0)
    b = submit(instruction="b", seed=2, cfg=3.0)
    c = submit(instruction="c", seed=3, cfg=5.0)
    other_res = submit(instruction="d", resolution=64)
    edit_tasks.run_edit(a)
    for job_id in (a, b, c):
        job = _job(sessions, job_id)
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert _job(sessions, other_res).status is JobStatus.QUEUED  # other resolution: not a companion
    calls = sorted((call["cfg"], tuple(call["seeds"])) for call in pipeline.calls)
    assert calls == [(3.0, (1, 2)), (5.0, (3,))]
    # the companions' own messages arrive later, each a turn of the model: the first runs the job still
    # queued, the next finds nothing left and is dropped
    assert edit_tasks.run_edit(b) == f"{other_res}:succeeded"
    assert edit_tasks.run_edit(c) == "dropped"
    # each result belongs to its own job (the fake's output depends on instruction and seed)
    results = {runtime.storage.get(result_key(j, 1)) for j in (a, b, c)}
    assert len(results) == 3


def test_a_bad_input_in_a_batch_fails_alone_with_its_own_error(runtime, pipeline, submit, sessions) -> None:
    # given a batch of four where one job's input makes the model raise whenever it is in the call
    runtime.settings.max_batch = 4
    ids = [submit(instruction=f"job {i}" + (" poison" if i == 2 else ""), seed=i) for i in range(4)]

    def fail_on_poison(images, instructions, **kw):  # type: ignore[no-untyped-def]
        bad = [text for text in instructions if "poison" in text]
        if bad:
            raise ValueError(f"cannot edit {bad[0]!r}")
        return FakeEditPipeline.edit(pipeline, images, instructions, **kw)

    pipeline.edit = fail_on_poison  # type: ignore[method-assign]
    # when
    edit_tasks.run_edit(ids[0])
    # then the other three succeed and the bad one fails with its own error only
    jobs = [_job(sessions, job_id) for job_id in ids]
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 2 + [JobStatus.FAILED] + [JobStatus.SUCCEEDED]
    assert jobs[2].error_message == "ValueError: cannot edit 'job 2 poison'"
    assert all(j.error_message is None for i, j in enumerate(jobs) if i != 2)


def test_a_lost_commit_reply_on_finish_keeps_the_result(runtime, pipeline, submit, sessions) -> None:
    # given a finish whose COMMIT succeeds but whose reply is lost
    job_id = submit()

    fired = lose_next_commit_reply(
        runtime.sessions, lambda sql: sql.startswith("UPDATE jobs SET") and "result_key=:result_key" in sql
    )
    # when
    edit_tasks.run_edit(job_id)
    # then the job is succeeded and its result is still there
    job = _job(sessions, job_id)
    assert fired and job.status is JobStatus.SUCCEEDED
    assert runtime.storage.get(job.result_key)
    assert _objects(runtime.storage, job_id) == ["result-1.png", "source.png"]


def test_cancel_of_one_batch_member_leaves_the_others_running(runtime, pipeline, submit, sessions) -> None:
    runtime.settings.max_batch = 2
    a, b = submit(instruction="a"), submit(instruction="b")

    def cancel_b(k: int, _: int) -> None:
        if k == 2:
            with session_scope(sessions) as session:
                transitions.cancel(session, b)

    pipeline.hook = cancel_b
    edit_tasks.run_edit(a)
    assert _job(sessions, a).status is JobStatus.SUCCEEDED
    assert _job(sessions, b).status is JobStatus.CANCELED
    assert _objects(runtime.storage, b) == ["source.png"]


# -- maintenance ----------------------------------------------------------------------------------


def test_reaper_requeues_a_dead_workers_job_and_republishes_it(runtime, submit, sessions, republished):
    from datetime import timedelta

    job_id = submit()
    with session_scope(sessions) as session:
        claimed = transitions.claim(
            session, job_id, "dead-worker", 30, now=models.utcnow() - timedelta(seconds=60)
        )
        assert claimed is not None
    assert maintenance.reap_expired_leases() == 1
    job = _job(sessions, job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1 and job.worker_id is None
    assert republished == [(job_id, "tiny", 0)]
    assert maintenance.reap_expired_leases() == 0


def test_stranded_queued_jobs_are_republished(runtime, submit, sessions, republished) -> None:
    from datetime import timedelta

    old = submit(now=models.utcnow() - timedelta(seconds=runtime.settings.stranded_after_s + 5))
    submit()
    assert maintenance.republish_stranded() == 1
    assert republished == [(old, "tiny", 0)]


def test_expire_and_purge_tasks_return_counts(runtime, submit, sessions) -> None:
    from datetime import timedelta

    long_ago = models.utcnow() - timedelta(days=30)
    job_id = submit(now=long_ago, start_timeout_s=60)
    assert maintenance.expire_unstarted() == 1
    assert _job(sessions, job_id).status is JobStatus.EXPIRED
    with session_scope(sessions) as session:  # finished a month ago: past the result TTL
        session.execute(Job.__table__.update().where(Job.id == job_id).values(finished_at=long_ago))
    assert maintenance.delete_expired_results() == 1
    assert _objects(runtime.storage, job_id) == []
    assert _job(sessions, job_id).purged_at is not None


def test_orphan_sweep_task_chains_until_the_listing_ends(runtime, submit, monkeypatch) -> None:
    live = submit()
    for i in range(reapers.SWEEP_BATCH + 1):  # one more folder than a pass reads
        runtime.storage.put(f"jobs/orphan-{i:04d}/source.png", b"x", "image/png")
    settled = time.time() - reapers.ORPHAN_GRACE_S - 60
    for path in Path(runtime.storage.root, "jobs").rglob("*.png"):
        os.utime(path, (settled, settled))
    chained: list[dict[str, Any]] = []
    task = maintenance.sweep_orphan_objects
    monkeypatch.setattr(task, "apply_async", lambda kwargs, queue: chained.append(kwargs))
    first = task()
    assert len(chained) == 1  # the listing went on: a second run resumes after the first's last folder
    second = task(**chained[0])
    assert len(chained) == 1  # and the listing ended there
    assert first + second == reapers.SWEEP_BATCH + 1
    assert [obj.key for obj in runtime.storage.list_objects("jobs/")] == [f"jobs/{live}/source.png"]


def test_every_scheduled_task_is_a_registered_maintenance_or_webhook_task() -> None:
    maintenance.app.loader.import_default_modules()  # the task modules a worker imports
    schedule = maintenance.app.conf.beat_schedule
    assert "sweep_orphan_objects" in schedule
    for entry in schedule.values():
        assert entry["task"] in maintenance.app.tasks
        assert entry["options"]["queue"] in ("maintenance", "webhooks")


# -- pool and process helpers ---------------------------------------------------------------------


def test_pool_loads_the_fake_once_and_warms_it_up(monkeypatch) -> None:
    warmed: list[tuple[int, ...]] = []
    monkeypatch.setattr(pool_mod, "warm_up", lambda model: warmed.append(model.resolutions) or 0.0)
    pool = pool_mod.ModelPool()
    first = pool.load("tiny", "fake://?scales=7&resolutions=32,64")
    again = pool.load("tiny", "fake://?scales=7")
    assert first is again and warmed == [(32, 64)]
    assert pool.get("tiny").name == "tiny" and first.model.options.scales == 7
    with pytest.raises(pool_mod.ModelNotLoaded):
        pool.get("8B-1024")


def test_pool_loads_the_bundled_model_in_the_dtype_asked_for() -> None:
    import torch

    path = pool_mod.resolve_model_path(None, "shapes-64")
    loaded = pool_mod.ModelPool().load("shapes-64", path, device="cpu", dtype="bfloat16")
    pipe = loaded.model
    assert loaded.device == "cpu" and loaded.warmup_s > 0.0
    assert pipe.dtype == torch.bfloat16
    assert pipe.transformer.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16


def test_warm_up_runs_one_edit_per_served_resolution() -> None:
    pipe = RecordingPipeline(resolutions=(32, 128))
    assert pool_mod.warm_up(pipe) >= 0.0
    assert [c["instructions"] for c in pipe.calls] == [[pool_mod.WARMUP_INSTRUCTION]] * 2
    assert pipe.seen_resolutions == [32, 128]


def test_loading_a_model_records_its_facts_for_the_api(runtime, sessions) -> None:
    from worker.process import load_model

    runtime.settings.model_path = "fake://?resolutions=64,32&cfg=2&tau=0.3"
    load_model(runtime, "tiny")
    with sessions() as session:
        facts = workers.model_facts(session, runtime.settings)
    assert facts == {"tiny": workers.ModelFacts("tiny", [64, 32], {"cfg": 2.0, "tau": 0.3})}


def test_a_model_whose_defaults_the_ranges_exclude_is_named_when_it_loads(runtime) -> None:
    from structlog.testing import capture_logs

    from worker.process import load_model

    # cfg 2 is outside [5, 10]: every job that leaves cfg out is refused, which the API can only say
    # to callers; the operator learns it here, when the model's defaults first become known
    runtime.settings.model_path = "fake://?resolutions=32&cfg=2&tau=0.3"
    runtime.settings.cfg_min = 5.0
    with capture_logs() as logs:
        load_model(runtime, "tiny")
    [warning] = [e for e in logs if e["event"] == "model_defaults_outside_ranges"]
    assert warning["log_level"] == "warning" and warning["model"] == "tiny"
    assert warning["outside"] == {"cfg": 2.0}
    assert "VAREDIT_CFG_MIN/MAX" in warning["fix"] and "VAREDIT_MODEL_OVERRIDES" in warning["fix"]


def test_model_path_is_the_setting_or_a_bundled_folder(tmp_path, monkeypatch) -> None:
    assert pool_mod.resolve_model_path("fake://", "tiny") == "fake://"
    monkeypatch.setattr(pool_mod, "BUNDLED_MODELS_DIR", tmp_path)
    with pytest.raises(pool_mod.ModelNotFound, match="VAREDIT_MODEL_PATH"):
        pool_mod.resolve_model_path(None, "tiny")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "config.json").write_text('{"format": "varedit", "config": {"name": "tiny"}}')
    assert pool_mod.resolve_model_path(None, "tiny") == str(tmp_path / "shipped")
    with pytest.raises(pool_mod.ModelNotFound):
        pool_mod.resolve_model_path(None, "8B-1024")


def test_misrouted_message_hands_the_job_back(runtime, pipeline, submit, sessions, republished) -> None:
    job_id = submit(model="2B-512", resolution=512)
    assert edit_tasks.run_edit(job_id) == "misrouted"
    assert _job(sessions, job_id).status is JobStatus.QUEUED
    assert republished == [(job_id, "2B-512", editing.REQUEUE_DELAY_S)]
    assert pipeline.calls == []


def test_fake_path_survives_being_a_path_setting(make_settings) -> None:
    s = make_settings(model_path="fake://?scales=9&gate=/tmp/g")
    pipe = FakeEditPipeline.from_url(str(s.model_path))
    assert pipe.options.scales == 9 and pipe.options.gate == "/tmp/g"


def test_served_models_come_from_the_edits_queues() -> None:
    from worker.process import heartbeat_rows, served_models

    assert served_models(["edits.tiny", "webhooks", "edits.2B-512"]) == ["2B-512", "tiny"]
    assert served_models(["webhooks", "maintenance"]) == []
    assert heartbeat_rows("gpu0@h", ["tiny"]) == [("gpu0@h", "tiny")]
    assert heartbeat_rows("gpu0@h", ["a", "b"]) == [("gpu0@h:a", "a"), ("gpu0@h:b", "b")]


def test_heartbeat_rows_are_written_refreshed_and_removed(runtime, sessions) -> None:
    from worker import heartbeat

    beats = heartbeat.HeartbeatThread(runtime.sessions, rows=[(WORKER, "tiny")], hostname="h", interval_s=60)
    beats.beat(ready=False)
    with sessions() as session:
        assert workers.ready_workers(session, 60) == {}
    beats.beat(ready=True)
    with sessions() as session:
        assert workers.ready_workers(session, 60) == {"tiny": 1}
    beats.goodbye()
    with sessions() as session:
        assert workers.ready_workers(session, 60) == {}


def test_progress_writes_are_throttled_and_a_cancel_shows_at_the_next_write(
    runtime, pipeline, submit, sessions, monkeypatch
) -> None:

    written: list[tuple[int, int] | None] = []
    real_heartbeat = transitions.heartbeat

    def counting_heartbeat(session, job_id, attempt, lease_s, progress=None, **kw):  # type: ignore[no-untyped-def]
        written.append(progress)
        return real_heartbeat(session, job_id, attempt, lease_s, progress, **kw)

    monkeypatch.setattr(editing.transitions, "heartbeat", counting_heartbeat)
    pipeline.options = FakeOptions(scales=10)
    # an instant 10-scale edit writes progress on its last scale only (the claim wrote the lease)
    done = submit()
    edit_tasks.run_edit(done)
    assert [w for w in written if w is not None] == [(10, 10)]
    assert _job(sessions, done).status is JobStatus.SUCCEEDED
    # and a cancel between two writes is seen at the next one (here the last scale's), before upload
    written.clear()
    job_id = submit()

    def cancel_at_5(k: int, _: int) -> None:
        if k == 5:
            with session_scope(sessions) as session:
                transitions.cancel(session, job_id)

    pipeline.hook = cancel_at_5
    edit_tasks.run_edit(job_id)
    job = _job(sessions, job_id)
    assert job.status is JobStatus.CANCELED and job.result_key is None
    assert [w for w in written if w is not None] == [(10, 10)]  # the one write, which saw the cancel


def test_worker_metrics_count_outcomes_scales_and_run_time(runtime, pipeline, submit, sessions) -> None:
    from worker import metrics

    def value(name: str, labels: dict[str, str]) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = value("varedit_worker_edits_total", {"model": "tiny", "outcome": "succeeded"})
    before_scales = value("varedit_worker_scales_total", {"model": "tiny"})
    before_runs = value("varedit_worker_run_seconds_count", {"model": "tiny"})
    before_waits = value("varedit_worker_queue_wait_seconds_count", {"model": "tiny"})
    edit_tasks.run_edit(submit())
    assert value("varedit_worker_edits_total", {"model": "tiny", "outcome": "succeeded"}) == before_ok + 1
    assert value("varedit_worker_scales_total", {"model": "tiny"}) == before_scales + 4
    assert value("varedit_worker_run_seconds_count", {"model": "tiny"}) == before_runs + 1
    assert value("varedit_worker_queue_wait_seconds_count", {"model": "tiny"}) == before_waits + 1
