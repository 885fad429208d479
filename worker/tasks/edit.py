"""`run_edit(job_id)`: the GPU workers' task (queue ``edits.<model>``).

Claim first. A message names a job but is a turn of its model (`jobs.transitions.claim_next`): it runs
the queued job of that model with the highest priority, the oldest among equals; when the model has
nothing claimable (the job already ran, was canceled, expired or is unknown, and nothing else waits)
it is acknowledged and dropped, so duplicate deliveries are harmless. The claim may take companions
(queued jobs of the same model and resolution, up to ``max_batch``) that then run as one batch. The
run itself is `worker.editing.EditRun`.
"""

from __future__ import annotations

import time

import structlog
from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from jobs import models, transitions
from jobs.db import session_scope
from jobs.queue import NEVER_DISPATCHED, RUN_EDIT_TASK, publish_or_flag
from worker import metrics
from worker.celery_app import app
from worker.editing import ClaimedJob, EditRun, Fence, LeaseKeeper, TransientFault
from worker.runtime import Runtime, get_runtime

log = structlog.get_logger(__name__)

CLAIM_RETRY_S = 5  # the database was unreachable while claiming: try the message again soon


@app.task(name=RUN_EDIT_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=12)
def run_edit(self: Task, job_id: str) -> str:
    t0 = time.perf_counter()
    rt = get_runtime()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=job_id, worker_id=rt.worker_id)
    if not rt.pool.models:  # this process serves no model (failed load or a light worker): leave it queued
        log.error("run_edit_without_model", pid=rt.pid)
        return "no_model"
    try:
        with session_scope(rt.sessions) as session:
            rows = transitions.claim_batch(
                session, job_id, rt.worker_id, rt.settings.lease_s, rt.settings.max_batch
            )
            jobs = [ClaimedJob.from_row(row) for row in rows]
            # The message claimed a job whose publish failed (flagged: it has no message of its own), so
            # it was another job's: sent again, or the newest queued job would wait out the stranded pass.
            flagged = bool(rows) and rows[0].dispatched_at == NEVER_DISPATCHED
            resend = flagged and job_id not in {job.id for job in jobs}
    except SQLAlchemyError as exc:
        raise self.retry(exc=exc, countdown=CLAIM_RETRY_S) from exc
    if not jobs:
        log.info("run_edit_dropped", reason="not_claimable")
        return "dropped"
    if resend:
        publish_or_flag(rt.sessions, rt.publisher, job_id, jobs[0].model)
    # The message only wakes the worker: it claims the queue's next job, often another one than the
    # message names, so the run's lines carry the claimed job's id (a batch's first).
    structlog.contextvars.bind_contextvars(
        job_id=jobs[0].id, message_job_id=job_id, attempt=jobs[0].attempt, batch=len(jobs)
    )
    claim_ms = round((time.perf_counter() - t0) * 1000, 2)
    for job in jobs:
        if job.created_at is not None:
            wait_s = (models.utcnow() - job.created_at).total_seconds()
            metrics.QUEUE_WAIT_SECONDS.labels(job.model).observe(max(0.0, wait_s))
    log.info("run_edit_claimed", job_ids=[j.id for j in jobs], claim_ms=claim_ms)
    model = jobs[0].model
    served = rt.pool.get(model) if model in rt.pool.models else None
    run = EditRun(fence(rt), rt.storage, served, jobs, drain=rt.drain)
    if run.model is None:  # a message on the wrong queue: hand the jobs back at once
        run.give_back(f"{model} is not served here")
        return "misrouted"
    for job in jobs:
        rt.notifier.job_changed(job.id)  # running
    execute(run, rt.settings.heartbeat_s)
    return ",".join(f"{j.id}:{j.state}" for j in jobs)


def fence(rt: Runtime) -> Fence:
    return Fence(rt.sessions, rt.notifier, rt.publisher, rt.settings.lease_s, rt.settings.max_attempts)


def execute(run: EditRun, heartbeat_s: float) -> None:
    """Sources, generation, results; faults become outcomes, never exceptions out of the task. Jobs a
    drain withdrew are handed back only once the lease keeper is stopped: the next claim reuses their
    attempt number."""
    try:
        with LeaseKeeper(run.fence, run.jobs, heartbeat_s):
            run.load_sources()
            run.generate()
            run.deliver()
    except (TransientFault, SQLAlchemyError) as exc:
        log.warning("edit_transient_fault", error=str(exc))
        run.give_back(str(exc))
    except Exception as exc:  # a bug: record it on the jobs, keep the worker alive
        log.exception("edit_internal_error")
        run.fail_active("internal_error", f"{type(exc).__name__}: {exc}")
    finally:
        run.hand_back_drained()
        run.cleanup_unfinished()
