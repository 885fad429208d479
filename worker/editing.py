"""One run of the warm model over a claimed batch of jobs, from source images to fenced results.

`run_edit` (worker/tasks/edit.py) claims, then hands the claimed jobs to `EditRun`:

1. `load_sources`   read each source image from storage; a missing or undecodable one fails its job.
2. `generate`       run the model, one call per group of jobs sharing (cfg, tau); `on_scale` heartbeats
                    every job (lease + progress + stored previews) and confirms cancellations at the
                    scale boundary; `on_preview` hands each scale's previews to a `PreviewWriter`.
3. `deliver`        per job: a last fenced heartbeat (recording its last previews), upload
                    ``result-<attempt>.png``, fenced `finish`; an upload whose finish is fenced out is
                    deleted again.

Every state change goes through `Fence`, which runs one `jobs.transitions` call (one conditional
UPDATE) per transaction and, after its commit, sends a "job changed" notification. A job canceled or
taken away (lease lost) in the middle stops being heartbeated, and no result is ever stored for it.
Errors become recorded outcomes (``fail`` with a code); transient faults (storage, database) give the
job back to the queue while it has attempts left. When the worker's drain grace runs out
(worker/drain.py), the next scale boundary stops the jobs still generating, and once the run is over
they go back to the queue with their attempt undone (`Fence.hand_back`); a job already generated is
still delivered. Nothing here raises out of the task: the worker process must outlive any job.
"""

from __future__ import annotations

import enum
import io
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import structlog
from PIL import Image, UnidentifiedImageError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs import queries, transitions
from jobs.db import session_scope
from jobs.errors import StorageError
from jobs.models import Job, JobStatus
from jobs.notify import Notifier
from jobs.queue import Publisher, publish_or_flag
from jobs.storage import Storage, preview_key, result_key
from worker import metrics
from worker.drain import Drain
from worker.model import PREVIEW_SIZE, EditModel

log = structlog.get_logger(__name__)
T = TypeVar("T")

RESULT_CONTENT_TYPE = "image/png"
MAX_ERROR_CHARS = 2000  # of an error message recorded on a job
REQUEUE_DELAY_S = 5  # a job given back after a transient fault is republished after this delay
# A storage error reading a source or storing a result is retried in place after each of these delays
# (31 s in all, under the lease the keeper renews) before the run's jobs are given back, at the cost of
# an attempt: an outage of seconds costs none, and a generated image is not thrown away. When the drain
# grace ends first, the job is handed back like any drained one.
STORAGE_RETRY_S = (1.0, 2.0, 4.0, 8.0, 16.0)
# Progress is written (lease + scale k of K, one committed UPDATE) at most this often per job (counting
# the claim) and always on the last scale; the other scales only read the row to see a cancel or a lost
# lease.
# A committed write costs a WAL flush (~5 ms on PostgreSQL here), a read well under 1 ms, and the small
# models run many scales per second.
PROGRESS_EVERY_S = 0.25
# Previews are encoded and stored on these threads, so a scale waits for neither (an upload to S3 takes
# longer than a scale of the small models); `deliver` waits at most PREVIEW_FLUSH_S for a job's last ones.
PREVIEW_THREADS = 2
PREVIEW_FLUSH_S = 10.0


class JobState(enum.StrEnum):
    ACTIVE = "active"  # claimed, generating
    CANCELED = "canceled"  # cancel confirmed (mark_canceled)
    LOST = "lost"  # fenced out: lease expired and the job went to someone else, or it was finished
    FAILED = "failed"
    RELEASED = "released"  # given back to the queue after a transient fault
    DRAINED = "drained"  # stopped by the worker's drain; handed back once the run is over
    HANDED_BACK = "handed_back"  # back in the queue after a drain, its attempt undone
    SUCCEEDED = "succeeded"
    UNKNOWN = "unknown"  # its finish may have committed, and the database could not be asked


