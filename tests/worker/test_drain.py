"""The drain on SIGTERM with real worker processes (Celery prefork, the fake model, PostgreSQL, Redis).

An edit worker told to stop lets the running edit finish within its grace (`VAREDIT_DRAIN_GRACE_S`),
takes no new job, and exits. With a short grace it hands the job back at the next scale boundary after
the grace: queued again, its attempt undone, republished at once, long before its lease would have
expired; another worker then finishes it as attempt 1. The light worker does the same with a webhook
POST: answered within the grace it is recorded, otherwise its message is due again, with no attempt
counted.

Each test catches the job mid-generation, or the POST mid-flight, without sleeping: the fake model
blocks at a gate (worker/fake.py) and the receiver holds its answer until the test releases it.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import outbox, queries, service, transitions
from jobs.db import make_engine, make_sessionmaker, session_scope
from jobs.models import DeliveryStatus, Job, JobStatus, WebhookDelivery
from jobs.queue import DELIVER_WEBHOOK_TASK, WEBHOOKS_QUEUE, CeleryPublisher, make_celery
from jobs.settings import Settings
from jobs.storage import storage_from_settings
from tests.conftest import WEBHOOK_SECRET, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 120.0  # for anything to happen at all; generous for a loaded 2-core machine
_until = functools.partial(wait_for, timeout_s=DEADLINE_S)
LEASE_S = 60  # the workers' lease (the default): the bound a hand-back must beat by far
SCALE_MS = 250  # per scale of the fake model; its warm-up edit takes as long as an edit
GATE = "gate:drain"  # the fake model blocks at scale 2 of an instruction with this token


class WorkerProcess:
    """``celery worker`` as a child process in its own process group, its JSON log in a file."""

    def __init__(self, tmp_path: Path, name: str, queue: str, env: dict[str, str], ready_line: str) -> None:
        self.log = tmp_path / f"{name}.log"
        self.ready_line = ready_line
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
        full_env.update({**env, "VAREDIT_LOG_JSON": "true", "PYTHONUNBUFFERED": "1"})
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue,
            "-c", "1", "-O", "fair", "--prefetch-multiplier", "1", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and f'"{event}"' in line]

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return self.ready_line in self.log.read_text(errors="replace")

    def sigterm(self, group: bool) -> None:
        """As Kubernetes and compose do (the first process only), or the embedded runner (the group)."""
        if group:
            os.killpg(self.proc.pid, signal.SIGTERM)
        else:
            os.kill(self.proc.pid, signal.SIGTERM)

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit:\n{self.log.read_text(errors='replace')[-3000:]}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of a failed test
        self.proc.wait()
        self._out.close()


@dataclass
class Platform:
    """What the API would be for these tests: the database, the storage and the broker of the workers."""

    settings: Settings
    sessions: sessionmaker[Session]
    tmp_path: Path

    def env(self, grace_s: float, **extra: str) -> dict[str, str]:
        return {
            "VAREDIT_DATABASE_URL": self.settings.database_url,
            "VAREDIT_BROKER_URL": self.settings.broker_url,
            "VAREDIT_DATA_DIR": str(self.settings.data_dir),
            "VAREDIT_MODELS": '["tiny"]',
            "VAREDIT_DRAIN_GRACE_S": str(grace_s),
            "VAREDIT_LEASE_S": str(LEASE_S),
            **extra,
        }

    def submit(self, instruction: str) -> str:
        """POST /v1/edits in short: the source stored, the job committed queued, `run_edit` published."""
        image = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="PNG")
        spec = transitions.EditSpec(
            instruction=instruction,
            model="tiny",
            resolution=32,
            seed=1,
            cfg=3.0,
            tau=0.5,
            start_timeout_s=3600,
        )
        app = make_celery(self.settings)
        try:
            submitted = service.submit_edit(
                self.sessions,
                storage_from_settings(self.settings),
                CeleryPublisher(app),
                owner="anonymous",
                spec=spec,
                image=image.getvalue(),
                content_type="image/png",
            )
        finally:
            app.close()
        return submitted.job_id

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            return queries.get_job(session, job_id)

    def results(self, job_id: str) -> list[str]:
        folder = self.settings.data_dir / "objects" / "jobs" / job_id
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("result"))


@pytest.fixture
def platform(
    make_settings: Callable[..., Settings], postgres_url: str, redis_url: str, tmp_path: Path
) -> Iterator[Platform]:
    settings = make_settings(database_url=postgres_url, broker_url=redis_url)
    engine = make_engine(settings.database_url)
    yield Platform(settings, make_sessionmaker(engine), tmp_path)
    engine.dispose()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start_worker(name: str, queue: str, env: dict[str, str], ready_line: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, name, queue, env, ready_line)
        started.append(worker)
        _until(worker.ready, f"{name} to start")
        return worker

    yield start_worker
    for worker in started:
        worker.close()


def _edit_worker(
    start: Callable[..., WorkerProcess], platform: Platform, name: str, grace_s: float, scales: int
) -> WorkerProcess:
    """An edit worker whose model takes ``scales`` x SCALE_MS per edit, ready once warmed up."""
    gate = platform.tmp_path / "gate"
    model = f"fake://?scales={scales}&scale_ms={SCALE_MS}&gate={gate}&gate_scale=2"
    return start(name, "edits.tiny", platform.env(grace_s, VAREDIT_MODEL_PATH=model), '"worker_ready"')


def _catch_mid_generation(platform: Platform, job_id: str) -> None:
    """Wait until the job runs and its edit is blocked at the gate (scale 2), then let it go on."""
    gate = platform.tmp_path / "gate"
    _until(lambda: (gate / "blocked-drain").exists(), "the edit to reach the gate")
    assert platform.job(job_id).status is JobStatus.RUNNING
    (gate / "open-drain").touch()


# -- edit workers -----------------------------------------------------------------------------------


def test_an_edit_within_the_grace_finishes_and_the_worker_takes_no_new_job(start, platform) -> None:
    worker = _edit_worker(start, platform, "patient", grace_s=DEADLINE_S, scales=20)  # 5 s edits
    job_id = platform.submit(f"make it blue {GATE}")
    _catch_mid_generation(platform, job_id)
    # when the whole group is told to stop (the embedded runner); the pool child must not die of it
    signaled_at = datetime.now(UTC)
    worker.sigterm(group=True)
    later = platform.submit("make it green")  # queued while the worker drains
    # then the running edit finishes, and the worker exits cleanly
    assert worker.exit_code() == 0
    job = platform.job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert job.finished_at is not None and job.finished_at > signaled_at  # it ran on through the drain
    assert platform.results(job_id) == ["result-1.png"]
    assert worker.events("edit_handed_back") == []
    # and the job submitted meanwhile is left for another worker, never claimed
    untouched = platform.job(later)
    assert untouched.status is JobStatus.QUEUED and untouched.attempts == 0


@pytest.mark.parametrize("group", [False, True], ids=["parent", "group"])
def test_past_the_grace_the_edit_is_handed_back_at_once_with_its_attempt(
    start, platform, group: bool
) -> None:
    grace_s = 1.0
    # 10 s edits: the 9.5 s left after the gate dwarf the grace however slowly this machine runs
    worker = _edit_worker(start, platform, "hasty", grace_s=grace_s, scales=40)
    job_id = platform.submit(f"make it blue {GATE}")
    _catch_mid_generation(platform, job_id)
    signaled = time.monotonic()
    worker.sigterm(group)
    # the job is queued again once the grace is over, its attempt undone, long before the lease ends
    _until(lambda: platform.job(job_id).status is not JobStatus.RUNNING, "the job to leave running")
    handed_back_after_s = time.monotonic() - signaled
    job = platform.job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None
    assert grace_s <= handed_back_after_s < LEASE_S / 4, handed_back_after_s
    assert job.progress_scale is None and platform.results(job_id) == []
    assert worker.exit_code() == 0
    [handed] = worker.events("edit_handed_back")
    assert handed["job_id"] == job_id and handed["attempt"] == 1
    # and the message republished at hand-back brings it to the next worker, which finishes it as
    # attempt 1: nothing waits for a lease, nothing runs twice
    successor = _edit_worker(start, platform, "successor", grace_s=60, scales=2)
    _until(lambda: platform.job(job_id).status.terminal, "the successor to finish the job")
    job = platform.job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert platform.results(job_id) == ["result-1.png"]
    # its log line follows the commit: wait for it rather than race the file
    _until(lambda: successor.events("edit_succeeded"), "the successor to log its success")
    assert [e["job_id"] for e in successor.events("edit_succeeded")] == [job_id]
    print(f"handed back {handed_back_after_s:.2f} s after SIGTERM (grace {grace_s} s, lease {LEASE_S} s)")


# -- the light worker's webhook deliveries ------------------------------------------------------------


class HeldReceiver:
    """A webhook endpoint that takes the request and answers 204 only once the test says so."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.arrived.set()
                receiver.release.wait(DEADLINE_S)
                with contextlib.suppress(OSError):  # the sender may be gone by now
                    self.send_response(204)
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[HeldReceiver]:
    held = HeldReceiver()
    yield held
    held.close()


