"""The workers' Celery app, built from the shared settings.

Queues:

- ``edits.<model>``  one per served model (`jobs.queue.queue_name`); consumed by GPU workers only.
- ``webhooks``       webhook delivery; a light worker, never a GPU worker.
- ``maintenance``    the periodic tasks of `worker.tasks.maintenance` (Celery beat sends them).

A GPU worker is started as (one process per GPU, see docker-compose.yml)::

    celery -A worker.celery_app worker -Q edits.<model> -c 1 -O fair --prefetch-multiplier 1 -n gpu0@%h

and the light one as ``-Q webhooks,maintenance``; beat as ``celery -A worker.celery_app beat``.

Delivery semantics. Tasks ack late (after they return), a task whose pool process dies is rejected
back to the queue, and each worker holds at most one unacknowledged message (prefetch 1, concurrency 1):
a job is lost by neither a crash nor a slow worker. Duplicates are expected and harmless: `run_edit`
claims the job with one conditional UPDATE and drops any message it cannot claim. SIGTERM starts
Celery's warm shutdown, bounded by the drain (worker/drain.py): the running job finishes within
``VAREDIT_DRAIN_GRACE_S`` or goes back to the queue at once, its attempt undone.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Exchange, Queue

from jobs.queue import DELIVER_WEBHOOK_TASK, RUN_EDIT_TASK, WEBHOOKS_QUEUE, queue_name
from jobs.settings import Settings, get_settings
from worker.broker import install_redis_restore_guard

MAINTENANCE_QUEUE = "maintenance"

# Redis redelivers an unacknowledged message after this long. It must exceed the longest edit (or the
# message comes back while its job still runs; harmless, the claim drops it, but wasteful). A worker
# that died is not waited for: its job's lease expires and the reaper requeues it after lease_s.
VISIBILITY_TIMEOUT_S = 2 * 3600

# How long the parent waits for a pool child to come up. Children load weights and run the warm-up edit
# in worker_process_init, before they report up; Celery's default (4 s) would kill them mid-load.
PROC_ALIVE_TIMEOUT_S = 30 * 60

# Periodic maintenance, in seconds. Reaping is what recovers a crashed worker's job, so it runs often;
# the others bound how stale a queue can get and are cheap (indexed queries, batched).
MAINTENANCE_EVERY_S = {
    "worker.reap_expired_leases": 5.0,
    "worker.expire_unstarted": 30.0,
    "worker.republish_stranded": 30.0,
    "worker.delete_expired_results": 600.0,
    "worker.prune_idempotency": 3600.0,
    "worker.prune_worker_heartbeats": 600.0,
    "worker.sweep_orphan_objects": 3600.0,  # lists every job folder in storage: rarely
}


def _queue(name: str) -> Queue:
    # The same declaration Celery makes for `send_task(queue=name)` on the API side, so both agree.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    every = dict(MAINTENANCE_EVERY_S)
    # Reaping more often than a lease lasts keeps recovery within ~1.2 lease of a crash.
    reap = "worker.reap_expired_leases"
    every[reap] = min(every[reap], max(1.0, settings.lease_s / 5))
    queues = dict.fromkeys(every, MAINTENANCE_QUEUE)
    every["worker.dispatch_webhooks"] = settings.webhook_dispatch_s  # webhook latency is at most this
    queues["worker.dispatch_webhooks"] = WEBHOOKS_QUEUE
    return {
        name.removeprefix("worker."): {
            "task": name,
            "schedule": timedelta(seconds=seconds),
            "options": {"queue": queues[name], "expires": seconds},
        }
        for name, seconds in every.items()
    }


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("varedit-worker", broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # outcomes live in the jobs table, not a result backend
        task_queues=[_queue(queue_name(m)) for m in settings.models]
        + [_queue(WEBHOOKS_QUEUE), _queue(MAINTENANCE_QUEUE)],
        task_default_queue=MAINTENANCE_QUEUE,
        task_routes={
            RUN_EDIT_TASK: {"queue": queue_name(settings.default_model)},
            DELIVER_WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
            "worker.dispatch_webhooks": {"queue": WEBHOOKS_QUEUE},
            "worker.*": {"queue": MAINTENANCE_QUEUE},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_proc_alive_timeout=PROC_ALIVE_TIMEOUT_S,
        worker_hijack_root_logger=False,  # structlog renders the logs (jobs.logging)
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # On a lost broker connection keep generating: the lease, not the broker, decides who may
        # finish, and Redis redelivers the unacked message (a harmless duplicate) after the timeout.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
        enable_utc=True,
    )
    app.conf.include = ["worker.tasks.edit", "worker.tasks.maintenance", "worker.tasks.webhooks"]
    return app


# Before any connection exists: a worker must survive Redis dying while it holds a message (worker/broker.py).
install_redis_restore_guard()

app = create_celery_app()

# Signal handlers (model loading in the pool child, heartbeats, logging; beat's gauges) register on import.
import worker.job_gauges  # noqa: E402, F401
import worker.process  # noqa: E402, F401