@dataclass
class ClaimedJob:
    """The fields of a claimed job row that the run needs (rows are not used across sessions)."""

    id: str
    attempt: int
    model: str
    resolution: int
    instruction: str
    seed: int
    cfg: float
    tau: float
    source_key: str | None
    created_at: datetime | None = None
    previews: bool = False
    negative_instruction: str = ""
    image: Image.Image | None = None
    output: Image.Image | None = None
    state: JobState = JobState.ACTIVE
    generated_at: float | None = None  # perf_counter when the pipeline returned its image
    progress_written_at: float = field(default_factory=time.monotonic)  # the claim wrote the lease

    @classmethod
    def from_row(cls, job: Job) -> ClaimedJob:
        return cls(
            id=job.id,
            attempt=job.attempts,
            model=job.model,
            resolution=job.resolution,
            instruction=job.instruction,
            seed=job.seed,
            cfg=job.cfg,
            tau=job.tau,
            source_key=job.source_key,
            created_at=job.created_at,
            previews=job.previews,
            negative_instruction=job.negative_instruction,
        )


class Withdrawn(Exception):
    """The drain grace ended while a storage call was being retried: the job is withdrawn."""


class TransientFault(Exception):
    """Storage or database trouble that a later attempt may not meet."""


@dataclass
class Fence:
    """The fenced transitions of one worker's claimed jobs, each in its own transaction and followed,
    once committed, by a "job changed" notification. Every method acts only while the job's attempt
    still holds it; what happened is recorded on the `ClaimedJob` (its ``state``)."""

    sessions: sessionmaker[Session]
    notifier: Notifier
    publisher: Publisher
    lease_s: int
    max_attempts: int
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _tx(self, fn: Callable[[Session], bool], job: ClaimedJob) -> bool:
        with session_scope(self.sessions) as session:
            applied = fn(session)
        if applied:
            self.notifier.job_changed(job.id)
        return applied

    def _set(self, job: ClaimedJob, state: JobState) -> None:
        with self._lock:
            job.state = state
        metrics.EDITS.labels(job.model, state.value).inc()

    def active(self, jobs: Iterable[ClaimedJob]) -> list[ClaimedJob]:
        with self._lock:
            return [j for j in jobs if j.state is JobState.ACTIVE]

    def heartbeat(
        self, job: ClaimedJob, progress: tuple[int, int] | None, preview_scale: int | None = None
    ) -> bool:
        """Renew the lease (and record progress and stored previews); False means stop: canceled or
        taken away."""
        return self._tx(
            lambda s: transitions.heartbeat(
                s, job.id, job.attempt, self.lease_s, progress, preview_scale=preview_scale
            ),
            job,
        )

    def still_ours(self, job: ClaimedJob) -> bool:
        """A read-only check: still running under this attempt, and no cancel requested."""
        with self.sessions() as session:
            row = queries.get_job(session, job.id)
            mine = row.status is JobStatus.RUNNING and row.attempts == job.attempt
            return mine and not row.cancel_requested

    def stop(self, job: ClaimedJob) -> None:
        """After a heartbeat said stop: confirm a pending cancel, or let go of a lost lease."""
        if self._tx(lambda s: transitions.mark_canceled(s, job.id, job.attempt), job):
            self._set(job, JobState.CANCELED)
            log.info("edit_canceled", job_id=job.id, attempt=job.attempt)
        else:
            self._set(job, JobState.LOST)
            log.warning("edit_lease_lost", job_id=job.id, attempt=job.attempt)

    def fail(self, job: ClaimedJob, code: str, message: str) -> None:
        try:
            applied = self._tx(
                lambda s: transitions.fail(s, job.id, job.attempt, code, message[:MAX_ERROR_CHARS]), job
            )
        except SQLAlchemyError:
            log.exception("job_fail_not_recorded", job_id=job.id, code=code)  # the reaper will retry it
            applied = False
        self._set(job, JobState.FAILED if applied else JobState.LOST)
        log.warning("edit_failed", job_id=job.id, attempt=job.attempt, code=code, error=message[:500])

    def finish(self, job: ClaimedJob, meta: transitions.ResultMeta) -> bool:
        """running -> succeeded with the uploaded result. When the COMMIT fails, the row is read back
        before anything is undone: a COMMIT whose reply was lost did finish the job, and its result must
        stay. If the row cannot be read either, the job is UNKNOWN and its result is kept."""
        try:
            applied = self._tx(lambda s: transitions.finish(s, job.id, job.attempt, meta), job)
        except SQLAlchemyError:
            finished = self._finished_with(job, meta)
            if finished is None:
                self._set(job, JobState.UNKNOWN)
                raise
            if not finished:
                raise
            log.warning("job_finish_commit_reply_lost", job_id=job.id, attempt=job.attempt)
            self.notifier.job_changed(job.id)
            applied = True
        self._set(job, JobState.SUCCEEDED if applied else JobState.LOST)
        return applied

    def _finished_with(self, job: ClaimedJob, meta: transitions.ResultMeta) -> bool | None:
        """Whether the database holds the job as succeeded by this attempt with this result; None when
        it cannot be asked."""
        try:
            with self.sessions() as session:
                row = queries.get_job(session, job.id)
        except SQLAlchemyError:
            log.warning("job_finish_outcome_unknown", job_id=job.id, exc_info=True)
            return None
        return (
            row.status is JobStatus.SUCCEEDED and row.attempts == job.attempt and row.result_key == meta.key
        )

    def give_back(self, job: ClaimedJob, reason: str) -> None:
        """After a transient fault: requeue (and republish) while attempts remain, else fail."""
        if job.attempt >= self.max_attempts:
            self.fail(job, "transient_fault", f"gave up after {job.attempt} attempts: {reason}")
            return
        try:
            released = self._tx(lambda s: transitions.release(s, job.id, job.attempt), job)
        except SQLAlchemyError:
            log.exception("job_release_failed", job_id=job.id)  # lease expiry requeues it
            released = False
        self._set(job, JobState.RELEASED if released else JobState.LOST)
        if released:
            publish_or_flag(self.sessions, self.publisher, job.id, job.model, REQUEUE_DELAY_S)
        log.warning("edit_released", job_id=job.id, attempt=job.attempt, reason=reason)

    def withdraw(self, jobs: Iterable[ClaimedJob], *, generated_too: bool = False) -> None:
        """The drain stops the active jobs without a result yet (``generated_too``: also those whose
        result is made but could not be stored in the grace): from now on nothing heartbeats or delivers
        them (their lease still runs until `hand_back`)."""
        with self._lock:
            for job in jobs:
                if job.state is JobState.ACTIVE and (generated_too or job.output is None):
                    job.state = JobState.DRAINED

    def hand_back(self, job: ClaimedJob) -> None:
        """A drained job back to the queue with its attempt undone, republished at once for any worker;
        a cancel that came meanwhile is confirmed instead. Called only when nothing of the run acts
        on the job any more: the next claim reuses the attempt number."""
        try:
            handed = self._tx(lambda s: transitions.hand_back(s, job.id, job.attempt), job)
            if not handed:
                self.stop(job)
                return
        except SQLAlchemyError:
            log.exception("job_hand_back_failed", job_id=job.id)  # lease expiry requeues it
            self._set(job, JobState.LOST)
            return
        self._set(job, JobState.HANDED_BACK)
        publish_or_flag(self.sessions, self.publisher, job.id, job.model)
        log.info("edit_handed_back", job_id=job.id, attempt=job.attempt)