def _light_worker(start, platform: Platform, grace_s: float) -> WorkerProcess:  # type: ignore[no-untyped-def]
    env = platform.env(
        grace_s,
        VAREDIT_WEBHOOK_SECRETS=json.dumps([WEBHOOK_SECRET]),
        VAREDIT_ALLOW_PRIVATE_URLS="true",
        VAREDIT_WEBHOOK_TIMEOUT_S="60",  # the POST alone would hold the worker this long
    )
    return start("light", WEBHOOKS_QUEUE, env, "ready.")


def _send_a_message(platform: Platform, url: str) -> str:
    """A job canceled while queued: its ``job.canceled`` message, handed to the light worker."""
    job_id = transitions.new_job_id()
    spec = transitions.EditSpec(
        instruction="make it blue",
        model="tiny",
        resolution=32,
        seed=1,
        cfg=3.0,
        tau=0.5,
        start_timeout_s=3600,
        webhook_url=url,
    )
    with session_scope(platform.sessions) as session:
        transitions.submit(
            session,
            job_id=job_id,
            owner="anonymous",
            spec=spec,
            source_key=f"jobs/{job_id}/source.png",
            source_content_type="image/png",
        )
    with session_scope(platform.sessions) as session:
        transitions.cancel(session, job_id)
    with session_scope(platform.sessions) as session:  # reserved as the dispatcher does it
        [handover] = outbox.claim_due(session, outbox.reservation_s(60))
    app = make_celery(platform.settings)
    try:
        app.send_task(DELIVER_WEBHOOK_TASK, args=list(handover), queue=WEBHOOKS_QUEUE)
    finally:
        app.close()
    return job_id


