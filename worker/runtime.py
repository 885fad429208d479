"""The state of one worker process, in one object: settings, identity, database sessions, storage, the
broker clients, the warm models, the heartbeat thread and the drain.

Built lazily in the process that uses it (the pool child, after the fork), never inherited through a
fork: a database connection or an S3 client shared by two processes corrupts both. The one thing the
parent contributes is the Celery node name (``-n gpu0@%h``), which becomes the worker id.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_sessionmaker
from jobs.notify import Notifier
from jobs.queue import CeleryPublisher
from jobs.settings import Settings, get_settings
from jobs.storage import Storage, storage_from_settings
from worker.drain import Drain
from worker.heartbeat import HeartbeatThread
from worker.pool import ModelPool


@dataclass
class Runtime:
    settings: Settings
    worker_id: str
    hostname: str
    pid: int
    pool: ModelPool = field(default_factory=ModelPool)
    heartbeat: HeartbeatThread | None = None  # GPU workers only, once their models are ready

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @cached_property
    def storage(self) -> Storage:
        return storage_from_settings(self.settings)

    @cached_property
    def notifier(self) -> Notifier:
        return Notifier(self.settings.broker_url)

    @cached_property
    def publisher(self) -> CeleryPublisher:
        from celery import current_app  # the worker's app, configured by worker.celery_app

        return CeleryPublisher(current_app)

    @cached_property
    def drain(self) -> Drain:
        return Drain(self.settings.drain_grace_s)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "notifier" in self.__dict__:
            self.notifier.close()


@dataclass
class _Process:
    """The node name the parent learned before forking, and this process's runtime."""

    nodename: str | None = None
    runtime: Runtime | None = None


_PROCESS = _Process()


def set_nodename(nodename: str | None) -> None:
    """Called in the Celery parent (`celeryd_init`); inherited by the pool children."""
    _PROCESS.nodename = nodename


def worker_identity(settings: Settings) -> str:
    """VAREDIT_WORKER_ID when set explicitly, else the Celery node name (`-n gpu0@%h`), else host-pid."""
    if "worker_id" in settings.model_fields_set:
        return settings.worker_id
    if _PROCESS.nodename:
        return _PROCESS.nodename
    return f"{socket.gethostname()}-{os.getpid()}"


def get_runtime() -> Runtime:
    """This process's runtime; rebuilt when called in a new process (after a fork)."""
    runtime = _PROCESS.runtime
    if runtime is None or runtime.pid != os.getpid():
        settings = get_settings()
        runtime = Runtime(
            settings=settings,
            worker_id=worker_identity(settings),
            hostname=socket.gethostname(),
            pid=os.getpid(),
        )
        _PROCESS.runtime = runtime
    return runtime


def install_runtime(runtime: Runtime) -> None:
    """Use `runtime` in this process (tests build one from their own settings)."""
    _PROCESS.runtime = runtime


def reset_runtime() -> None:
    """Forget this process's runtime (the next `get_runtime` builds a fresh one). For tests and forks."""
    runtime = _PROCESS.runtime
    if runtime is not None and runtime.pid == os.getpid():
        runtime.close()
    _PROCESS.runtime = None