class PreviewWriter:
    """Stores previews off the generation thread (PNG encoding and upload on a small pool) and knows,
    per job, the last scale k whose previews 1..k are all dealt with: what the job row may announce.

    A preview that cannot be stored is logged and counted as dealt with: its URL answers 404, the later
    ones are still announced, and the job never fails for it."""

    def __init__(self, storage: Storage, threads: int = PREVIEW_THREADS) -> None:
        self.storage = storage
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="previews")
        self._lock = threading.Lock()
        self._done: dict[str, set[int]] = {}
        self._last: dict[str, int] = {}
        self._pending: dict[str, list[Future[None]]] = {}

    def submit(self, job_id: str, scale: int, image: Image.Image) -> None:
        future = self._pool.submit(self._store, job_id, scale, image)
        with self._lock:
            self._pending.setdefault(job_id, []).append(future)

    def stored(self, job_id: str) -> int:
        """The last scale k such that the previews 1..k are stored (or failed); 0 before the first."""
        with self._lock:
            return self._last.get(job_id, 0)

    def flush(self, job_id: str, timeout_s: float) -> int:
        """Wait (at most ``timeout_s``) for the job's submitted previews; then `stored`."""
        with self._lock:
            pending = list(self._pending.get(job_id, ()))
        wait_all(pending, timeout=timeout_s)
        return self.stored(job_id)

    def close(self) -> None:
        """Drop the previews not started yet; an upload in progress finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _store(self, job_id: str, scale: int, image: Image.Image) -> None:
        try:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            self.storage.put(preview_key(job_id, scale), buf.getvalue(), RESULT_CONTENT_TYPE)
        except Exception:
            log.warning("preview_store_failed", job_id=job_id, scale=scale, exc_info=True)
        with self._lock:
            done = self._done.setdefault(job_id, set())
            done.add(scale)
            last = self._last.get(job_id, 0)
            while last + 1 in done:
                last += 1
            self._last[job_id] = last


@dataclass
class EditRun:
    """One run of a model over a claimed batch: sources, generation, results (see the module doc)."""

    fence: Fence
    storage: Storage
    model: EditModel | None  # None: this process does not serve the jobs' model (give them back)
    jobs: list[ClaimedJob]
    previews: PreviewWriter | None = None  # made when a job of the run asks for previews
    drain: Drain | None = None  # the worker's (None: never stopped by a drain)

    def active(self) -> list[ClaimedJob]:
        return self.fence.active(self.jobs)

    def withdraw_if_draining(self) -> bool:
        """Once the drain grace is over, withdraw the jobs still to generate (`Fence.withdraw`); True
        then: stop generating."""
        if self.drain is None or not self.drain.due():
            return False
        self.fence.withdraw(self.jobs)
        return True

    def hand_back_drained(self) -> None:
        """After the run, its lease keeper stopped: the withdrawn jobs go back to the queue."""
        for job in self.jobs:
            if job.state is JobState.DRAINED:
                self.fence.hand_back(job)

    def give_back(self, reason: str) -> None:
        for job in self.active():
            self.fence.give_back(job, reason)

    def fail_active(self, code: str, message: str) -> None:
        for job in self.active():
            self.fence.fail(job, code, message)

    # -- 1. sources ---------------------------------------------------------------------------------

    def load_sources(self) -> None:
        for job in self.active():
            if job.source_key is None:
                self.fence.fail(job, "source_missing", "the source image was purged")
                continue
            try:
                data = self._with_retries("source_read_retry", job, partial(self.storage.get, job.source_key))
            except KeyError:
                self.fence.fail(job, "source_missing", f"no source object {job.source_key}")
                continue
            except Withdrawn:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()  # decode the first frame here: an undecodable source fails its job
                    # Mode and EXIF kept: the model normalises its input (varedit.images.to_rgb).
                    job.image = img.copy()
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                self.fence.fail(job, "invalid_image", f"the source image does not decode: {exc}")

    # -- 2. generation ------------------------------------------------------------------------------

    def on_scale(self, k: int, n_scales: int, group: list[ClaimedJob]) -> bool:
        """Heartbeat each job of the group with its progress; False stops the pipeline when none is left
        (or the drain withdrew them)."""
        metrics.SCALES.labels(group[0].model).inc()
        if self.withdraw_if_draining():
            return False
        now = time.monotonic()
        for job in group:
            if job.state is not JobState.ACTIVE:
                continue
            if k < n_scales and now - job.progress_written_at < PROGRESS_EVERY_S:
                # Between writes the database is not asked: a scale can take a few milliseconds, and a
                # query per scale per worker is what limited the fleet. A cancel or a lost lease shows
                # at the next write, at most PROGRESS_EVERY_S later.
                continue
            try:
                keep = self.fence.heartbeat(job, (k, n_scales), self._stored_previews(job))
                job.progress_written_at = now
                if not keep:
                    self.fence.stop(job)
            except SQLAlchemyError:
                log.warning("job_heartbeat_failed", job_id=job.id, exc_info=True)
                continue  # the lease still runs; the next scale tries again
        return any(j.state is JobState.ACTIVE for j in group)

    def on_preview(self, k: int, images: list[Image.Image], group: list[ClaimedJob]) -> None:
        """Hand scale k's previews of the jobs that asked for them to the writer; never raises."""
        assert self.previews is not None
        try:
            for job, image in zip(group, images, strict=True):
                if job.previews and job.state is JobState.ACTIVE:
                    self.previews.submit(job.id, k, image)
        except Exception:
            log.warning("preview_not_stored", job_ids=[j.id for j in group], scale=k, exc_info=True)

    def _stored_previews(self, job: ClaimedJob) -> int | None:
        """What the next heartbeat records as the job's stored previews (None: nothing to record)."""
        return self.previews.stored(job.id) if job.previews and self.previews is not None else None

    def _preview_args(self, group: list[ClaimedJob]) -> dict[str, Any]:
        """The model's preview arguments, when a job of the group asks for previews (a model is only
        asked for what some job wants)."""
        if not any(j.previews for j in group):
            return {}
        if self.previews is None:
            self.previews = PreviewWriter(self.storage)
        return {
            "on_preview": lambda k, _, images: self.on_preview(k, images, group),
            "preview_size": PREVIEW_SIZE,
        }

    @staticmethod
    def _negative_args(group: list[ClaimedJob]) -> dict[str, Any]:
        """One negative instruction per image ("" for none), when a job of the group has one."""
        if not any(j.negative_instruction for j in group):
            return {}
        return {"negative_instruction": [j.negative_instruction for j in group]}

    def generate(self) -> None:
        # One pipeline call per (resolution, cfg, tau): the sampler takes them per call, seeds per image.
        groups: dict[tuple[int, float, float], list[ClaimedJob]] = {}
        for job in self.active():
            groups.setdefault((job.resolution, job.cfg, job.tau), []).append(job)
        for (resolution, cfg, tau), group in groups.items():
            if self.withdraw_if_draining():
                return
            group = [j for j in group if j.state is JobState.ACTIVE]
            if not group:
                continue
            with metrics.BUSY.labels(group[0].model).track_inprogress():
                self._generate_group(group, resolution, cfg, tau)

    def _generate_group(self, group: list[ClaimedJob], resolution: int, cfg: float, tau: float) -> None:
        assert self.model is not None
        t0 = time.perf_counter()
        log.info("edit_started", job_ids=[j.id for j in group], resolution=resolution, cfg=cfg, tau=tau)
        try:
            images = self.model.edit(
                [j.image for j in group],
                [j.instruction for j in group],
                seeds=[j.seed for j in group],
                cfg=cfg,
                tau=tau,
                on_scale=lambda k, n: self.on_scale(k, n, group),
                resolution=resolution,
                **self._preview_args(group),
                **self._negative_args(group),
            )
        except Exception as exc:
            still_active = self.fence.active(group)
            if not still_active:
                return  # we stopped it (all canceled or lost); not an error
            out_of_memory = isinstance(exc, MemoryError)
            log.exception("pipeline_error", job_ids=[j.id for j in group], out_of_memory=out_of_memory)
            if out_of_memory:
                self.model.release_memory()
            if len(still_active) > 1:
                # One job's input (or the batch's size) failed the batch: each job runs alone, so only
                # a job that fails by itself fails, with its own error.
                log.warning("batch_split_after_error", job_ids=[j.id for j in still_active])
                for job in still_active:
                    self._generate_group([job], resolution, cfg, tau)
                return
            code = "out_of_memory" if out_of_memory else "edit_failed"
            self.fence.fail(still_active[0], code, f"{type(exc).__name__}: {exc}")
            return
        now = time.perf_counter()
        for job, image in zip(group, images, strict=True):
            job.output, job.generated_at = image, now
        run_s = time.perf_counter() - t0
        metrics.RUN_SECONDS.labels(group[0].model).observe(run_s)
        metrics.BATCH_SIZE.labels(group[0].model).observe(len(group))
        log.info("edit_generated", job_ids=[j.id for j in group], run_s=round(run_s, 3))

    # -- 3. results ---------------------------------------------------------------------------------

    def deliver(self) -> None:
        for job in self.active():
            if job.output is None:
                self.fence.fail(job, "edit_failed", "the pipeline returned no image")
                continue
            if not self._last_check(job):
                self.fence.stop(job)
                continue
            meta = self._upload(job)
            if meta is None:  # the drain grace ended while storage refused it
                continue
            if self.fence.finish(job, meta):
                # deliver_ms: the platform's bookkeeping after generation (encode, upload, fenced finish)
                deliver_ms = (time.perf_counter() - (job.generated_at or 0.0)) * 1000
                log.info(
                    "edit_succeeded",
                    job_id=job.id,
                    attempt=job.attempt,
                    bytes=meta.bytes,
                    deliver_ms=round(deliver_ms, 2),
                )
            else:
                self._delete_quietly(meta.key)
                log.warning("edit_result_fenced_out", job_id=job.id, attempt=job.attempt)

    def _last_check(self, job: ClaimedJob) -> bool:
        """Right before storing: a cancel that arrived after the final scale still wins, and a job that
        was taken away is never written (finish is fenced as well). A job with previews waits for its
        last ones and records them in this heartbeat, so they are announced before it succeeds."""
        if job.previews and self.previews is not None:
            return self.fence.heartbeat(job, None, self.previews.flush(job.id, PREVIEW_FLUSH_S))
        return self.fence.still_ours(job) or self.fence.heartbeat(job, None)

    def _with_retries(self, event: str, job: ClaimedJob, call: Callable[[], T]) -> T:
        """``call()``, a storage error retried in place after each of `STORAGE_RETRY_S`; `TransientFault`
        once they are spent. When the drain grace ends first the job is withdrawn (`Withdrawn`) and
        handed back after the run with its attempt undone, as a drain does to any job in hand."""
        for retry_in_s in STORAGE_RETRY_S:
            try:
                return call()
            except StorageError as exc:
                # Logged as the try fails, so its time and retry_in_s tell when the next try is.
                log.warning(event, job_id=job.id, retry_in_s=retry_in_s, error=str(exc))
            if self.drain is None:
                time.sleep(retry_in_s)
            elif not self.drain.sleep(retry_in_s):
                self.fence.withdraw([job], generated_too=True)
                raise Withdrawn
        try:
            return call()
        except StorageError as exc:
            raise TransientFault(f"storage: {exc}") from exc

    def _upload(self, job: ClaimedJob) -> transitions.ResultMeta | None:
        """Store the result (`_with_retries`); None when the drain withdrew the job meanwhile."""
        assert job.output is not None
        buf = io.BytesIO()
        job.output.save(buf, format="PNG")
        data = buf.getvalue()
        key = result_key(job.id, job.attempt)
        try:
            put = partial(self.storage.put, key, data, RESULT_CONTENT_TYPE)
            self._with_retries("result_upload_retry", job, put)
        except Withdrawn:
            return None
        return transitions.ResultMeta(
            key=key,
            content_type=RESULT_CONTENT_TYPE,
            width=job.output.width,
            height=job.output.height,
            bytes=len(data),
        )

    def _delete_quietly(self, key: str) -> None:
        try:
            self.storage.delete(key)
        except Exception:
            log.warning("result_delete_failed", key=key, exc_info=True)

    def cleanup_unfinished(self) -> None:
        """Delete the result objects of jobs that did not succeed (a fault between upload and finish);
        a job whose finish may have committed (UNKNOWN) keeps its object: an orphan is harmless, a
        succeeded job without its result is not. Previews not yet started are dropped."""
        if self.previews is not None:
            self.previews.close()
        for job in self.jobs:
            if job.state not in (JobState.SUCCEEDED, JobState.UNKNOWN) and job.output is not None:
                self._delete_quietly(result_key(job.id, job.attempt))


class LeaseKeeper(threading.Thread):
    """Extends the leases of a run's active jobs every ``interval_s``, also between scales (text
    encoding, decoding, upload). Cancellation is acted on by `EditRun.on_scale`, not here."""

    def __init__(self, fence: Fence, jobs: list[ClaimedJob], interval_s: float) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.fence, self.jobs, self.interval_s = fence, jobs, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            for job in self.fence.active(self.jobs):
                try:
                    self.fence.heartbeat(job, None)
                except Exception:
                    log.warning("lease_keeper_heartbeat_failed", job_id=job.id, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_event.set()
        self.join(timeout=5)
