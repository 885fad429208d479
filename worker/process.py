"""Celery signal handlers: logging, the warm model in each pool child, the readiness heartbeat.

Order of events in a GPU worker (``-Q edits.<model> -c 1``):

1. parent: ``celeryd_init``     remember the node name (worker id) before the pool forks;
2. child:  ``worker_process_init``   build the runtime, write the heartbeat row ``ready=False``, load
   the model of every ``edits.<model>`` queue this worker consumes, run the warm-up edits, record
   each model's facts (resolutions, sampling defaults) for the API, write ``ready=True`` and start the
   heartbeat thread;
3. child:  ``worker_process_shutdown``  delete the heartbeat row.

A child that serves ignores SIGTERM from the end of step 2 and, from its first task on
(``task_prerun``), takes it as the start of a drain (worker/drain.py).

A light worker (``-Q webhooks,maintenance``) consumes no edits queue and loads nothing.

If loading fails the child logs ``model_load_failed`` with the cause in ``error`` (the embedded runner
shows that line) and asks its parent to shut down (warm shutdown) instead of serving: a worker that
cannot run its model must not claim jobs. Messages it received are not claimed, so their jobs stay
``queued`` and are picked up by a healthy worker.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import os
import signal
from pathlib import Path
from typing import Any

import structlog
from celery import current_app
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
)

from jobs import outbox, workers
from jobs.db import session_scope
from jobs.logging import configure_logging
from jobs.queue import queue_name, webhook_sender
from jobs.settings import get_settings
from jobs.storage import model_example_key
from worker import drain, heartbeat, metrics
from worker.fake import is_fake_path
from worker.model import facts_of
from worker.pool import resolve_model_path
from worker.runtime import Runtime, get_runtime, reset_runtime, set_nodename

log = structlog.get_logger(__name__)

EDITS_PREFIX = queue_name("")  # "edits."


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from configuring logging itself; structlog renders JSON.
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)


@celeryd_init.connect
def _remember_nodename(sender: str | None = None, **_: Any) -> None:
    set_nodename(sender)


def served_models(queue_names: list[str]) -> list[str]:
    """Models whose edits queue is among `queue_names` (`edits.tiny` -> `tiny`)."""
    return sorted(q[len(EDITS_PREFIX) :] for q in queue_names if q.startswith(EDITS_PREFIX))


def heartbeat_rows(worker_id: str, models: list[str]) -> list[tuple[str, str]]:
    # One row per (worker, model); a worker serving one model keeps its plain id.
    if len(models) == 1:
        return [(worker_id, models[0])]
    return [(f"{worker_id}:{m}", m) for m in models]


@worker_process_init.connect
def _init_pool_child(sender: str | None = None, **_: Any) -> None:
    reset_runtime()  # never reuse anything built in the parent
    rt = get_runtime()
    outbox.send_after_commit(
        rt.sessions, webhook_sender(current_app), outbox.reservation_s(rt.settings.webhook_timeout_s)
    )
    models = served_models(list(current_app.amqp.queues.consume_from))
    if not models:  # the light worker: webhook deliveries and maintenance
        metrics.serve_pool_metrics(rt.settings.worker_metrics_port)
        drain.shield()
        return
    structlog.contextvars.bind_contextvars(worker_id=rt.worker_id)
    rows = heartbeat_rows(rt.worker_id, models)
    beats = heartbeat.HeartbeatThread(
        rt.sessions, rows=rows, hostname=rt.hostname, interval_s=rt.settings.heartbeat_s
    )
    beats.beat(ready=False)
    try:
        for model in models:
            load_model(rt, model)
    except Exception as exc:
        log.exception("model_load_failed", models=models, error=f"{type(exc).__name__}: {exc}")
        rt.pool.clear()
        drain.shield()  # the parent forwards the SIGTERM below; this child then leaves as the pool closes
        os.kill(os.getppid(), signal.SIGTERM)  # warm shutdown of the whole worker; tasks won't claim
        return
    metrics.serve_pool_metrics(rt.settings.worker_metrics_port)
    log.info("worker_ready", models=models, pid=os.getpid())  # logged before the row flips, never after
    beats.beat(ready=True)
    beats.start()
    rt.heartbeat = beats
    drain.shield()


def load_model(rt: Runtime, name: str) -> None:
    """Load and warm up the model served as `name`, then record its facts for the API (with the
    folder's example images copied to storage, where the API can serve them)."""
    path = resolve_model_path(rt.settings.model_path, name)
    loaded = rt.pool.load(
        name, path, device=rt.settings.device, dtype=rt.settings.dtype, compile=rt.settings.compile
    )
    metrics.BUSY.labels(name).set(0)  # an idle worker reports 0, so utilisation averages over all
    description, examples = ("", []) if is_fake_path(path) else publish_examples(rt, name, Path(path))
    facts = dataclasses.replace(facts_of(loaded.model), description=description, examples=examples)
    with session_scope(rt.sessions) as session:
        workers.record_model(session, facts, rt.worker_id)
    served = facts.with_override(rt.settings.model_overrides.get(name))
    if outside := rt.settings.defaults_outside_ranges(served.sampling):
        log.warning(
            "model_defaults_outside_ranges",
            model=name,
            outside=outside,
            fix="jobs that leave these out are refused: widen VAREDIT_CFG_MIN/MAX or VAREDIT_TAU_MIN/MAX, "
            "or set the model's defaults in VAREDIT_MODEL_OVERRIDES",
        )


def publish_examples(rt: Runtime, name: str, folder: Path) -> tuple[str, list[dict[str, str]]]:
    """The folder's description, and its example edits with their images put into storage."""
    from varedit.checkpoints import describe

    _, serving = describe(folder, name)
    examples = []
    for i, example in enumerate(serving.examples):
        key = model_example_key(name, i)
        content_type = mimetypes.guess_type(example.image)[0] or "application/octet-stream"
        rt.storage.put(key, (folder / example.image).read_bytes(), content_type)
        examples.append({"instruction": example.instruction, "image_key": key, "content_type": content_type})
    return serving.description, examples


@task_prerun.connect
def _arm_drain(**_: Any) -> None:
    drain.arm(get_runtime().drain)


@worker_process_shutdown.connect
def _shutdown_pool_child(**_: Any) -> None:
    rt = get_runtime()
    if rt.heartbeat is None:
        return
    rt.heartbeat.stop()
    rt.heartbeat.goodbye()
    rt.heartbeat = None
