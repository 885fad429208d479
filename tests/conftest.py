"""Shared fixtures: real PostgreSQL, SQLite, Redis and an S3 server (moto over HTTP), plus settings.

Each service is the running one when reachable, otherwise a throwaway server started for the session.
Every test gets its own fresh database (PostgreSQL: a copy of a migrated template database), so runs
and tests never see each other's rows. Fixtures meant for reuse by other test modules:

- ``postgres_url``: a fresh, migrated PostgreSQL database for one test
- ``sqlite_url``: a fresh, migrated SQLite file for one test
- ``db_url``: parametrized over both
- ``redis_url``: a Redis for the session (a random logical database on the shared server)
- ``s3_endpoint`` / ``s3_bucket``: a moto S3 server and a fresh bucket
- ``make_settings``: `Settings` for a test, with the given overrides
- ``submit_job``: a committed queued job in ``sessions`` (the ``db_url`` database)
- ``harness``: the app on a fresh SQLite database with a fake publisher (`ApiHarness`)
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobs import transitions, workers
from jobs.db import make_engine, make_sessionmaker, migrate, session_scope
from jobs.logging import configure_logging
from jobs.models import Job
from jobs.settings import Settings
from jobs.workers import ModelFacts
from serve.redis_server import RedisServer, free_port, redis_reachable

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
SHARED_REDIS = "redis://127.0.0.1:6379"

WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtb2YtdGhlLXRlc3RzLTMyLWJ5dGVz"  # base64 of 32 bytes


@pytest.fixture(scope="session", autouse=True)
def plain_logs() -> None:
    """Readable, fast log output for every test (structlog's default renders rich tracebacks slowly)."""
    configure_logging("INFO", json=False)


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_reachable(host: str, port: int) -> bool:
    try:
        with psycopg.connect(host=host, port=port, user=PG_USER, dbname="postgres", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} and {name} is not installed")
    return found


class _ThrowawayPostgres:
    """initdb + pg_ctl into a temp folder (as the postgres user when running as root: initdb refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="varedit-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True)

    def start(self) -> None:
        data = str(self.dir / "data")
        self._run(_pg_bin("initdb"), "-D", data, "-U", PG_USER, "--auth=trust", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", data, "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _admin(port: int, sql: str) -> None:
    with psycopg.connect(host=PG_HOST, port=port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_port() -> Iterator[int]:
    """The port of a reachable PostgreSQL (the running one, else a throwaway server)."""
    if _pg_reachable(PG_HOST, PG_PORT):
        yield PG_PORT
        return
    server = _ThrowawayPostgres()
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def _pg_url(port: int, dbname: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{port}/{dbname}"


@pytest.fixture(scope="session")
def postgres_template(postgres_port: int) -> Iterator[str]:
    """A database migrated once per session; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    name = f"varedit_test_tpl_{secrets.token_hex(4)}"
    _admin(postgres_port, f'CREATE DATABASE "{name}"')
    try:
        migrate(_pg_url(postgres_port, name))
        yield name
    finally:
        _admin(postgres_port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_port: int, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    name = f"varedit_test_{secrets.token_hex(6)}"
    _admin(postgres_port, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield _pg_url(postgres_port, name)
    finally:
        _admin(postgres_port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- SQLite -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for this test."""
    path = tmp_path / "varedit.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database, once per backend."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis on 127.0.0.1:6379 (a random logical database, flushed afterwards), else a
    throwaway redis-server for the session."""
    if redis_reachable(SHARED_REDIS):
        import redis

        url = f"{SHARED_REDIS}/{secrets.randbelow(15) + 1}"
        yield url
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return
    with RedisServer() as server:
        yield server.url


# -- S3 (moto server over HTTP) -----------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto in server mode) on a random local port."""
    from moto.server import ThreadedMotoServer

    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(var, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the S3 server."""
    import boto3

    name = f"varedit-test-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# -- commands -----------------------------------------------------------------------------------


def run_with_stdout_closed(
    args: list[str], env: dict[str, str], unbuffered: bool, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdout is a pipe nobody reads any more (``| head`` after its lines), where
    every write fails with EPIPE: at once when ``unbuffered`` (PYTHONUNBUFFERED), else in the flush of
    what Python buffered, at the latest at exit."""
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"} | (
        {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    )
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            args, env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, **kwargs
        )
    finally:
        os.close(write)


# -- settings -----------------------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: settings rooted in this test's tmp folder, without any ``.env``."""

    def make(**overrides: Any) -> Settings:
        # The tests serve the "tiny" variant (32 px), whatever model the deployment default bundles.
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "log_json": False,
            "models": ["tiny"],
            "webhook_secrets": [WEBHOOK_SECRET],
            "rate_limit": "100000/minute",
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def submit_job(sessions: sessionmaker[Session]) -> Callable[..., str]:
    """``submit_job(**spec_overrides) -> job_id``: a committed queued job (no source object stored)."""

    def submit(owner: str = "anonymous", now: datetime | None = None, **overrides: Any) -> str:
        fields: dict[str, Any] = {
            "instruction": "make the sky purple",
            "model": "tiny",
            "resolution": 32,
            "seed": 7,
            "cfg": 3.0,
            "tau": 0.1,
            "start_timeout_s": 3600,
            **overrides,
        }
        job_id = transitions.new_job_id()
        with session_scope(sessions) as session:
            transitions.submit(
                session,
                job_id=job_id,
                owner=owner,
                spec=transitions.EditSpec(**fields),
                source_key=f"jobs/{job_id}/source.png",
                source_content_type="image/png",
                now=now,
            )
        return job_id

    return submit


# -- API ----------------------------------------------------------------------------------------


class FakePublisher:
    """Records ``run_edit`` publishes, and what a fresh session saw at that moment (proves publish
    happens after commit). ``fail=True`` makes the broker refuse; ``on_publish(job_id, model)`` plays a
    worker that picks the job up."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.fail = False
        self.on_publish: Callable[[str, str], None] | None = None
        self.published: list[tuple[str, str]] = []
        self.status_seen: list[str | None] = []

    def publish_run_edit(self, job_id: str, model: str, delay_s: float = 0) -> None:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            self.status_seen.append(job.status.value if job else None)
        if self.fail:
            raise ConnectionError("broker down")
        self.published.append((job_id, model))
        if self.on_publish is not None:
            self.on_publish(job_id, model)


@pytest.fixture
def api_settings(make_settings: Callable[..., Settings], sqlite_url: str, redis_url: str) -> Settings:
    """Settings for an API test: a fresh SQLite database, the session's Redis, local storage."""
    return make_settings(database_url=sqlite_url, broker_url=redis_url, wait_recheck_s=30)


@pytest.fixture
def harness(api_settings: Settings) -> Iterator[ApiHarness]:
    """The app (lifespan running) with a `FakePublisher`; ``harness.client`` is a TestClient."""
    with ApiHarness(api_settings) as harness:
        yield harness


# What a worker of the test model reports (`jobs.workers.record_model`); the API harness records it.
TINY_FACTS = ModelFacts("tiny", [32], {"cfg": 3.0, "tau": 0.1})


def record_tiny_facts(sessions: sessionmaker[Session], facts: ModelFacts = TINY_FACTS) -> None:
    with session_scope(sessions) as session:
        workers.record_model(session, facts, "test-worker")


class ApiHarness:
    """An app for ``settings`` with its TestClient, fake publisher, sessions and storage at hand; the
    test model's facts are recorded as if its worker had announced itself."""

    def __init__(self, settings: Settings) -> None:
        from fastapi.testclient import TestClient

        from api.deps import get_publisher
        from api.main import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.client = TestClient(self.app)
        self._get_publisher = get_publisher

    def __enter__(self) -> ApiHarness:
        self.client.__enter__()
        state = self.app.state
        self.sessions: sessionmaker[Session] = state.sessions
        self.storage = state.storage
        self.notifier = state.notifier
        self.watcher = state.watcher
        self.publisher = FakePublisher(self.sessions)
        self.app.dependency_overrides[self._get_publisher] = lambda: self.publisher
        record_tiny_facts(self.sessions)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout_s: float = 60.0) -> T:
    """Poll `predicate` until it returns something true (returned), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a real condition under a deadline
    return value


@contextmanager
def live_server(app: Any) -> Iterator[int]:
    """`app` under a real uvicorn server on 127.0.0.1 in a thread of its own (lifespan running), for
    browsers and connection-level tests; yields the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)  # polling the server's own started flag, bounded by the deadline
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def lose_next_commit_reply(sessions: sessionmaker[Session], when: Callable[[str], bool]) -> list[bool]:
    """Make the next COMMIT of a transaction that ran a statement for which ``when(sql)`` holds
    succeed in the database but fail for the caller, as when the connection drops before the server's
    reply arrives. Statements are ORM executes (``UPDATE jobs SET ...``) and flushes, seen as
    ``INSERT INTO <table>``. Returns a list that gets one entry when the fault has fired."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    fired: list[bool] = []

    def aim(session: Session, sql: str) -> None:
        if not fired and when(sql):
            session.info["lose_commit_reply"] = True

    def watch(state: Any) -> None:  # every ORM statement of the transaction
        aim(state.session, str(state.statement))

    def watch_flush(session: Session, _: Any) -> None:  # rows added with session.add
        for row in session.new:
            aim(session, f"INSERT INTO {row.__tablename__}")

    def lose_reply(session: Session) -> None:
        if session.info.pop("lose_commit_reply", False):
            fired.append(True)
            raise OperationalError("COMMIT", {}, ConnectionResetError("the reply to COMMIT was lost"))

    event.listen(sessions, "do_orm_execute", watch)
    event.listen(sessions, "after_flush", watch_flush)
    event.listen(sessions, "after_commit", lose_reply)
    return fired


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread: the golden references ran on one (two round convolutions differently), and
    tiny models gain nothing from threads on a shared CI machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- webhooks -----------------------------------------------------------------------------------


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 that records every request (path, lower-cased headers, body).
    It answers from ``answers`` (a script used in turn), else from ``routes`` by path, else ``default``."""

    def __init__(self, routes: dict[str, Answer] | None = None, default: Answer = (204, {}, b"")) -> None:
        import http.server
        import threading

        server = self
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: list[Answer] = []
        self.routes = routes or {}
        self.arrived = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.arrived:
                    server.requests.append((self.path, headers, body))
                    status, answer, content = (
                        server.answers.pop(0) if server.answers else server.routes.get(self.path, default)
                    )
                    server.arrived.notify_all()
                self.send_response(status)
                for name, value in {**answer, "content-length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + "/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[tuple[str, dict[str, str], bytes]]:
        """The first ``count`` requests, once they have arrived (fails after ``timeout_s``)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout_s), self.requests
            return list(self.requests[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[LocalHTTPServer]:
    receiver = LocalHTTPServer()
    yield receiver
    receiver.close()


# -- a real browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium (Debian's chromium + chromedriver; scripts/test.sh
    installs them when missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "install chromium and chromium-driver (scripts/test.sh does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
