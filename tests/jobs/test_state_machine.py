"""The job state machine against SQLite and the real PostgreSQL: claims, leases, fencing, cancel, reapers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from jobs import queries, reapers, transitions, workers
from jobs.db import session_scope
from jobs.models import Base, Job, JobStatus, utcnow
from jobs.reapers import Sweep, ToPublish
from jobs.storage import LocalStorage, model_example_key, preview_key, source_key
from jobs.transitions import ResultMeta

LEASE_S = 60
Sessions = sessionmaker[Session]
T = TypeVar("T")


def _job(sessions: Sessions, job_id: str) -> Job:
    with sessions() as session:
        return queries.get_job(session, job_id)


def _claim(sessions: Sessions, job_id: str, worker: str = "w1", now=None) -> Job | None:
    with session_scope(sessions) as session:
        return transitions.claim(session, job_id, worker, LEASE_S, now=now)


def _result(job_id: str, attempt: int) -> ResultMeta:
    return ResultMeta(f"jobs/{job_id}/result-{attempt}.png", "image/png", 32, 32, 123)


def test_migrations_match_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_submit_creates_queued_job(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job = _job(sessions, submit_job(owner="alice"))
    assert job.status is JobStatus.QUEUED
    assert (job.owner, job.attempts, job.worker_id, job.cancel_requested) == ("alice", 0, None, False)
    assert job.created_at.tzinfo is not None
    assert job.start_deadline - job.created_at == timedelta(seconds=3600)


def test_claim_sets_lease_attempt_and_worker(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    now = utcnow()
    job = _claim(sessions, job_id, "gpu-0", now=now)
    assert job is not None
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.RUNNING, 1, "gpu-0")
    assert job.lease_expires_at == now + timedelta(seconds=LEASE_S)
    assert job.started_at == now


def test_claim_returns_none_when_already_claimed(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    assert _claim(sessions, job_id, "w1") is not None
    assert _claim(sessions, job_id, "w2") is None
    assert _job(sessions, job_id).worker_id == "w1"


def test_claim_returns_none_for_unknown_job(sessions: Sessions) -> None:
    assert _claim(sessions, "no-such-job") is None


def test_concurrent_claims_have_exactly_one_winner(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id = submit_job()
    start = threading.Barrier(2)
    results: dict[str, Job | None] = {}

    def worker(name: str) -> None:
        with sessions() as session, session.begin():
            start.wait()
            results[name] = transitions.claim(session, job_id, name, LEASE_S)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [name for name, job in results.items() if job is not None]
    assert len(results) == 2 and len(winners) == 1
    job = _job(sessions, job_id)
    assert (job.attempts, job.worker_id) == (1, winners[0])


def test_concurrent_messages_each_run_a_different_job(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    """Two messages handled at once both choose the best job: one claims it, the other the next one
    (PostgreSQL skips the row the first has locked; otherwise the loser of the claim chooses again)."""
    now = utcnow()
    ids = [submit_job(now=now + timedelta(seconds=i)) for i in range(3)]
    start = threading.Barrier(2)
    claimed: dict[str, list[str]] = {}

    def worker(name: str, message: str) -> None:
        with sessions() as session, session.begin():
            start.wait()
            claimed[name] = [j.id for j in transitions.claim_batch(session, message, name, LEASE_S, 1)]

    threads = [threading.Thread(target=worker, args=(f"w{i}", ids[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(claimed.values()) == sorted([[ids[0]], [ids[1]]])
    assert _job(sessions, ids[2]).status is JobStatus.QUEUED


def test_heartbeat_extends_lease_and_records_progress(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id = submit_job()
    job = _claim(sessions, job_id)
    later = utcnow() + timedelta(seconds=30)
    with session_scope(sessions) as session:
        assert transitions.heartbeat(session, job_id, job.attempts, LEASE_S, progress=(3, 10), now=later)
    job = _job(sessions, job_id)
    assert job.progress == (3, 10)
    assert job.lease_expires_at == later + timedelta(seconds=LEASE_S)


def test_stale_attempt_cannot_heartbeat_or_finish(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    first = _claim(sessions, job_id, "w1")
    # The lease of attempt 1 expires; the reaper requeues the job and another worker claims it.
    expired = utcnow() + timedelta(seconds=LEASE_S + 1)
    with session_scope(sessions) as session:
        assert reapers.reap_expired_leases(session, max_attempts=3, now=expired) == [
            ToPublish(job_id, "tiny")
        ]
    second = _claim(sessions, job_id, "w2", now=expired)
    assert (first.attempts, second.attempts) == (1, 2)
    with session_scope(sessions) as session:
        assert not transitions.heartbeat(session, job_id, 1, LEASE_S)
        assert not transitions.finish(session, job_id, 1, _result(job_id, 1))
        assert not transitions.fail(session, job_id, 1, "boom", "stale")
    with session_scope(sessions) as session:
        assert transitions.finish(session, job_id, 2, _result(job_id, 2))
    job = _job(sessions, job_id)
    assert (job.status, job.worker_id, job.result_key) == (
        JobStatus.SUCCEEDED,
        "w2",
        f"jobs/{job_id}/result-2.png",
    )
    assert job.finished_at is not None and job.lease_expires_at is None


def test_fail_records_error(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    job = _claim(sessions, job_id)
    with session_scope(sessions) as session:
        assert transitions.fail(session, job_id, job.attempts, "invalid_image", "could not decode")
    job = _job(sessions, job_id)
    assert (job.status, job.error_code, job.error_message) == (
        JobStatus.FAILED,
        "invalid_image",
        "could not decode",
    )


def test_cancel_queued_job_is_immediate_and_idempotent(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id = submit_job()
    for _ in range(2):
        with session_scope(sessions) as session:
            job = transitions.cancel(session, job_id)
        assert job.status is JobStatus.CANCELED and job.finished_at is not None
    assert _claim(sessions, job_id) is None


def test_cancel_running_job_is_seen_at_next_heartbeat(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id = submit_job()
    attempt = _claim(sessions, job_id).attempts
    with session_scope(sessions) as session:
        job = transitions.cancel(session, job_id)
    assert (job.status, job.cancel_requested) == (JobStatus.RUNNING, True)
    with session_scope(sessions) as session:
        assert transitions.cancel(session, job_id).cancel_requested  # idempotent
        assert not transitions.heartbeat(session, job_id, attempt, LEASE_S, progress=(2, 6))
        assert not transitions.release(session, job_id, attempt)  # a canceled job is not requeued
    with session_scope(sessions) as session:
        assert transitions.mark_canceled(session, job_id, attempt)
    assert _job(sessions, job_id).status is JobStatus.CANCELED


def test_mark_canceled_requires_a_cancel_request(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    attempt = _claim(sessions, job_id).attempts
    with session_scope(sessions) as session:
        assert not transitions.mark_canceled(session, job_id, attempt)
    assert _job(sessions, job_id).status is JobStatus.RUNNING


def test_terminal_states_never_change(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    attempt = _claim(sessions, job_id).attempts
    with session_scope(sessions) as session:
        assert transitions.finish(session, job_id, attempt, _result(job_id, attempt))
    far = utcnow() + timedelta(days=30)
    with session_scope(sessions) as session:
        assert transitions.cancel(session, job_id).status is JobStatus.SUCCEEDED
        assert not transitions.fail(session, job_id, attempt, "late", "late")
        assert not transitions.mark_canceled(session, job_id, attempt)
        assert not transitions.release(session, job_id, attempt)
        assert not transitions.heartbeat(session, job_id, attempt, LEASE_S)
        assert reapers.reap_expired_leases(session, 3, now=far) == []
        assert reapers.expire_unstarted(session, now=far) == []
        assert transitions.claim(session, job_id, "w9", LEASE_S) is None
    job = _job(sessions, job_id)
    assert (job.status, job.cancel_requested, job.error_code) == (JobStatus.SUCCEEDED, False, None)


def test_release_requeues_for_another_claim(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    job_id = submit_job()
    attempt = _claim(sessions, job_id, "w1").attempts
    with session_scope(sessions) as session:
        assert transitions.release(session, job_id, attempt)
    job = _claim(sessions, job_id, "w2")
    assert (job.attempts, job.worker_id) == (2, "w2")


def test_hand_back_requeues_with_the_attempt_undone_and_is_fenced(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id, canceled = submit_job(), submit_job()
    attempt = _claim(sessions, job_id, "w1").attempts
    with session_scope(sessions) as session:
        assert not transitions.hand_back(session, job_id, attempt + 1)  # not the attempt holding it
        assert transitions.hand_back(session, job_id, attempt)
        assert not transitions.hand_back(session, job_id, attempt)  # once only: it is queued now
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.worker_id) == (JobStatus.QUEUED, 0, None)
    assert job.lease_expires_at is None
    assert (_claim(sessions, job_id, "w2").attempts, _job(sessions, job_id).worker_id) == (1, "w2")
    # a cancel that came meanwhile is not requeued: the worker confirms it instead
    canceled_attempt = _claim(sessions, canceled).attempts
    with session_scope(sessions) as session:
        transitions.cancel(session, canceled)
        assert not transitions.hand_back(session, canceled, canceled_attempt)
        assert transitions.mark_canceled(session, canceled, canceled_attempt)
    assert _job(sessions, canceled).status is JobStatus.CANCELED


def test_reaper_fails_after_max_attempts_and_cancels_pending_cancels(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    exhausted, cancelled, retried = submit_job(), submit_job(), submit_job()
    now = utcnow()
    for job_id in (exhausted, cancelled, retried):
        _claim(sessions, job_id, now=now)
    with session_scope(sessions) as session:
        session.get(Job, exhausted).attempts = 3
        transitions.cancel(session, cancelled)
    expired = now + timedelta(seconds=LEASE_S + 1)
    with session_scope(sessions) as session:
        assert reapers.reap_expired_leases(session, max_attempts=3, now=now) == []  # leases still valid
        assert reapers.reap_expired_leases(session, max_attempts=3, now=expired) == [
            ToPublish(retried, "tiny")
        ]
    failed = _job(sessions, exhausted)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "lease_expired")
    assert _job(sessions, cancelled).status is JobStatus.CANCELED
    requeued = _job(sessions, retried)
    assert (requeued.status, requeued.worker_id, requeued.lease_expires_at) == (JobStatus.QUEUED, None, None)


def test_unstarted_job_expires_after_start_deadline(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    job_id = submit_job(start_timeout_s=10)
    late = utcnow() + timedelta(seconds=11)
    assert _claim(sessions, job_id, now=late) is None  # too late to start
    with session_scope(sessions) as session:
        assert reapers.expire_unstarted(session, now=utcnow()) == []
        assert reapers.expire_unstarted(session, now=late) == [job_id]
    job = _job(sessions, job_id)
    assert (job.status, job.error_code) == (JobStatus.EXPIRED, "start_deadline_exceeded")


def test_a_job_started_in_time_and_requeued_after_its_deadline_runs_again_instead_of_expiring(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    """The start deadline bounds the wait for a first start. A job that started in time and went back to
    the queue after the deadline (its worker was killed; the same after a transient fault or a drain) is
    retried as the reaper promises, not expired as "not started before its start deadline"."""
    job_id = submit_job(start_timeout_s=10)
    t0 = utcnow()
    assert _claim(sessions, job_id, now=t0) is not None  # started in time
    late = t0 + timedelta(seconds=LEASE_S + 1)  # the lease ran out, long after the start deadline
    with session_scope(sessions) as session:
        assert reapers.reap_expired_leases(session, max_attempts=3, now=late) == [ToPublish(job_id, "tiny")]
    with session_scope(sessions) as session:
        assert reapers.expire_unstarted(session, now=late) == []
        assert reapers.stranded_queued(session, 300, now=late + timedelta(seconds=301)) == [
            ToPublish(job_id, "tiny")
        ]
    again = _claim(sessions, job_id, worker="w2", now=late + timedelta(seconds=302))
    assert again is not None and (again.status, again.attempts) == (JobStatus.RUNNING, 2)


def test_a_requeued_job_that_no_worker_takes_again_still_ends_expired(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    """Past its start deadline a requeued job stays claimable, but not forever: after waiting as long
    again as the deployment's start timeout with no worker taking it, it expires."""
    job_id = submit_job(start_timeout_s=10)
    t0 = utcnow()
    _claim(sessions, job_id, now=t0)
    requeued_at = t0 + timedelta(seconds=LEASE_S + 1)
    with session_scope(sessions) as session:
        reapers.reap_expired_leases(session, max_attempts=3, now=requeued_at)
    with session_scope(sessions) as session:
        soon = requeued_at + timedelta(seconds=3599)
        assert reapers.expire_unstarted(session, now=soon, requeued_wait_s=3600) == []
        later = requeued_at + timedelta(seconds=3601)
        assert reapers.expire_unstarted(session, now=later, requeued_wait_s=3600) == [job_id]
    job = _job(sessions, job_id)
    assert (job.status, job.error_code) == (JobStatus.EXPIRED, "start_deadline_exceeded")
    assert job.error_message == "no worker took the job again within 3600 s of its return to the queue"


