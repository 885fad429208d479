"""Per-process resources of a worker: settings, database sessions, storage, identity.

Built lazily in the process that uses them (the pool child, after the fork), never inherited through a
fork: a database connection or an S3 client shared by two processes corrupts both.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings, get_settings
from jobs.storage import Storage, storage_from_settings


@dataclass
class Runtime:
    settings: Settings
    worker_id: str
    hostname: str
    pid: int

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @cached_property
    def storage(self) -> Storage:
        return storage_from_settings(self.settings)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


# Set in the parent by `celeryd_init` (the node name given with -n) and inherited by the pool children.
_nodename: str | None = None
_runtime: Runtime | None = None


def set_nodename(nodename: str | None) -> None:
    global _nodename
    _nodename = nodename


def worker_identity(settings: Settings) -> str:
    """VAREDIT_WORKER_ID when set explicitly, else the Celery node name (`-n gpu0@%h`), else host-pid."""
    if "worker_id" in settings.model_fields_set:
        return settings.worker_id
    if _nodename:
        return _nodename
    return f"{socket.gethostname()}-{os.getpid()}"


def get_runtime() -> Runtime:
    """This process's runtime; rebuilt when called in a new process (after a fork)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        settings = get_settings()
        _runtime = Runtime(
            settings=settings,
            worker_id=worker_identity(settings),
            hostname=socket.gethostname(),
            pid=os.getpid(),
        )
    return _runtime


def install_runtime(runtime: Runtime) -> None:
    """Use `runtime` in this process (tests build one from their own settings)."""
    global _runtime
    _runtime = runtime


def reset_runtime() -> None:
    """Forget this process's runtime (the next `get_runtime` builds a fresh one). For tests and forks."""
    global _runtime
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.close()
    _runtime = None
