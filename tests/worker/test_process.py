"""A real Celery worker process: the model is loaded in the pool child, the heartbeat row says ready only
after the warm-up, a worker that cannot load its model shuts itself down instead of serving, and the
light worker (webhooks, maintenance) loads nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.db import make_engine, make_sessionmaker
from jobs.models import WorkerHeartbeat
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


class Worker:
    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        broker: str,
        model_path: str,
        queues: str,
        name: str,
        concurrency: int = 1,
        extra_env: dict[str, str] | None = None,
    ):
        self.log = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
        env.update(
            {
                "VAREDIT_DATABASE_URL": db_url,
                "VAREDIT_BROKER_URL": broker,
                "VAREDIT_DATA_DIR": str(tmp_path / "data"),
                "VAREDIT_MODEL_PATH": model_path,
                "VAREDIT_HEARTBEAT_S": "1",
                "VAREDIT_LOG_JSON": "true",
                **(extra_env or {}),
            }
        )
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-O",
            "fair",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self._out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def events(self, event: str) -> list[dict]:
        return [
            json.loads(line)
            for line in self.log.read_text(errors="replace").splitlines()
            if line.startswith("{") and f'"{event}"' in line
        ]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the pool child, if it outlived its parent
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(tmp_path: Path, sqlite_url: str, redis_url: str) -> Iterator:
    started: list[Worker] = []

    def start(model_path: str, queues: str = "edits.tiny", name: str = "w", **kwargs) -> Worker:
        worker = Worker(tmp_path, sqlite_url, redis_url, model_path, queues, name, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _rows(db_url: str) -> list[WorkerHeartbeat]:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(session.scalars(select(WorkerHeartbeat)))
    finally:
        engine.dispose()


def test_edit_worker_loads_in_the_pool_child_and_reports_ready_after_warm_up(
    start_worker, sqlite_url
) -> None:
    worker = start_worker("fake://?scales=3")
    wait_for(lambda: any(r.ready for r in _rows(sqlite_url)), "the worker to report ready")
    [row] = _rows(sqlite_url)
    assert row.worker_id == f"w@{os.uname().nodename}" and row.model == "tiny"
    loaded = worker.events("model_loaded")
    ready = worker.events("worker_ready")
    assert loaded and ready and worker.events("model_warmed_up")
    assert loaded[0]["worker_id"] == row.worker_id
    parent_pid = worker.proc.pid
    assert ready[0]["pid"] != parent_pid  # weights live in the pool child, never in the parent
    # the row is refreshed while the worker lives
    first_seen = row.last_seen
    wait_for(lambda: _rows(sqlite_url)[0].last_seen > first_seen, "a heartbeat refresh")
    # a clean shutdown removes the row
    assert worker.stop() == 0
    assert _rows(sqlite_url) == []


def test_worker_that_cannot_load_its_model_shuts_down_without_becoming_ready(
    start_worker, sqlite_url, tmp_path
) -> None:
    worker = start_worker(str(tmp_path / "no-such-model"))
    wait_for(lambda: worker.proc.poll() is not None, "the worker to shut itself down")
    assert worker.events("model_load_failed")
    assert not any(r.ready for r in _rows(sqlite_url))


def test_light_worker_loads_no_model(start_worker, sqlite_url) -> None:
    worker = start_worker("fake://", queues="webhooks,maintenance", name="light")
    wait_for(lambda: "ready." in worker.log.read_text(errors="replace"), "the light worker to start")
    assert worker.proc.poll() is None
    assert worker.events("model_loaded") == []
    assert _rows(sqlite_url) == []


def _free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise AssertionError("no run of free ports")


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def test_each_pool_process_of_the_light_worker_serves_its_metrics_on_its_own_port(start_worker) -> None:
    port = _free_ports(2)
    worker = start_worker(
        "fake://",
        queues="webhooks,maintenance",
        name="light",
        concurrency=2,
        extra_env={"VAREDIT_WORKER_METRICS_PORT": str(port)},
    )
    wait_for(
        lambda: len(worker.events("worker_metrics_serving")) == 2, "both pool processes to serve metrics"
    )
    assert sorted(e["port"] for e in worker.events("worker_metrics_serving")) == [port, port + 1]
    for p in (port, port + 1):
        assert "varedit_webhook_attempts" in (_scrape(p) or "")
    # no pool process failed its start (a failed one would also have skipped its SIGTERM shield)
    assert "Signal handler" not in worker.log.read_text(errors="replace")


def test_a_pool_process_whose_metrics_port_would_pass_65535_logs_it_and_works_on(start_worker) -> None:
    # pool process 1 of a worker on port 65535 would serve on 65536; before: an OverflowError failed its
    # start (skipping its SIGTERM shield), logged only as "Signal handler ... raised"
    worker = start_worker(
        "fake://",
        queues="webhooks,maintenance",
        name="light",
        concurrency=2,
        extra_env={"VAREDIT_WORKER_METRICS_PORT": "65535"},
    )

    def unavailable() -> list[int]:
        return [e["port"] for e in worker.events("worker_metrics_port_unavailable")]

    wait_for(lambda: 65536 in unavailable(), "the port past 65535 to be logged")
    assert "Signal handler" not in worker.log.read_text(errors="replace")


def test_an_edit_worker_whose_metrics_port_is_taken_still_becomes_ready(start_worker, sqlite_url) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker("fake://?scales=3", extra_env={"VAREDIT_WORKER_METRICS_PORT": str(port)})
        wait_for(lambda: any(r.ready for r in _rows(sqlite_url)), "the worker to report ready")
        [unavailable] = worker.events("worker_metrics_port_unavailable")
        assert unavailable["port"] == port
