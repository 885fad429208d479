"""Periodic maintenance (Celery beat -> queue ``maintenance``), each task one short transaction.

Every task over jobs does at most one batch (`jobs.reapers.REAP_BATCH` rows) and re-enqueues itself when
the batch was full, up to `MAX_CHAINED_BATCHES` in a row, so a backlog drains without one long
transaction. The two prunes (idempotency records, heartbeat rows of long-silent workers) are one
unbatched DELETE each and never chain. The orphan sweep lists storage in key order, a stretch of
folders per run, and chains until the listing ends, each run resuming where the last stopped.
Republishing happens after the commit (outbox rule): a requeued job whose message is lost is found
again by `republish_stranded`.
"""

from __future__ import annotations

import structlog
from celery import Task

from jobs import reapers, workers
from jobs.db import session_scope
from jobs.idempotency import prune as prune_idempotency_records
from jobs.queue import publish_or_flag
from worker.celery_app import MAINTENANCE_QUEUE, app
from worker.runtime import get_runtime

log = structlog.get_logger(__name__)

BATCH = reapers.REAP_BATCH  # rows per pass; an indexed UPDATE of 100 rows takes a few ms
MAX_CHAINED_BATCHES = 50  # then wait for the next beat tick instead of monopolising the queue


def _republish(to_publish: list[reapers.ToPublish]) -> None:
    rt = get_runtime()
    for item in to_publish:
        publish_or_flag(rt.sessions, rt.publisher, item.job_id, item.model)


def _notify(job_ids: list[str]) -> None:
    if not job_ids:
        return
    notifier = get_runtime().notifier
    for job_id in job_ids:
        notifier.job_changed(job_id)


def _chain(task: Task, count: int, chained: int) -> None:
    if count >= BATCH and chained < MAX_CHAINED_BATCHES:
        task.apply_async(kwargs={"chained": chained + 1}, queue=MAINTENANCE_QUEUE)


@app.task(name="worker.reap_expired_leases", bind=True, acks_late=True, ignore_result=True)
def reap_expired_leases(self: Task, chained: int = 0) -> int:
    """Requeue (or fail after max_attempts) running jobs whose worker stopped heartbeating."""
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        requeued = reapers.reap_expired_leases(session, rt.settings.max_attempts, limit=BATCH)
    _republish(requeued)
    _notify([r.job_id for r in requeued])
    if requeued:
        log.info("leases_reaped", requeued=len(requeued))
    _chain(self, len(requeued), chained)
    return len(requeued)


@app.task(name="worker.expire_unstarted", bind=True, acks_late=True, ignore_result=True)
def expire_unstarted(self: Task, chained: int = 0) -> int:
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        expired = reapers.expire_unstarted(session, limit=BATCH, requeued_wait_s=rt.settings.start_timeout_s)
    _notify(expired)
    if expired:
        log.info("jobs_expired", count=len(expired))
    _chain(self, len(expired), chained)
    return len(expired)


@app.task(name="worker.republish_stranded", bind=True, acks_late=True, ignore_result=True)
def republish_stranded(self: Task, chained: int = 0) -> int:
    """Queued jobs whose message was never sent or got lost are published again."""
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        stranded = reapers.stranded_queued(session, rt.settings.stranded_after_s, limit=BATCH)
    _republish(stranded)
    if stranded:
        log.info("stranded_republished", count=len(stranded))
    _chain(self, len(stranded), chained)
    return len(stranded)


@app.task(name="worker.delete_expired_results", bind=True, acks_late=True, ignore_result=True)
def delete_expired_results(self: Task, chained: int = 0) -> int:
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        purged = reapers.delete_expired_results(session, rt.storage, rt.settings.result_ttl_s, limit=BATCH)
    if purged:
        log.info("results_purged", count=purged)
    _chain(self, purged, chained)
    return purged


@app.task(name="worker.sweep_orphan_objects", bind=True, acks_late=True, ignore_result=True)
def sweep_orphan_objects(self: Task, resume_after: str = "") -> int:
    """Delete the storage folders that no live job owns (`jobs.reapers.sweep_orphan_objects`)."""
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        sweep = reapers.sweep_orphan_objects(session, rt.storage, start_after=resume_after)
    if sweep.resume_after is not None:
        self.apply_async(kwargs={"resume_after": sweep.resume_after}, queue=MAINTENANCE_QUEUE)
    return sweep.deleted


@app.task(name="worker.prune_idempotency", bind=True, acks_late=True, ignore_result=True)
def prune_idempotency(self: Task, chained: int = 0) -> int:
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        pruned = prune_idempotency_records(session, rt.settings.idempotency_ttl_s)
    return pruned


@app.task(name="worker.prune_worker_heartbeats", bind=True, acks_late=True, ignore_result=True)
def prune_worker_heartbeats(self: Task, chained: int = 0) -> int:
    rt = get_runtime()
    with session_scope(rt.sessions) as session:
        return workers.prune_workers(session, rt.settings.worker_stale_s * 10)
