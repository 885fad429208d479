"""Graceful drain on SIGTERM: a worker finishes the work in hand within a grace period, else hands it back.

Kubernetes and compose send SIGTERM to the container's first process, the Celery parent; the embedded
runner (serve/) sends it to the whole process group. Celery answers with its warm shutdown: it stops
consuming at once, then waits for the running task without any bound. Its only bounded alternative,
the cold shutdown, kills the pool child mid-edit, and the job then waits for its lease to expire and
loses an attempt. So the drain keeps Celery's warm shutdown and bounds the task from inside:

- the parent's `worker_shutting_down` hook (sent by Celery's own SIGTERM handler) forwards SIGTERM to
  the pool children (prefork, what every deployment runs);
- a pool child that serves no longer dies of SIGTERM (billiard, Celery's pool, otherwise ends it with
  SystemExit wherever it is): it ignores it between tasks (`shield`, once its model is ready) and,
  from its first task on, takes it as a drain request (`arm`). The first request starts the grace
  period (``VAREDIT_DRAIN_GRACE_S``); later ones, such as the forwarded copy of a group signal or the
  SIGTERM of a cold shutdown, change nothing;
- the tasks ask `Drain.due`: an edit checks it at every scale boundary and, once due, stops its
  pipeline and hands its jobs back with their attempt undone (worker/editing.py); a webhook delivery
  waits for its POST at most until then (`Drain.within_grace`) and otherwise makes it due again.

The task then returns, and Celery's warm shutdown ends as usual. A pool child still loading its model
dies of SIGTERM as before: it holds no job. SIGKILL stays the hard stop; the lease covers it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from billiard.process import current_process
from celery.signals import worker_init, worker_shutting_down

T = TypeVar("T")

# How late `Drain.within_grace` may notice a drain requested while it waits (see there).
POLL_S = 0.1


class Drain:
    """One process's drain. `request` runs in a signal handler, so it only assigns a number: no locks
    (the code it interrupted may hold them), no threads, no logging."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.deadline: float | None = None  # time.monotonic() at which the grace ends
        self.armed = False  # SIGTERM requests it (`arm`)

    def request(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace_s

    def due(self) -> bool:
        """The grace is over: what is still in progress is to be handed back."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the grace is over (checked every POLL_S: the drain
        request arrives in a signal handler, which does not cut a sleep short)."""
        end = time.monotonic() + seconds
        while not self.due():
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, POLL_S))
        return False

    def within_grace(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` on a helper thread, waited for until it returns or the grace is over; None then, or
        at once when the grace was already over (fn is not started). A thread given up on is left to
        end by itself and its result is dropped. The wait goes in slices of POLL_S until a drain is
        requested: the request arrives in a signal handler, which cannot wake a waiting thread."""
        if self.due():
            return None
        future: Future[T] = Future()
        context = contextvars.copy_context()  # the task's log bindings

        def run() -> None:
            try:
                future.set_result(context.run(fn))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="drain-bounded", daemon=True).start()
        while True:
            deadline = self.deadline
            try:
                return future.result(POLL_S if deadline is None else max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if self.due():
                    return None


def shield() -> None:
    """At the end of a pool child's start (``worker_process_init``): ignore SIGTERM. billiard sets the
    child's signal handlers after that hook but leaves an ignored signal ignored (as it does for Celery's
    own ``REMAP_SIGTERM`` mode). Not in the main process (a solo pool): its handler is Celery's."""
    if current_process().name != "MainProcess":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def arm(drain: Drain) -> None:
    """Before a task (``task_prerun``, when billiard is done with the child's handlers): SIGTERM
    requests the drain."""
    if current_process().name != "MainProcess" and not drain.armed:
        signal.signal(signal.SIGTERM, lambda *_: drain.request())
        drain.armed = True


@dataclass
class _Parent:
    worker: Any = None  # the WorkController of this Celery parent


_PARENT = _Parent()


@worker_init.connect
def _remember_worker(sender: Any = None, **_: Any) -> None:
    _PARENT.worker = sender


@worker_shutting_down.connect
def _forward_to_pool(**_: Any) -> None:
    """In the parent, inside Celery's signal handler (warm or cold shutdown): pass SIGTERM on to the pool
    children, which drain (`arm`). A container runtime signals only the parent."""
    pool = getattr(_PARENT.worker, "pool", None)
    try:
        pids = pool.info.get("processes", []) if pool is not None else []
    except AttributeError:  # the pool was never started
        return
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