def test_stranded_queued_jobs_are_republished_once_per_period(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    now = utcnow()
    stranded = submit_job(now=now - timedelta(seconds=600))
    submit_job(now=now)  # fresh: its own publish is still expected to arrive
    with session_scope(sessions) as session:
        assert reapers.stranded_queued(session, 300, now=now) == [ToPublish(stranded, "tiny")]
    with session_scope(sessions) as session:
        assert reapers.stranded_queued(session, 300, now=now + timedelta(seconds=1)) == []


@contextmanager
def _stalled_in_a_transaction(sessions: Sessions, job_id: str) -> Iterator[None]:
    """A worker frozen in the middle of one of its transitions (SIGSTOP, a paused VM, a partition): its
    open transaction keeps the job's row locked until it ends."""
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=Job.updated_at))
        try:
            yield
        finally:
            session.rollback()


def _passes_within(seconds: float, run: Callable[[Session], T], sessions: Sessions) -> list[T]:
    """``run`` in a transaction of its own on a thread: its result, or nothing while it still waits."""
    done: list[T] = []

    def target() -> None:
        with session_scope(sessions) as session:
            done.append(run(session))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return done


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has no row locks
def test_maintenance_and_claims_pass_over_a_row_a_stalled_transaction_holds(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    """A worker frozen inside a transaction holds its job's row lock for as long as it is frozen. The
    periodic passes and the batch claim skip that row and go on with the rest, instead of waiting on it:
    a reaper waiting there froze the light worker (reaping, webhooks) for every job."""
    past = utcnow() - timedelta(seconds=LEASE_S + 1)
    running = [submit_job() for _ in range(2)]
    for job_id in running:
        _claim(sessions, job_id, now=past)  # both leases ran out
    late = [submit_job(start_timeout_s=1, now=past) for _ in range(2)]  # never started, past the deadline
    queued = [submit_job(model="other", now=past) for _ in range(3)]
    with ExitStack() as stack:
        for stalled in (running[0], late[0], queued[1]):
            stack.enter_context(_stalled_in_a_transaction(sessions, stalled))
        stranded = _passes_within(10, lambda s: sorted(reapers.stranded_queued(s, 1)), sessions)
        assert stranded == [sorted([ToPublish(queued[0], "other"), ToPublish(queued[2], "other")])]
        claimed = _passes_within(
            10,
            lambda s: sorted(j.id for j in transitions.claim_batch(s, queued[0], "w2", LEASE_S, 3)),
            sessions,
        )
        assert claimed == [sorted([queued[0], queued[2]])]
        assert _passes_within(10, lambda s: reapers.reap_expired_leases(s, max_attempts=3), sessions) == [
            [ToPublish(running[1], "tiny")]
        ]
        assert _passes_within(10, lambda s: reapers.expire_unstarted(s), sessions) == [[late[1]]]


def test_claim_batch_takes_same_model_and_resolution_oldest_first(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    now = utcnow()
    first = submit_job(now=now)
    older = submit_job(now=now - timedelta(seconds=5))
    newer = submit_job(now=now + timedelta(seconds=5))
    urgent = submit_job(now=now + timedelta(seconds=9), priority=5)
    other_res = submit_job(resolution=64, now=now + timedelta(seconds=7))
    other_model = submit_job(model="2B-512", resolution=512)
    with session_scope(sessions) as session:
        batch = transitions.claim_batch(session, first, "w1", LEASE_S, max_batch=3)
    assert [j.id for j in batch] == [urgent, older, first]  # the message's turn went to the urgent job
    assert all(j.status is JobStatus.RUNNING and j.attempts == 1 for j in batch)
    for job_id in (newer, other_res, other_model):
        assert _job(sessions, job_id).status is JobStatus.QUEUED
    for expected in (newer, other_res):  # duplicates of the message are turns of the model too
        with session_scope(sessions) as session:
            assert [j.id for j in transitions.claim_batch(session, first, "w2", LEASE_S, max_batch=3)] == [
                expected
            ]
    with session_scope(sessions) as session:
        assert transitions.claim_batch(session, first, "w2", LEASE_S, max_batch=3) == []  # 2B-512's is left
    assert _job(sessions, other_model).status is JobStatus.QUEUED


def test_workers_run_higher_priorities_first_then_the_oldest(
    sessions: Sessions, submit_job: Callable[..., str]
) -> None:
    now = utcnow()
    plain = [submit_job(now=now + timedelta(seconds=i)) for i in range(3)]
    urgent = submit_job(now=now + timedelta(seconds=3), priority=5)
    low = submit_job(now=now - timedelta(seconds=1), priority=-1)
    order = []
    for message in [*plain, urgent, low]:  # the broker hands the messages out in submit order
        with session_scope(sessions) as session:
            order += [j.id for j in transitions.claim_batch(session, message, "w1", LEASE_S, max_batch=1)]
    assert order == [urgent, *plain, low]
    with session_scope(sessions) as session:
        assert transitions.claim_batch(session, plain[0], "w1", LEASE_S, max_batch=1) == []


def test_delete_expired_results_purges_objects(
    sessions: Sessions, submit_job: Callable[..., str], tmp_path
) -> None:
    storage = LocalStorage(tmp_path / "objects")
    job_id = submit_job()
    attempt = _claim(sessions, job_id).attempts
    result = _result(job_id, attempt)
    storage.put(f"jobs/{job_id}/source.png", b"src", "image/png")
    storage.put(result.key, b"out", "image/png")
    with session_scope(sessions) as session:
        transitions.finish(session, job_id, attempt, result)
    with session_scope(sessions) as session:
        assert reapers.delete_expired_results(session, storage, ttl_s=3600) == 0
        later = utcnow() + timedelta(seconds=3601)
        assert reapers.delete_expired_results(session, storage, ttl_s=3600, now=later) == 1
    assert not storage.exists(result.key) and not storage.exists(f"jobs/{job_id}/source.png")
    job = _job(sessions, job_id)
    assert (job.status, job.result_key, job.source_key) == (JobStatus.SUCCEEDED, None, None)
    assert job.purged_at is not None


def test_purging_deletes_the_results_of_every_attempt(
    sessions: Sessions, submit_job: Callable[..., str], tmp_path
) -> None:
    # given a job whose first attempt uploaded its result and died before its finish committed (kill -9
    # between the two, or the database lost at the finish), and whose second attempt succeeded
    storage = LocalStorage(tmp_path / "objects")
    job_id = submit_job()
    first = _claim(sessions, job_id).attempts
    storage.put(_result(job_id, first).key, b"orphan", "image/png")
    later = utcnow() + timedelta(seconds=LEASE_S + 1)
    with session_scope(sessions) as session:
        assert reapers.reap_expired_leases(session, max_attempts=3, now=later)
    second = _claim(sessions, job_id, "w2", now=later).attempts
    storage.put(_result(job_id, second).key, b"out", "image/png")
    with session_scope(sessions) as session:
        assert transitions.finish(session, job_id, second, _result(job_id, second), now=later)
    # when its objects are deleted (DELETE /v1/jobs/{id} and the result TTL purge the same way)
    with session_scope(sessions) as session:
        assert reapers.purge_objects(session, storage, [Job.id == job_id], utcnow()) == 1
    # then no attempt's result is left (before: the first one stayed for good)
    assert not storage.exists(_result(job_id, first).key)
    assert not storage.exists(_result(job_id, second).key)


def test_purging_deletes_previews_no_progress_write_recorded(
    sessions: Sessions, submit_job: Callable[..., str], tmp_path
) -> None:
    # given a job with previews whose attempt stored preview 1 and was canceled before its first
    # progress write (progress writes come every 0.25 s), so its row records no scale at all
    storage = LocalStorage(tmp_path / "objects")
    job_id = submit_job(previews=True)
    attempt = _claim(sessions, job_id).attempts
    storage.put(preview_key(job_id, 1), b"preview", "image/png")
    with session_scope(sessions) as session:
        transitions.cancel(session, job_id)
        assert transitions.mark_canceled(session, job_id, attempt)
    # when its objects are deleted
    with session_scope(sessions) as session:
        assert reapers.purge_objects(session, storage, [Job.id == job_id], utcnow()) == 1
    # then the unrecorded preview went too (before: only the scales the row recorded)
    assert not storage.exists(preview_key(job_id, 1))


def test_orphan_sweep_deletes_the_folders_no_live_job_owns_once_settled(
    sessions: Sessions, submit_job: Callable[..., str], tmp_path
) -> None:
    # given a live job's source, the source of a submit whose row never committed (an API process
    # killed between upload and COMMIT), a preview a stalled worker stored after its job was purged,
    # and objects outside any job folder
    storage = LocalStorage(tmp_path / "objects")
    live, never_committed, purged = submit_job(), transitions.new_job_id(), submit_job()
    with session_scope(sessions) as session:
        transitions.cancel(session, purged)
        assert reapers.purge_objects(session, storage, [Job.id == purged], utcnow()) == 1
    kept = [source_key(live, "image/png"), model_example_key("tiny", 0), "jobs/loose-file"]
    swept = [source_key(never_committed, "image/png"), preview_key(purged, 2)]
    for key in kept + swept:
        storage.put(key, b"x", "image/png")
    # when the sweep runs within the grace (a submit may still be between its upload and its COMMIT)
    with session_scope(sessions) as session:
        assert reapers.sweep_orphan_objects(session, storage) == Sweep(0, None)
    assert all(storage.exists(key) for key in kept + swept)
    # and once the grace has passed
    later = utcnow() + timedelta(seconds=reapers.ORPHAN_GRACE_S + 1)
    with session_scope(sessions) as session:
        assert reapers.sweep_orphan_objects(session, storage, now=later) == Sweep(2, None)
    # then only the orphans went
    assert [storage.exists(key) for key in kept + swept] == [True] * len(kept) + [False] * len(swept)


def test_orphan_sweep_passes_resume_where_the_last_one_stopped(sessions: Sessions, tmp_path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    for job_id in [f"orphan-{i}" for i in range(5)]:
        storage.put(source_key(job_id, "image/png"), b"x", "image/png")
        storage.put(preview_key(job_id, 1), b"x", "image/png")
    later = utcnow() + timedelta(seconds=reapers.ORPHAN_GRACE_S + 1)
    deleted: list[int] = []
    resume: str | None = ""
    while resume is not None:
        with session_scope(sessions) as session:
            sweep = reapers.sweep_orphan_objects(session, storage, start_after=resume, now=later, limit=2)
        deleted.append(sweep.deleted)
        resume = sweep.resume_after
    assert deleted == [2, 2, 1]  # two folders a pass, each folder whole, none twice
    assert list(storage.list_objects("jobs/")) == []


def test_worker_heartbeats_count_ready_workers(sessions: Sessions) -> None:
    now = utcnow()
    with session_scope(sessions) as session:
        workers.record_worker(session, "w1", "tiny", "host", ready=False, now=now)
        workers.record_worker(session, "w1", "tiny", "host", ready=True, now=now)  # upsert
        workers.record_worker(session, "w2", "tiny", "host", ready=True, now=now - timedelta(seconds=120))
        workers.record_worker(session, "w3", "2B-512", "host", ready=True, now=now)
    with session_scope(sessions) as session:
        assert workers.ready_workers(session, stale_s=60, now=now) == {"tiny": 1, "2B-512": 1}
        assert workers.prune_workers(session, stale_s=60, now=now) == 1
        workers.remove_worker(session, "w3")
    with sessions() as session:
        assert workers.ready_workers(session, stale_s=60, now=now) == {"tiny": 1}


def test_queue_stats_and_counts(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    now = utcnow()
    submit_job(now=now - timedelta(seconds=40))
    submit_job(now=now - timedelta(seconds=10))
    running = submit_job()
    _claim(sessions, running)
    with session_scope(sessions) as session:
        transitions.cancel(session, submit_job())  # ended jobs are not counted
        stats = queries.queue_stats(session, now=now)
        counts = queries.count_open(session)
    assert stats["tiny"].depth == 2 and abs(stats["tiny"].oldest_age_s - 40) < 1e-3
    assert counts == {("tiny", JobStatus.QUEUED): 2, ("tiny", JobStatus.RUNNING): 1}


def test_list_jobs_pages_newest_first(sessions: Sessions, submit_job: Callable[..., str]) -> None:
    now = utcnow()
    ids = [submit_job(now=now + timedelta(seconds=i)) for i in range(5)]
    submit_job(owner="bob")
    with sessions() as session:
        page1 = queries.list_jobs(session, "anonymous", limit=2)
        last = page1[-1]
        page2 = queries.list_jobs(session, "anonymous", limit=2, before=(last.created_at, last.id))
        last = page2[-1]
        page3 = queries.list_jobs(session, "anonymous", limit=2, before=(last.created_at, last.id))
        queued = queries.list_jobs(session, "anonymous", limit=10, status=JobStatus.RUNNING)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1]
    assert queued == []
