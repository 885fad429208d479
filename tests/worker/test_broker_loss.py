"""A real Celery worker survives the loss of its Redis broker while it holds an unacknowledged message
with a countdown (an ETA message: `run_edit` republished after a give-back, `deliver_webhook`), or
while it runs a task that ends before it reconnects, and resumes consuming once Redis is back on the
same port.

Before the guard in `worker/broker.py`, kombu's Redis transport restored the held message on the
closed connection and the worker died with ``Unrecoverable error: AttributeError("'NoneType' object
has no attribute 'hostname'")``; the running task's acknowledgement, on that closed channel, killed it
with ``... has no attribute 'client'`` (found by a chaos soak: the light worker, Redis restarted).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from PIL import Image

from jobs import queries, transitions
from jobs.db import make_engine, make_sessionmaker, session_scope
from jobs.models import JobStatus
from jobs.queue import DELIVER_WEBHOOK_TASK, RUN_EDIT_TASK, WEBHOOKS_QUEUE, make_celery, queue_name
from jobs.settings import Settings
from jobs.storage import LocalStorage
from serve.redis_server import RedisServer, free_port
from tests.conftest import wait_for
from worker import broker as guard

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
OUTAGE_S = 3.0  # the worker notices the loss and runs its restore path within milliseconds
OUTAGES = 3


# The two kinds of worker, each with the ETA message it holds in production: a webhook delivery on the
# light worker, a `run_edit` republished with a countdown (give-back, failed claim) on an edit worker.
KINDS = {
    "light": (WEBHOOKS_QUEUE, DELIVER_WEBHOOK_TASK),
    "edit": (queue_name("tiny"), RUN_EDIT_TASK),
}


class Worker:
    """``celery worker -Q <queue> -c <concurrency>`` (1 unless told) as a child process (the fake model),
    its output in a log file."""

    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        broker: str,
        queue: str,
        extra_env: dict[str, str] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.log = tmp_path / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
        env.update(
            {
                "VAREDIT_DATABASE_URL": db_url,
                "VAREDIT_BROKER_URL": broker,
                "VAREDIT_DATA_DIR": str(tmp_path / "data"),
                "VAREDIT_MODEL_PATH": "fake://",
                "VAREDIT_MODELS": '["tiny"]',
                "VAREDIT_LOG_JSON": "true",
                "VAREDIT_LOG_LEVEL": "DEBUG",  # Celery's per-task lines, which `ran` reads
                "PYTHONUNBUFFERED": "1",
                **(extra_env or {}),
            }
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue,
            "-c", str(concurrency), "-O", "fair", "-n", "broker-loss@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def connects(self) -> int:
        """How many times the consumer has (re)connected to the broker."""
        return self.text().count('"Connected to redis://')

    def ran(self, task_id: str) -> bool:
        return any(task_id in line and "succeeded in" in line for line in self.text().splitlines())

    def alive_for(self, seconds: float) -> bool:
        """Whether the process is still running after `seconds` (returns early when it exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)  # watching the process for the length of the outage
        return self.proc.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the pool child, if it outlived its parent
        self._out.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    # A fixed port and folder of our own, so the same server can be started again after it is killed.
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(port=free_port(), workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    return KINDS[request.param]


@pytest.fixture
def worker(tmp_path: Path, sqlite_url: str, broker: RedisServer, kind: tuple[str, str]) -> Iterator[Worker]:
    started = Worker(tmp_path, sqlite_url, broker.url, queue=kind[0])
    yield started
    started.stop()


def _send(
    broker_url: str, kind: tuple[str, str], countdown: float | None = None, job_id: str | None = None
) -> str:
    """The kind's task for ``job_id``, by default an id that matches nothing (the task finds nothing to
    do and returns)."""
    queue, task = kind
    settings = Settings(_env_file=None, broker_url=broker_url)  # type: ignore[call-arg]
    app = make_celery(settings)
    try:
        args = [job_id or str(uuid.uuid4())]
        return app.send_task(task, args=args, queue=queue, countdown=countdown, retry=False).id
    finally:
        app.close()


def _unacked(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.hlen("unacked"))


def _kill(server: RedisServer) -> None:
    """SIGKILL, as a crash or an OOM kill would: no goodbye to the clients."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def test_worker_holding_an_eta_message_survives_broker_restarts(
    worker: Worker, broker: RedisServer, kind: tuple[str, str]
) -> None:
    wait_for(lambda: "ready." in worker.text(), "the worker to start")
    # Which of the worker's sockets (BRPOP, the control channel) reports the loss first is a race, and
    # the unguarded worker crashed in one order only (most runs): go through several outages.
    for outage in range(1, OUTAGES + 1):
        # given a worker holding an ETA message unacknowledged (kombu's `unacked` hash)
        _send(broker.url, kind, countdown=600)
        wait_for(lambda: _unacked(broker.url) == 1, "the worker to hold the ETA message")
        # when Redis dies abruptly
        _kill(broker)
        # then the worker stays up, retrying the connection
        survived = worker.alive_for(OUTAGE_S)
        tail = worker.text()[-4000:]
        assert survived, f"outage {outage}: the worker exited with {worker.proc.returncode}:\n{tail}"
        assert "Unrecoverable error" not in worker.text()
        # and reconnects once Redis is back on the same port
        broker.stop()
        broker.start()
        wait_for(lambda n=outage: worker.connects() > n, f"the worker to reconnect after outage {outage}")
    # and it consumes again: a fresh task is received and run to the end
    task_id = _send(broker.url, kind)
    wait_for(lambda: worker.ran(task_id), "the fresh task to run")
    assert worker.proc.poll() is None


def _gated_job(db_url: str, data_dir: Path, token: str) -> str:
    """A queued job (source stored) whose edit blocks at the fake model's gate until ``open-<token>``."""
    job_id = transitions.new_job_id()
    key = f"jobs/{job_id}/source.png"
    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="PNG")
    LocalStorage(data_dir / "objects").put(key, image.getvalue(), "image/png")
    spec = transitions.EditSpec(f"hold gate:{token}", "tiny", 32, 1, 3.0, 0.5, 3600)
    engine = make_engine(db_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            transitions.submit(
                session,
                job_id=job_id,
                owner="anonymous",
                spec=spec,
                source_key=key,
                source_content_type="image/png",
            )
    finally:
        engine.dispose()
    return job_id


def _status(db_url: str, job_id: str) -> JobStatus:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            return queries.get_job(session, job_id).status
    finally:
        engine.dispose()


def test_worker_whose_task_ends_while_the_broker_is_down_survives(
    tmp_path: Path, sqlite_url: str, broker: RedisServer
) -> None:
    # given an edit worker running a job, held mid-edit at the fake model's gate
    gate = tmp_path / "gate"
    model = f"fake://?scales=3&gate={gate}&gate_scale=2&gate_timeout_s=60"
    queue = queue_name("tiny")
    # Two pool processes, as the light worker runs (compose: 4): while one runs the task, the consumer
    # waits in BRPOP for the other, so that socket is the one that sees Redis die.
    worker = Worker(
        tmp_path, sqlite_url, broker.url, queue=queue, extra_env={"VAREDIT_MODEL_PATH": model}, concurrency=2
    )
    try:
        wait_for(lambda: "ready." in worker.text(), "the worker to start")
        job_id = _gated_job(sqlite_url, tmp_path / "data", "outage")
        _send(broker.url, KINDS["edit"], job_id=job_id)
        wait_for((gate / "blocked-outage").exists, "the edit to reach the gate")
        # when Redis dies while the task runs, and the task ends before Redis is back
        _kill(broker)
        wait_for(lambda: "Connection to broker lost" in worker.text(), "the worker to notice the loss")
        (gate / "open-outage").touch()
        wait_for(lambda: _status(sqlite_url, job_id) is JobStatus.SUCCEEDED, "the job to succeed")
        broker.stop()
        broker.start()
        # then the worker reconnects and stays up: the finished task's acknowledgement, due on the
        # closed channel, does not kill it (before: AttributeError: 'NoneType' object has no attribute
        # 'client', "Unrecoverable error")
        wait_for(lambda: worker.connects() > 1 or worker.proc.poll() is not None, "the worker to reconnect")
        task_id = _send(broker.url, KINDS["edit"])
        wait_for(lambda: worker.ran(task_id) or worker.proc.poll() is not None, "a fresh task to run")
        tail = worker.text()[-4000:]
        assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:\n{tail}"
        assert "Unrecoverable error" not in worker.text()
    finally:
        worker.stop()


def _qos(client: object, delivered: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(
        channel=SimpleNamespace(connection=SimpleNamespace(client=client)), _delivered=delivered
    )


def test_the_guard_skips_only_a_restore_through_a_detached_transport() -> None:
    calls: list[object] = []
    restore = guard._guard_unacked(lambda qos, client=None: calls.append(client))
    attached, detached = _qos(object(), {"tag": 1}), _qos(None, {"tag": 1})
    restore(attached)  # kombu's own code, as before
    restore(detached, "a client")  # kombu's own code: it does not build a pool from the transport
    restore(detached)  # skipped; the message stays in Redis's unacked hash
    assert calls == [None, "a client"]
    assert attached._delivered == {"tag": 1} and detached._delivered == {}


def test_the_worker_app_installs_the_guard_once() -> None:
    from kombu.transport import redis as kombu_redis

    import worker.celery_app  # noqa: F401 - installs it

    installed = kombu_redis.QoS.restore_unacked
    guard.install_redis_restore_guard()
    assert kombu_redis.QoS.restore_unacked is installed
    assert getattr(installed, "__wrapped__", None) is not None  # kombu's, wrapped once