def _delivery(platform: Platform, job_id: str) -> WebhookDelivery:
    with platform.sessions() as session:
        return session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def test_a_webhook_answered_within_the_grace_is_recorded(start, platform, receiver) -> None:
    worker = _light_worker(start, platform, grace_s=DEADLINE_S)
    job_id = _send_a_message(platform, receiver.url)
    assert receiver.arrived.wait(DEADLINE_S), "the POST never arrived"
    signaled_at = datetime.now(UTC)
    worker.sigterm(group=True)
    receiver.release.set()  # the endpoint answers only now, during the drain
    assert worker.exit_code() == 0
    delivery = _delivery(platform, job_id)
    assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 1
    assert delivery.delivered_at is not None and delivery.delivered_at > signaled_at


def test_past_the_grace_a_webhook_is_handed_back_without_an_attempt(start, platform, receiver) -> None:
    grace_s = 1.0
    worker = _light_worker(start, platform, grace_s=grace_s)
    job_id = _send_a_message(platform, receiver.url)
    assert receiver.arrived.wait(DEADLINE_S), "the POST never arrived"
    signaled = time.monotonic()
    worker.sigterm(group=False)
    assert worker.exit_code() == 0
    exited_after_s = time.monotonic() - signaled
    # the worker gave up on the unanswered POST at the end of the grace, not at its 60 s timeout
    assert grace_s <= exited_after_s < 30, exited_after_s
    delivery = _delivery(platform, job_id)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 0
    assert delivery.last_error is None and delivery.last_attempt_at is None
    # due again now for the next worker's dispatcher, no longer reserved for minutes
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= datetime.now(UTC)
    assert [e["delivery_id"] for e in worker.events("webhook_handed_back")] == [delivery.id]
    print(f"webhook handed back, worker gone {exited_after_s:.2f} s after SIGTERM (grace {grace_s} s)")
